"""Sampling maths and loop contracts (sigma grid, UniPC, distilled step, CFG, SR), on tiny tensors with stand-in
DiTs."""

from __future__ import annotations

import threading

import pytest
import torch

from magihuman.config import SAMPLING
from magihuman.errors import GenerationCancelled
from magihuman.sampling import (
    FlowUniPC,
    StepEvent,
    denoise_base,
    denoise_distill,
    denoise_sr,
    gaussian_noise,
    guided,
    sigma_schedule,
    sr_renoise_coefficients,
    video_guidance_scale,
)

# The reference scheduler's sigma grids (shift 5), printed to 6 significant digits (so compared within 6e-7).
SPEC_SIGMAS = {
    32: [0.9998, 0.993386, 0.986634, 0.979518, 0.972006, 0.964065, 0.955657, 0.94674, 0.937265, 0.92718,
         0.916422, 0.904923, 0.892602, 0.879369, 0.865118, 0.849728, 0.833055, 0.814934, 0.795165, 0.773515,
         0.7497, 0.723379, 0.694136, 0.661453, 0.624687, 0.583022, 0.535408, 0.480473, 0.416389, 0.340661,
         0.2498, 0.138765, 0.0],
    8: [0.9998, 0.972006, 0.937265, 0.892602, 0.833055, 0.7497, 0.624687, 0.416389, 0.0],
    5: [0.9998, 0.952154, 0.882093, 0.768935, 0.555247, 0.0],
}  # fmt: skip
SPEC_TIMESTEPS_32 = [999, 993, 986, 979, 972, 964, 955, 946, 937, 927, 916, 904, 892, 879, 865, 849, 833, 814,
                     795, 773, 749, 723, 694, 661, 624, 583, 535, 480, 416, 340, 249, 138]  # fmt: skip

VIDEO_SHAPE = (1, 48, 2, 2, 4)
AUDIO_SHAPE = (1, 5, 64)


def zero_velocity(video, audio, text):
    return torch.zeros_like(video), torch.zeros_like(audio)


def recording_noise(shapes: list[tuple[int, ...]], seed: int = 0):
    draw = gaussian_noise(torch.Generator().manual_seed(seed))

    def noise(shape):
        shapes.append(tuple(shape))
        return draw(shape)

    return noise


def run_stage(stage: str, **kwargs):
    """Each loop on tiny shapes with a zero velocity; kwargs go to the loop."""
    noise = kwargs.pop("noise", None) or gaussian_noise(torch.Generator().manual_seed(0))
    velocity = kwargs.pop("velocity", zero_velocity)
    text = torch.zeros(3, 8)
    if stage == "distill":
        return denoise_distill(velocity, noise, text, VIDEO_SHAPE, AUDIO_SHAPE, steps=4, **kwargs)
    if stage == "base":
        return denoise_base(velocity, noise, text, torch.ones(4, 8), VIDEO_SHAPE, AUDIO_SHAPE, steps=6, **kwargs)
    base_video = torch.randn(1, 48, 2, 2, 2)
    return denoise_sr(velocity, noise, text, base_video, torch.randn(AUDIO_SHAPE), (4, 4), steps=5, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Grid and guidance
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", sorted(SPEC_SIGMAS))
def test_sigma_tables_match_spec(steps: int) -> None:
    sigmas, timesteps = sigma_schedule(steps)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert timesteps.dtype == torch.int64 and timesteps.shape == (steps,)
    assert sigmas[-1].item() == 0.0
    torch.testing.assert_close(sigmas, torch.tensor(SPEC_SIGMAS[steps]), atol=6e-7, rtol=0)
    assert torch.equal(timesteps, (sigmas[:-1].double() * 1000).long())
    if steps == 32:
        assert timesteps.tolist() == SPEC_TIMESTEPS_32


def test_video_guidance_switches_at_timestep_500() -> None:
    assert video_guidance_scale(501) == SAMPLING.video_guidance_high == 5.0
    assert video_guidance_scale(500) == SAMPLING.video_guidance_low == 2.0
    assert video_guidance_scale(torch.tensor(999)) == 5.0
    _, timesteps = sigma_schedule(32)
    scales = [video_guidance_scale(t) for t in timesteps]
    assert scales == [5.0] * 27 + [2.0] * 5


def test_base_guidance_override() -> None:
    """guidance=None is the reference schedule; a custom scale changes the early steps only for video."""
    assert video_guidance_scale(999, high=7.0) == 7.0 and video_guidance_scale(400, high=7.0) == 2.0
    assert video_guidance_scale(400, high=1.5) == 1.5

    def velocity(video, audio, text):
        sign = 1.0 if text.shape[0] == 3 else -1.0
        return torch.full_like(video, sign), torch.full_like(audio, sign)

    def run(guidance):
        return run_stage("base", velocity=velocity, guidance=guidance)

    default, explicit, custom = run(None), run(SAMPLING.video_guidance_high), run(7.0)
    assert all(torch.equal(a, b) for a, b in zip(default, explicit, strict=True))
    assert not torch.equal(default[0], custom[0]) and not torch.equal(default[1], custom[1])


def test_guided_rule() -> None:
    v_uncond, v_cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])
    assert torch.equal(guided(v_uncond, v_cond, 5.0), torch.tensor([11.0, 18.0]))
    assert torch.equal(guided(v_uncond, v_cond, 1.0), v_cond)


def test_sr_coefficients() -> None:
    signal, noise = sr_renoise_coefficients()
    assert signal.item() == pytest.approx(0.8389104, abs=1e-7)
    assert noise.item() == pytest.approx(0.5442696, abs=1e-7)


# ---------------------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------------------


def test_unipc_recovers_clean_sample_from_exact_velocity() -> None:
    """With the true velocity of a straight flow every x0 prediction is x0, so the result is x0."""
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(1, 48, 1, 2, 2, generator=gen), torch.randn(1, 48, 1, 2, 2, generator=gen)
    sigmas, _ = sigma_schedule(8)
    solver = FlowUniPC(sigmas)
    x = (1 - sigmas[0]) * x0 + sigmas[0] * eps
    orders = []
    for _ in range(8):
        x = solver.step(eps - x0, x)
        orders.append(solver.last_order)
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)
    assert orders == [1, 2, 2, 2, 2, 2, 2, 1]
    with pytest.raises(RuntimeError):
        solver.step(eps - x0, x)


# ---------------------------------------------------------------------------------------------------------
# Loop contracts
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "total"), [("distill", 4), ("base", 6), ("sr", 5)])
def test_on_step_reports_every_step(stage: str, total: int) -> None:
    events: list[StepEvent] = []
    run_stage(stage, on_step=events.append)
    assert [(e.stage, e.step, e.total) for e in events] == [(stage, i, total) for i in range(1, total + 1)]
    assert all(e.seconds >= 0 for e in events)


@pytest.mark.parametrize(("stage", "total", "calls_per_step"), [("distill", 4, 1), ("base", 6, 2), ("sr", 5, 1)])
def test_cancel_stops_within_one_step(stage: str, total: int, calls_per_step: int) -> None:
    cancel = threading.Event()
    calls = []

    def velocity(video, audio, text):
        calls.append(1)
        return zero_velocity(video, audio, text)

    def on_step(event: StepEvent) -> None:
        if event.step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled) as info:
        run_stage(stage, velocity=velocity, on_step=on_step, cancel=cancel)
    assert (info.value.stage, info.value.step, info.value.total) == (stage, 2, total)
    assert len(calls) == 2 * calls_per_step


def test_cancel_set_before_start_runs_no_step() -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelled) as info:
        run_stage("base", cancel=cancel)
    assert info.value.step == 0


def test_noise_draw_order() -> None:
    shapes: list[tuple[int, ...]] = []
    run_stage("distill", noise=recording_noise(shapes))
    assert shapes == [AUDIO_SHAPE, VIDEO_SHAPE] + [VIDEO_SHAPE, AUDIO_SHAPE] * 4
    shapes.clear()
    run_stage("base", noise=recording_noise(shapes))
    assert shapes == [AUDIO_SHAPE, VIDEO_SHAPE]
    shapes.clear()
    run_stage("sr", noise=recording_noise(shapes))
    assert shapes == [(1, 48, 2, 4, 4), AUDIO_SHAPE]


def test_a2v_audio_is_fixed_and_ti2v_frame_zero_is_the_image() -> None:
    audio = torch.randn(AUDIO_SHAPE)
    image = torch.randn(1, 48, 1, 2, 4)
    seen_audio = []

    def velocity(video, audio_in, text):
        seen_audio.append(audio_in)
        return torch.ones_like(video), torch.ones_like(audio_in)

    shapes: list[tuple[int, ...]] = []
    text = torch.zeros(2, 8)
    video, out_audio = denoise_base(
        velocity, recording_noise(shapes), text, torch.ones(3, 8), VIDEO_SHAPE,
        audio_latent=audio, image_latent=image, steps=3,
    )  # fmt: skip
    assert shapes == [VIDEO_SHAPE]
    assert out_audio is audio and all(a is audio for a in seen_audio)
    assert torch.equal(video[:, :, :1], image)
    assert not torch.equal(video[:, :, 1:], torch.zeros_like(video[:, :, 1:]))


def test_sr_returns_the_clean_base_audio() -> None:
    base_audio = torch.randn(AUDIO_SHAPE)
    inputs = []

    def velocity(video, audio, text):
        inputs.append(audio)
        return torch.zeros_like(video), torch.full_like(audio, float("nan"))

    noise = gaussian_noise(torch.Generator().manual_seed(3))
    video, audio = denoise_sr(velocity, noise, torch.zeros(2, 8), torch.randn(1, 48, 2, 2, 2), base_audio, (4, 6))
    assert audio is base_audio
    assert video.shape == (1, 48, 2, 4, 6) and torch.isfinite(video).all()
    assert len(inputs) == SAMPLING.sr_steps and all(a is inputs[0] for a in inputs)
    assert not torch.equal(inputs[0], base_audio)
