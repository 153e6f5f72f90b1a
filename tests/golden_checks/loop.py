"""Denoising-loop fixtures (`loop_*`): replay of the loop with recorded DiT outputs, then end to end.

1. Replay: our loop functions run with a stand-in DiT that returns the recorded velocities of each step
   (`step.v_cond_*[i]` for calls with `in.text`, `step.v_uncond_*[i]` for `in.text_negative`) and a noise
   source that hands back the recorded tensors in `config.loop.draw_order`. Every DiT input, the SR
   intermediates and the outputs are compared within `replay_atol`.
2. End to end: the real DiT, built from `config.dit` with the file's weights (strict), runs the same loop
   from the recorded noise; outputs within `final_atol` / `final_rel_rms`, and the DiT teacher forced on
   every recorded step input within `dit_step_atol` / `dit_step_rel_rms`.

Stage kind, mode, step count and every size come from `config.loop` and the tensors present.
"""

from __future__ import annotations

import re

import torch

from magihuman.config import SAMPLING, DiTConfig
from magihuman.sampling import (
    denoise_base,
    denoise_distill,
    denoise_sr,
    prepare_sr,
    sigma_schedule,
    video_guidance_scale,
)
from tests.golden_checks import Fixture, Report
from tests.golden_checks.dit import build_from_fixture

DRAW_ENTRY = re.compile(r"^(in\.[\w.]+?)(?:\[(\d+)\])?$")
KINDS = ("distill", "base", "sr")
MODES = ("T2V", "TI2V", "A2V")


# ---------------------------------------------------------------------------------------------------------
# 1. Recorded noise and the stage call shared by both checks
# ---------------------------------------------------------------------------------------------------------


class RecordedNoise:
    """Hands back the recorded random tensors in `draw_order`, asserting each requested shape.

    Entries in parentheses (draws of an earlier stage that the file does not store) are skipped.
    """

    def __init__(self, fx: Fixture) -> None:
        self.queue: list[tuple[str, torch.Tensor]] = []
        for entry in fx.config["loop"]["draw_order"]:
            if entry.startswith("("):
                continue
            match = DRAW_ENTRY.match(entry)
            if match is None or match.group(1) not in fx:
                raise AssertionError(f"{fx.path.name}: draw_order entry {entry!r} names no stored tensor")
            tensor = fx[match.group(1)]
            self.queue.append((entry, tensor if match.group(2) is None else tensor[int(match.group(2))]))
        self.drawn = 0

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.drawn >= len(self.queue):
            raise AssertionError(
                f"noise draw {self.drawn + 1} of shape {tuple(shape)}: the reference drew only {len(self.queue)}"
            )
        name, tensor = self.queue[self.drawn]
        if tuple(tensor.shape) != tuple(shape):
            raise AssertionError(
                f"noise draw {self.drawn + 1}: asked for shape {tuple(shape)}, "
                f"the reference drew {name} {tuple(tensor.shape)}"
            )
        self.drawn += 1
        return tensor.clone()

    def check_all_drawn(self, report: Report, what: str) -> None:
        if self.drawn != len(self.queue):
            report.failures.append(f"{what}: drew {self.drawn} noise tensors, the reference drew {len(self.queue)}")


def loop_config(fx: Fixture) -> dict:
    loop = fx.config["loop"]
    if loop["kind"] not in KINDS or loop["mode"] not in MODES:
        raise AssertionError(f"{fx.path.name}: unknown loop kind/mode {loop['kind']!r}/{loop['mode']!r}")
    return loop


def run_stage(fx: Fixture, velocity, noise) -> tuple[torch.Tensor, torch.Tensor]:
    """Our loop for the file's stage, sizes from config.loop (latent channels and audio width from config.dit)."""
    loop = loop_config(fx)
    dit = DiTConfig.from_dict(fx.config["dit"])
    steps, shift = loop["steps"], loop["shift"]
    image = fx["in.image_latent"] if loop["mode"] == "TI2V" else None
    text = fx["in.text"]
    if loop["kind"] == "sr":
        _, sr_h, sr_w = loop["latent_thw"]
        return denoise_sr(
            velocity, noise, text, fx["in.base_video"], fx["in.base_audio"], (sr_h, sr_w),
            image_latent=image, steps=steps, shift=shift,
        )  # fmt: skip
    video_shape = (1, dit.latent_channels, *loop["latent_thw"])
    if loop["mode"] == "A2V":
        audio = {"audio_latent": fx["in.audio_latent"]}
    else:
        audio = {"audio_shape": (1, loop["audio_len"], dit.audio_in_channels)}
    if loop["kind"] == "distill":
        return denoise_distill(
            velocity, noise, text, video_shape, image_latent=image, steps=steps, shift=shift, **audio
        )
    return denoise_base(
        velocity, noise, text, fx["in.text_negative"], video_shape, image_latent=image, steps=steps, shift=shift,
        **audio,
    )  # fmt: skip


def fixed_audio_input(fx: Fixture) -> torch.Tensor | None:
    """The audio the DiT reads at every step when audio is not stepped (A2V: given latent; SR: the mix)."""
    if "inter.sr_audio_input" in fx:
        return fx["inter.sr_audio_input"]
    if "in.audio_latent" in fx:
        return fx["in.audio_latent"]
    return None


def step_audio_inputs(fx: Fixture, steps: int) -> torch.Tensor:
    """(N, 1, A, 64): the audio the DiT read at each step."""
    if "step.audio_in" in fx:
        return fx["step.audio_in"]
    fixed = fixed_audio_input(fx)
    if fixed is None:
        raise AssertionError(f"{fx.path.name}: neither step.audio_in nor a fixed audio input is stored")
    return fixed.unsqueeze(0).expand(steps, *fixed.shape)


def check_schedule(fx: Fixture, report: Report) -> None:
    """The grid, timesteps and guidance recorded in config.loop against ours (exact)."""
    loop = loop_config(fx)
    sigmas, timesteps = sigma_schedule(loop["steps"], loop["shift"])
    report.equal("config.loop.sigmas", sigmas, torch.tensor(loop["sigmas"], dtype=torch.float32))
    report.equal("config.loop.timesteps", timesteps, torch.tensor(loop["timesteps"], dtype=torch.int64))
    if loop.get("video_guidance_per_step"):
        ours = torch.tensor([video_guidance_scale(t) for t in timesteps], dtype=torch.float64)
        report.equal(
            "config.loop.video_guidance_per_step", ours, torch.tensor(loop["video_guidance_per_step"]).double()
        )
    if loop.get("audio_guidance") is not None:
        report.equal(
            "config.loop.audio_guidance",
            torch.tensor([SAMPLING.audio_guidance]),
            torch.tensor([loop["audio_guidance"]]),
        )
    if loop.get("sr_zsnr_index") is not None:
        report.equal(
            "config.loop.sr_zsnr_index", torch.tensor([SAMPLING.sr_zsnr_index]), torch.tensor([loop["sr_zsnr_index"]])
        )
    if loop.get("sr_audio_noise_scale") is not None:
        report.equal(
            "config.loop.sr_audio_noise_scale",
            torch.tensor([SAMPLING.sr_audio_noise_scale]),
            torch.tensor([loop["sr_audio_noise_scale"]]),
        )


# ---------------------------------------------------------------------------------------------------------
# 2. Replay with the recorded DiT outputs
# ---------------------------------------------------------------------------------------------------------


class RecordedDiT:
    """Stand-in DiT: returns the recorded velocities of the current step and records what it was given.

    The text argument selects the branch (cond: `in.text`, uncond: `in.text_negative`). A velocity the
    file does not store (SR audio, A2V audio) comes back as NaN, so any use of it poisons the outputs.
    """

    def __init__(self, fx: Fixture) -> None:
        self.fx = fx
        self.texts = {"cond": fx["in.text"]}
        if "in.text_negative" in fx:
            self.texts["uncond"] = fx["in.text_negative"]
        self.inputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {k: [] for k in self.texts}

    def branch(self, text: torch.Tensor) -> str:
        for name, ref in self.texts.items():
            if text is ref or (text.shape == ref.shape and torch.equal(text, ref)):
                return name
        raise AssertionError(
            f"DiT called with a text of shape {tuple(text.shape)} that is neither in.text nor in.text_negative"
        )

    def __call__(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor):
        name = self.branch(text)
        i = len(self.inputs[name])
        recorded_video = self.fx[f"step.v_{name}_video"]
        if i >= recorded_video.shape[0]:
            raise AssertionError(f"{name} DiT call {i + 1}: the reference made only {recorded_video.shape[0]}")
        self.inputs[name].append((video.clone(), audio.clone()))
        key = f"step.v_{name}_audio"
        v_audio = self.fx[key][i] if key in self.fx else torch.full_like(audio, float("nan"))
        return recorded_video[i].clone(), v_audio.clone()


def check_replay(fx: Fixture, report: Report) -> None:
    loop = loop_config(fx)
    atol = fx.recommended["replay_atol"]
    steps = loop["steps"]
    # 1. SR intermediates from the preparation alone (same noise order as inside the loop).
    if loop["kind"] == "sr":
        noise = RecordedNoise(fx)
        _, sr_h, sr_w = loop["latent_thw"]
        start = prepare_sr(noise, fx["in.base_video"], fx["in.base_audio"], (sr_h, sr_w))
        report.close("replay inter.sr_upsampled", start.upsampled, fx["inter.sr_upsampled"], atol)
        report.close("replay inter.sr_video_init", start.video, fx["inter.sr_video_init"], atol)
        report.close("replay inter.sr_audio_input", start.audio, fx["inter.sr_audio_input"], atol)
    # 2. The whole loop with recorded velocities and noise.
    dit = RecordedDiT(fx)
    noise = RecordedNoise(fx)
    video, audio = run_stage(fx, dit, noise)
    noise.check_all_drawn(report, "replay")
    # 3. What the DiT was given at every step.
    cond = dit.inputs["cond"]
    if len(cond) != steps:
        report.failures.append(f"replay: {len(cond)} conditional DiT calls, expected {steps}")
    else:
        report.close("replay step.video_in", torch.stack([v for v, _ in cond]), fx["step.video_in"], atol)
        report.close("replay step audio input", torch.stack([a for _, a in cond]), step_audio_inputs(fx, steps), atol)
    if "uncond" in dit.inputs:
        uncond = dit.inputs["uncond"]
        if len(uncond) != len(cond):
            report.failures.append(f"replay: {len(uncond)} unconditional DiT calls for {len(cond)} conditional ones")
        else:
            report.equal(
                "replay uncond video = cond video",
                torch.stack([v for v, _ in uncond]),
                torch.stack([v for v, _ in cond]),
            )
            report.equal(
                "replay uncond audio = cond audio",
                torch.stack([a for _, a in uncond]),
                torch.stack([a for _, a in cond]),
            )
    # 4. Stage outputs.
    report.close("replay out.video", video, fx["out.video"], atol)
    report.close("replay out.audio", audio, fx["out.audio"], atol)


# ---------------------------------------------------------------------------------------------------------
# 3. End to end with the real DiT
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def check_end_to_end(fx: Fixture, report: Report) -> None:
    rec = fx.recommended
    steps = loop_config(fx)["steps"]
    model = build_from_fixture(fx.config["dit"], fx.weights())
    # 1. Teacher forced: the DiT on every recorded step input.
    audio_in = step_audio_inputs(fx, steps)
    branches = [("cond", fx["in.text"])]
    if "in.text_negative" in fx and "step.v_uncond_video" in fx:
        branches.append(("uncond", fx["in.text_negative"]))
    for name, text in branches:
        outs = [model(fx["step.video_in"][i], audio_in[i], text) for i in range(steps)]
        for part, index in (("video", 0), ("audio", 1)):
            key = f"step.v_{name}_{part}"
            if key in fx:
                ours = torch.stack([o[index] for o in outs])
                report.close(f"teacher-forced {key}", ours, fx[key], rec["dit_step_atol"], rec["dit_step_rel_rms"])
    # 2. The whole loop with our DiT from the recorded noise.
    inputs: list[torch.Tensor] = []

    def velocity(video, audio, text):
        if text is fx["in.text"]:
            inputs.append(video.clone())
        return model(video, audio, text)

    noise = RecordedNoise(fx)
    video, audio = run_stage(fx, velocity, noise)
    noise.check_all_drawn(report, "end to end")
    if len(inputs) == steps:
        report.close(
            "end-to-end step.video_in",
            torch.stack(inputs),
            fx["step.video_in"],
            rec["final_atol"],
            rec["final_rel_rms"],
        )
    else:
        report.failures.append(f"end to end: {len(inputs)} conditional DiT calls, expected {steps}")
    report.close("end-to-end out.video", video, fx["out.video"], rec["final_atol"], rec["final_rel_rms"])
    report.close("end-to-end out.audio", audio, fx["out.audio"], rec["final_atol"], rec["final_rel_rms"])


def check(fx: Fixture) -> None:
    report = Report(fx)
    check_schedule(fx, report)
    check_replay(fx, report)
    check_end_to_end(fx, report)
    report.finish()
