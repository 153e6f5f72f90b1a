"""`pipeline`, `fp8_quality` and `startup` on the full-size models with random weights (speed does not depend
on weight values).

`pipeline`: the published scope of a 5-second clip, warm, per resolution: distilled base denoise at 256p,
then super-resolution of that take to 540p and 1080p, and the Turbo VAE decode of the final video; per stage
seconds, achieved TFLOP/s of the DiT work against the arithmetic floor (`magihuman.bench.flops` at
790 TFLOP/s) and the published H100 numbers (2.0 / 8.0 / 38.4 s), and the peak memory of each resolution against
the fp8-auto plan's estimate for the models held. It drives the engine's own stage functions (the samplers,
the DiTs with the app's speed steps, the decoder) without the text encoder, the VAE encoders and the muxer,
which the GPU hosts cannot import (no diffusers or av) and which the published numbers do not time.

`fp8_quality`: relative RMS error of one velocity and of an 8-step latent of the fp8 distilled model
against the same model in bf16 (`magihuman.bench.workload.fp8_quality`).

`startup`: build + compile + warm-up to ready in fresh processes, cold and warm compile cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from acceptance.runner import Context, Outcome, child_env, describe_device
from magihuman.bench.memory import free_memory, peak_gib, reset_peak
from magihuman.config import FULL_TURBO_VAE, RESOLUTIONS, SAMPLING, dit_presets, latent_frames, video_frames
from magihuman.timing import seconds_since, synchronize

SECONDS = 5  # the clip length of the published numbers
TEXT_TOKENS = 300
SR_DITS = {"540p": "sr-540p", "1080p": "sr-1080p"}
EXPECTED_1080P_S = 100  # warm-up (1-step, compiles the frame-local graphs) + one full run, with margin
# Random weights give no quality target; these bounds only catch a broken fp8 path (garbage is ≈ 1 or more).
FP8_SANITY_BOUND = 0.5


# ---------------------------------------------------------------------------------------------------------
# pipeline: the published scope per resolution
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ResolutionRun:
    resolution: str
    stages: dict[str, float]  # seconds: denoise (base), sr, decode
    dit_flops: float
    peak_gib: float | None
    held_gib: float  # the fp8-auto plan's estimate for the models held during this resolution

    @property
    def scope(self) -> float:
        return self.stages["denoise"] + self.stages.get("sr", 0.0) + self.stages["decode"]

    @property
    def dit_seconds(self) -> float:
        return self.stages["denoise"] + self.stages.get("sr", 0.0)


@torch.no_grad()
def check_pipeline(ctx: Context) -> Outcome:
    from magihuman.bench.flops import H100_BF16_DENSE_TFLOPS, FlopCounter
    from magihuman.bench.pipeline import PUBLISHED
    from magihuman.memory import plan_fp8
    from magihuman.optimize import SpeedFlags, compile_decoder
    from magihuman.random_models import build_random_turbo_vae

    device, out = ctx.device, ctx.outcome
    runs: list[ResolutionRun] = []

    def record(run: ResolutionRun) -> None:
        """Into the outcome at once: a later resolution that fails (e.g. out of memory) keeps the earlier ones."""
        runs.append(run)
        out.measured[f"{run.resolution} scope s"] = run.scope
        out.measured[f"{run.resolution} vs published H100"] = run.scope / PUBLISHED[run.resolution][0]
        out.measured[f"{run.resolution} DiT TFLOP/s"] = run.dit_flops / run.dit_seconds / 1e12
        if run.peak_gib is not None:
            out.at_most(f"{run.resolution} peak GiB (≤ plan estimate of the models held)", run.peak_gib, run.held_gib)
        out.table = speed_table(runs, PUBLISHED, H100_BF16_DENSE_TFLOPS, describe_device(device))

    flags = SpeedFlags.default(device)  # the app's defaults: compile on, fp8 auto
    plan = plan_fp8(["distill", *SR_DITS.values()], None, device)
    out.measured["fp8 (auto plan for distill + both SR DiTs)"] = ", ".join(sorted(plan.quantised)) or "none"
    out.measured["plan estimate GiB (studio set incl. text encoder)"] = plan.needed_bytes / 2**30
    out.notes += [
        f"random weights, {SECONDS}-second clip, {TEXT_TOKENS} random text-embedding rows (text encoder not run), "
        "1-step warm-up at the same shapes, then one timed run; decode is the Turbo VAE video decode only",
        "scope = base denoise + SR denoise + decode of the final video (what the published numbers time)",
        "the plan estimate of the models held = DiTs (fp8 per the auto plan) + headroom, without the text encoder "
        "and VAE encoders this check does not build",
    ]

    start = time.perf_counter()
    decoder = build_random_turbo_vae(FULL_TURBO_VAE, 0, device=device, dtype=torch.bfloat16)
    if flags.compile:
        compile_decoder(decoder)
    distill = _build_dit("distill", plan.quantised, flags, device)
    built = time.perf_counter() - start
    text = torch.randn(TEXT_TOKENS, distill.config.text_in_channels, device=device)
    counter = FlopCounter({"distill": distill})

    # 256p: warm-up at the real shapes with one step (compiles), then the timed run.
    decoder.decode(base_stage(distill, text, device, steps=1)[0])
    out.measured["start-up s (build + compile + 256p warm-up, in this process)"] = time.perf_counter() - start
    out.measured["build s"] = built
    reset_peak(device)
    counter.take()
    (video, audio), base_s = _timed(device, base_stage, distill, text, device, SAMPLING.distill_steps)
    base_flops = counter.take()
    _, decode_s = _timed(device, decoder.decode, video)
    held = _held_estimate_gib(["distill"], plan.quantised)
    record(ResolutionRun("256p", {"denoise": base_s, "decode": decode_s}, base_flops, peak_gib(device), held))
    counter.remove()

    for resolution, sr_name in SR_DITS.items():
        if resolution == "1080p" and ctx.seconds_left() < EXPECTED_1080P_S:
            out.notes.append(f"1080p not run: {ctx.seconds_left():.0f} s of budget left")
            break
        sr = _build_dit(sr_name, plan.quantised, flags, device)
        counter = FlopCounter({sr_name: sr})
        latent_hw = RESOLUTIONS[resolution].latent_hw()
        sr_stage(sr, text, video, audio, latent_hw, device, steps=1, decoder=decoder)  # warm-up (compiles)
        reset_peak(device)
        counter.take()
        sr_video, sr_s = _timed(device, sr_stage, sr, text, video, audio, latent_hw, device, SAMPLING.sr_steps)
        sr_flops = counter.take()
        _, decode_s = _timed(device, decoder.decode, sr_video)
        held = _held_estimate_gib(["distill", sr_name], plan.quantised)
        stages = {"denoise": base_s, "sr": sr_s, "decode": decode_s}
        record(ResolutionRun(resolution, stages, base_flops + sr_flops, peak_gib(device), held))
        counter.remove()
        del sr, sr_video
        free_memory(device)

    return out


def _build_dit(name: str, quantised: frozenset[str], flags, device: torch.device):
    """A full-size DiT with random weights and the app's speed steps (fp8 if the plan quantises it)."""
    from dataclasses import replace

    from magihuman.bench.workload import make_model
    from magihuman.optimize import optimize_dit

    model = make_model(dit_presets("full")[name].dit, device, flags.attention)
    optimize_dit(model, replace(flags, fp8=name in quantised), device)
    return model


def base_stage(dit, text: torch.Tensor, device: torch.device, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distilled 256p stage of a SECONDS-long clip: (video latent, audio latent)."""
    from magihuman.sampling import denoise_distill, gaussian_noise

    video_shape = (1, dit.config.latent_channels, latent_frames(SECONDS), *RESOLUTIONS["256p"].latent_hw())
    audio_shape = (1, video_frames(SECONDS), dit.config.audio_in_channels)
    noise = gaussian_noise(torch.Generator(device=device).manual_seed(0), device)
    return denoise_distill(dit, noise, text, video_shape, audio_shape, steps=steps)


def sr_stage(dit, text, video, audio, latent_hw, device: torch.device, steps: int, decoder=None) -> torch.Tensor:
    """The super-resolution stage of a base take to `latent_hw`: the SR video latent."""
    from magihuman.sampling import denoise_sr, gaussian_noise

    noise = gaussian_noise(torch.Generator(device=device).manual_seed(1), device)
    sr_video, _ = denoise_sr(dit, noise, text, video, audio, latent_hw, steps=steps)
    if decoder is not None:  # warm-up: the decoder at this resolution's size too
        decoder.decode(sr_video)
    return sr_video


def _timed(device: torch.device, fn, *args):
    """(fn(*args), its wall seconds with the device synchronised on both sides)."""
    synchronize(device)
    start = time.perf_counter()
    result = fn(*args)
    return result, seconds_since(start, device)


def _held_estimate_gib(names: list[str], quantised) -> float:
    """The fp8-auto plan's estimate for the DiTs held here (weights + its activation headroom) plus the Turbo
    decoder; the text encoder and the VAE encoders of the studio set are not built by this check."""
    from magihuman.memory import dit_bytes

    presets = dit_presets("full")
    weights = sum(dit_bytes(presets[n].dit, n in quantised) for n in names)
    headroom = max(presets[n].headroom_bytes for n in names)
    decoder = sum(p.numel() for p in _meta_decoder().parameters()) * 2  # bf16
    return (weights + headroom + decoder) / 2**30


def _meta_decoder():
    from magihuman.model.turbo_vae import TurboVAE

    with torch.device("meta"):
        return TurboVAE(FULL_TURBO_VAE)


def speed_table(runs: list[ResolutionRun], published: dict, ceiling_tflops: float, gpu: str) -> str:
    """The README's benchmark table (Markdown) from the measured resolutions."""
    lines = [
        f"{gpu}, {SECONDS}-second clip, random weights, warm; seconds",
        "",
        "| resolution | base denoise | SR | decode | scope | published H100 | ratio | floor | DiT TFLOP/s | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        pub = published[r.resolution][0]
        floor = r.dit_flops / (ceiling_tflops * 1e12)
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "-"
        lines.append(
            f"| {r.resolution} | {r.stages['denoise']:.2f} | {r.stages.get('sr', 0.0):.2f} | "
            f"{r.stages['decode']:.2f} | "
            f"{r.scope:.2f} | {pub:.1f} | {r.scope / pub:.2f} | {floor:.2f} | "
            f"{r.dit_flops / r.dit_seconds / 1e12:.0f} | {peak} |"
        )
    lines.append("")
    lines.append(f"floor = DiT FLOPs at {ceiling_tflops:.0f} TFLOP/s; scope = base denoise + SR + final decode.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# fp8_quality: fp8 against bf16 at full size
# ---------------------------------------------------------------------------------------------------------


def check_fp8_quality(ctx: Context) -> Outcome:
    from magihuman.bench.workload import cases, fp8_quality, make_model
    from magihuman.fp8 import fp8_kernel

    device, out = ctx.device, ctx.outcome
    config = dit_presets("full")["distill"].dit
    layout = cases(["256p"], latent_frames(SECONDS), video_frames(SECONDS), TEXT_TOKENS, "full")[0].layout
    out.measured["kernel"] = fp8_kernel(device)
    quality = fp8_quality(make_model(config, device, None), layout, device, steps=SAMPLING.distill_steps)
    for name, (video_error, audio_error) in quality.items():
        out.at_most(f"{name} video rel_rms", video_error, FP8_SANITY_BOUND)
        out.at_most(f"{name} audio rel_rms", audio_error, FP8_SANITY_BOUND)
    out.notes.append(
        "random weights (no checkpoint on the GPU hosts): the errors describe the fp8 arithmetic on this network, "
        f"not the real model's quality; the bound {FP8_SANITY_BOUND} only catches a broken fp8 path"
    )
    return out


# ---------------------------------------------------------------------------------------------------------
# Start-up to ready, cold and warm compile cache (each in a fresh process)
# ---------------------------------------------------------------------------------------------------------


def check_startup(ctx: Context) -> Outcome:
    out = ctx.outcome
    cache_dir = ctx.work_dir / "startup-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)  # "cold" must start from an empty cache, also on a rerun
    cache_dir.mkdir(parents=True)
    for label in ("cold", "warm"):
        if label == "warm" and ctx.seconds_left() < 60:
            out.notes.append(f"warm start not run: {ctx.seconds_left():.0f} s of budget left")
            break
        result = _fresh_process_start(cache_dir, ctx.seconds_left())
        for key, value in result.items():
            out.measured[f"{label} {key}"] = value
    if "warm ready s" in out.measured:
        cold, warm = out.measured["cold ready s"], out.measured["warm ready s"]
        out.require("the warm cache starts faster", warm < cold, f"warm {warm:.1f} s vs cold {cold:.1f} s")
    out.notes.append(
        "fresh `python -m acceptance.startup` processes: the full distilled DiT (random weights) and the "
        "Turbo VAE decoder built on the GPU, compiled with the compile cache in one folder (empty for the cold "
        "start), then a 1-step 256p warm-up; includes the Python and torch import"
    )
    return out


def _fresh_process_start(cache_dir, timeout_s: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "acceptance.startup", "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=max(timeout_s, 1),
        env=child_env(env),
    )
    total = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"start-up process failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "ready s": total}
