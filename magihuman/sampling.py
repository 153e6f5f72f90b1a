"""Sampling: the sigma grid, the flow UniPC solver, guidance, SR preparation and the three denoising loops.

Flow convention: x_σ = (1 − σ)·x0 + σ·ε, and the DiT returns v ≈ ε − x0. Scalars are float32 on the CPU, computed
so that the golden trajectories match bit for bit on any machine (docs/numerics.md, "The sampler's scalars").
Noise is drawn in the reference order, so recorded noise can be replayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from magihuman.config import SAMPLING
from magihuman.errors import Cancel, GenerationCancelled
from magihuman.timing import seconds_since

Tensor = torch.Tensor
VelocityFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
VelocityPairFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]]
NoiseFn = Callable[[tuple[int, ...]], Tensor]

# The zero-terminal-SNR table that re-noises the upsampled latent: β linear in sqrt space between these.
ZSNR_BETA_START = 0.00085
ZSNR_BETA_END = 0.012


def _linspace64(start: float, stop: float, num: int) -> Tensor:
    """numpy's float64 linspace (start + i·step, last = stop): torch.linspace can differ in the last bit."""
    if num == 1:
        return torch.tensor([start], dtype=torch.float64)
    step = (stop - start) / (num - 1)
    points = torch.arange(num, dtype=torch.float64) * step + start
    points[-1] = stop
    return points


def sigma_schedule(steps: int, shift: float = SAMPLING.shift) -> tuple[Tensor, Tensor]:
    """Sigmas (N + 1,) float32 from ≈0.9998 to a final 0, and timesteps (N,) int64 = ⌊σ·1000⌋."""
    if steps < 1:
        raise ValueError(f"need at least one sampling step, got {steps}")
    sigma_max = torch.tensor(SAMPLING.sigma_max, dtype=torch.float32).item()
    grid = _linspace64(sigma_max, 0.0, steps + 1)[:-1]
    grid = shift * grid / (1 + (shift - 1) * grid)
    timesteps = (grid * SAMPLING.num_train_timesteps).to(torch.int64)
    sigmas = torch.cat([grid, grid.new_zeros(1)]).to(torch.float32)
    return sigmas, timesteps


def _ln(x: Tensor) -> Tensor:
    """float32 natural log of a 0-dim float32 tensor, rounded from float64 (−inf at 0)."""
    return torch.log(x.double()).float()


def _expm1(x: Tensor) -> Tensor:
    """float32 e^x − 1 of a 0-dim float32 tensor, rounded from float64 (−1 at −inf)."""
    return torch.expm1(x.double()).float()


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """a·b + c rounded once, like a fused multiply-add (the float64 product of two float32 values is exact)."""
    return (a.double() * b.double() + c.double()).float()


def _solve_corrector_system(r: Tensor, b1: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """Solve [[1, 1], [r, 1]]·ρ = (b1, b2) in float32 in LAPACK getrf + getrs rounding order."""
    one = torch.ones((), dtype=torch.float32)
    if r.abs() > one:
        a11, a12, c1, a21, a22, c2 = r, one, b2, one, one, b1
    else:
        a11, a12, c1, a21, a22, c2 = one, one, b1, r, one, b2
    l21 = a21 * (one / a11)
    u22 = _fma(-l21, a12, a22)
    y2 = _fma(-l21, c1, c2)
    rho2 = y2 * (one / u22)
    rho1 = _fma(-a12, rho2, c1) * (one / a11)
    return rho1, rho2


class FlowUniPC:
    """Flow-matching UniPC (x0-prediction, "bh2", order 2, lower order at the last step, corrector after the
    first step), bit-identical to the reference's Wan2.1-style scheduler. One instance per latent and run."""

    solver_order = 2

    def __init__(self, sigmas: Tensor) -> None:
        if sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError(f"sigmas must be a 1-D grid of N + 1 values, got shape {tuple(sigmas.shape)}")
        if sigmas[-1].item() != 0.0:
            raise ValueError(f"the sigma grid must end in 0, got {sigmas[-1].item()}")
        self.sigmas = sigmas.detach().to("cpu", torch.float32)
        self.num_steps = self.sigmas.numel() - 1
        self.step_index = 0
        self._x0_history: list[Tensor] = []  # m_{i-1}, m_i
        self._prev_sample: Tensor | None = None  # corrected
        self._prev_order = 0
        self.last_corrected: Tensor | None = None
        self.last_x0_pred: Tensor | None = None
        self.last_order = 0

    def _lambda(self, index: int) -> Tensor:
        """λ = ln(1 − σ) − ln σ (inf where σ = 0)."""
        sigma = self.sigmas[index]
        return _ln(1 - sigma) - _ln(sigma)

    def _order(self, index: int) -> int:
        return min(self.solver_order, self.num_steps - index, index + 1)

    def step(self, model_output: Tensor, sample: Tensor) -> Tensor:
        i = self.step_index
        if i >= self.num_steps:
            raise RuntimeError(f"FlowUniPC: all {self.num_steps} steps are done; make a new solver per run")
        x0_pred = sample - self.sigmas[i] * model_output
        if i > 0:  # UniC: refine this step's input with the new x0 prediction
            sample = self._correct(x0_pred, sample)
        self._x0_history = [*self._x0_history[-1:], x0_pred]
        order = self._order(i)
        self._prev_sample, self._prev_order = sample, order
        prev_sample = self._predict(sample, order)
        self.last_corrected, self.last_x0_pred, self.last_order = sample, x0_pred, order
        self.step_index += 1
        return prev_sample

    def _predict(self, sample: Tensor, order: int) -> Tensor:
        """x̃ = (σ_t/σ_s)·x − α_t·φ·m0 [− α_t·φ·0.5·D1 at order 2], φ = expm1(−h)."""
        i = self.step_index
        sigma_t, sigma_s0 = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t
        lambda_s0 = self._lambda(i)
        h = self._lambda(i + 1) - lambda_s0
        phi = _expm1(-h)  # h·φ1(h) and, for bh2, also B(h)
        m0 = self._x0_history[-1]
        x_t = sigma_t / sigma_s0 * sample - alpha_t * phi * m0
        if order == 2:
            rk = (self._lambda(i - 1) - lambda_s0) / h
            d1 = (self._x0_history[-2] - m0) / rk
            x_t = x_t - alpha_t * phi * (0.5 * d1)  # order 2 uses the fixed ρ = 0.5
        return x_t

    def _correct(self, x0_pred: Tensor, sample: Tensor) -> Tensor:
        """UniC with the previous step's order p, from the previous corrected sample to this sigma."""
        i, order = self.step_index, self._prev_order
        sigma_t, sigma_s0 = self.sigmas[i], self.sigmas[i - 1]
        alpha_t = 1 - sigma_t
        lambda_s0 = self._lambda(i - 1)
        h = self._lambda(i) - lambda_s0
        hh = -h
        phi = _expm1(hh)
        m0 = self._x0_history[-1]
        x_t = sigma_t / sigma_s0 * self._prev_sample - alpha_t * phi * m0
        d1_t = x0_pred - m0
        if order == 1:
            correction = 0.5 * d1_t
        else:
            rk = (self._lambda(i - 2) - lambda_s0) / h
            d1 = (self._x0_history[-2] - m0) / rk
            h_phi_k = phi / hh - 1
            b1 = h_phi_k / phi
            h_phi_k = h_phi_k / hh - 0.5
            b2 = 2 * h_phi_k / phi
            rho1, rho2 = _solve_corrector_system(rk, b1, b2)
            correction = rho1 * d1 + rho2 * d1_t
        return x_t - alpha_t * phi * correction


def renoise_step(sample: Tensor, velocity: Tensor, noise: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """The distilled model's step: x0 = x − σ·v, re-noised to σ_next with fresh noise."""
    return sigma_next * noise + (1 - sigma_next) * (sample - sigma * velocity)


def guided(v_uncond: Tensor, v_cond: Tensor, scale: float) -> Tensor:
    return v_uncond + scale * (v_cond - v_uncond)


def video_guidance_scale(timestep: int | Tensor, high: float = SAMPLING.video_guidance_high) -> float:
    """`high` (5.0) while the timestep is above 500, then 2.0 (or `high` if lower)."""
    if int(timestep) > SAMPLING.guidance_switch_timestep:
        return high
    return min(high, SAMPLING.video_guidance_low)


def zsnr_signal_table(num_train_timesteps: int = SAMPLING.num_train_timesteps) -> Tensor:
    """sqrt(ᾱ) (num_train_timesteps,) float32, rescaled so that the last entry is 0 and the first unchanged."""
    betas = _linspace64(ZSNR_BETA_START**0.5, ZSNR_BETA_END**0.5, num_train_timesteps) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    signal = alphas_cumprod.to(torch.float32).sqrt()
    first, last = signal[0].clone(), signal[-1].clone()
    return (signal - last) * (first / (first - last))


def sr_renoise_coefficients(index: int = SAMPLING.sr_zsnr_index) -> tuple[Tensor, Tensor]:
    """(signal a, noise sqrt(1 − a²)) as 0-dim float32 tensors; index 220 gives (0.8389104, 0.5442696)."""
    signal = zsnr_signal_table()[index]
    return signal, (1 - signal * signal) ** 0.5


def upsample_latent(base_video: Tensor, size_thw: Sequence[int]) -> Tensor:
    if base_video.ndim != 5:
        raise ValueError(f"expected a (1, C, T, H, W) latent, got shape {tuple(base_video.shape)}")
    return F.interpolate(base_video, size=tuple(size_thw), mode="trilinear", align_corners=True)


def renoise_for_sr(upsampled: Tensor, noise: Tensor, index: int = SAMPLING.sr_zsnr_index) -> Tensor:
    signal, noise_coeff = sr_renoise_coefficients(index)
    return upsampled * signal + noise * noise_coeff


def sr_audio_input(noise: Tensor, base_audio: Tensor, noise_scale: float = SAMPLING.sr_audio_noise_scale) -> Tensor:
    """The fixed audio the SR model reads (not variance preserving, as in the reference)."""
    return noise * noise_scale + base_audio * (1 - noise_scale)


@dataclass(frozen=True)
class StepEvent:
    stage: str
    step: int
    total: int
    seconds: float


def gaussian_noise(generator: torch.Generator, device: torch.device | str | None = None) -> NoiseFn:
    target = torch.device(device) if device is not None else generator.device

    def draw(shape: tuple[int, ...]) -> Tensor:
        return torch.randn(tuple(shape), generator=generator, device=target, dtype=torch.float32)

    return draw


def overwrite_first_frame(video: Tensor, image_latent: Tensor | None) -> Tensor:
    """Frames 0..K−1 := a clean prefix: the image latent (K = 1) or a long take's carried frames."""
    if image_latent is None:
        return video
    expected = (*video.shape[:2], image_latent.shape[2], *video.shape[3:])
    if tuple(image_latent.shape) != expected or not 1 <= image_latent.shape[2] <= video.shape[2]:
        raise ValueError(f"image latent has shape {tuple(image_latent.shape)}, expected {expected}")
    video = video.clone()
    video[:, :, : image_latent.shape[2]] = image_latent
    return video


def overwrite_audio_prefix(audio: Tensor, prefix: Tensor | None) -> Tensor:
    """Audio rows 0..F−1 := a long take's carried prefix (1, F, 64)."""
    if prefix is None:
        return audio
    if prefix.shape[0] != audio.shape[0] or prefix.shape[2] != audio.shape[2] or prefix.shape[1] > audio.shape[1]:
        raise ValueError(f"audio prefix has shape {tuple(prefix.shape)}, audio {tuple(audio.shape)}")
    audio = audio.clone()
    audio[:, : prefix.shape[1]] = prefix
    return audio


def overwrite_ends(video: Tensor, audio: Tensor, video_end: Tensor | None, audio_end: Tensor | None):
    """The last K latent frames (1, C, K, H, W) and last F audio rows (1, F, 64) := clean ones: a re-rolled
    window of a long take ends on the latents the next window started from (magihuman.take_state). No-op if None."""
    if video_end is not None:
        if tuple(video_end.shape) != (*video.shape[:2], video_end.shape[2], *video.shape[3:]):
            raise ValueError(f"end latents have shape {tuple(video_end.shape)}, video {tuple(video.shape)}")
        video = video.clone()
        video[:, :, video.shape[2] - video_end.shape[2] :] = video_end
    if audio_end is not None:
        if audio_end.shape[2] != audio.shape[2] or audio_end.shape[1] > audio.shape[1]:
            raise ValueError(f"end audio rows have shape {tuple(audio_end.shape)}, audio {tuple(audio.shape)}")
        audio = audio.clone()
        audio[:, audio.shape[1] - audio_end.shape[1] :] = audio_end
    return video, audio


def _step_clock(
    stage: str,
    total: int,
    on_step: Callable[[StepEvent], None] | None,
    cancel: Cancel | None,
    device: torch.device,
) -> Iterator[int]:
    """Step indices; `cancel` is checked before each step, `on_step` gets its device-synchronised time."""
    for i in range(total):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled(stage, i, total)
        start = time.perf_counter()
        yield i
        if on_step is not None:
            on_step(StepEvent(stage, i + 1, total, seconds_since(start, device)))


def _initial_latents(
    noise: NoiseFn, video_shape: Sequence[int], audio_shape: Sequence[int] | None, audio_latent: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Audio noise first (unless given), then video noise: the reference order."""
    if (audio_shape is None) == (audio_latent is None):
        raise ValueError("pass exactly one of audio_shape (audio is generated) and audio_latent (audio is given)")
    audio = noise(tuple(audio_shape)) if audio_latent is None else audio_latent
    video = noise(tuple(video_shape))
    return video, audio


@torch.no_grad()
def denoise_distill(
    velocity: VelocityFn,
    noise: NoiseFn,
    text: Tensor,
    video_shape: Sequence[int],
    audio_shape: Sequence[int] | None = None,
    *,
    audio_latent: Tensor | None = None,
    image_latent: Tensor | None = None,
    audio_prefix: Tensor | None = None,
    video_end: Tensor | None = None,
    audio_end: Tensor | None = None,
    steps: int = SAMPLING.distill_steps,
    shift: float = SAMPLING.shift,
    on_step: Callable[[StepEvent], None] | None = None,
    cancel: Cancel | None = None,
    stage: str = "distill",
) -> tuple[Tensor, Tensor]:
    """Distilled model: one conditional DiT call and one re-noising step per sigma. Per step it draws video- then
    audio-shaped noise (also at σ_next = 0).

    A given audio latent is held fixed, so the DiT hears the user's speech at every step; the reference
    re-noises it here, which looks like an oversight (its input drifts from the speech the video follows). The
    audio noise is still drawn, to keep the reference order. `video_end`/`audio_end` are held clean too (a
    re-rolled window ends where the next one starts)."""
    video, audio = _initial_latents(noise, video_shape, audio_shape, audio_latent)
    sigmas, _ = sigma_schedule(steps, shift)
    for i in _step_clock(stage, steps, on_step, cancel, video.device):
        video = overwrite_first_frame(video, image_latent)
        audio = overwrite_audio_prefix(audio, audio_prefix)
        video, audio = overwrite_ends(video, audio, video_end, audio_end)
        v_video, v_audio = velocity(video, audio, text)
        video = renoise_step(video, v_video, noise(tuple(video.shape)), sigmas[i], sigmas[i + 1])
        audio_noise = noise(tuple(audio.shape))
        if audio_latent is None:
            audio = renoise_step(audio, v_audio, audio_noise, sigmas[i], sigmas[i + 1])
    video, audio = overwrite_first_frame(video, image_latent), overwrite_audio_prefix(audio, audio_prefix)
    return overwrite_ends(video, audio, video_end, audio_end)


@torch.no_grad()
def denoise_base(
    velocity: VelocityFn,
    noise: NoiseFn,
    text: Tensor,
    text_negative: Tensor,
    video_shape: Sequence[int],
    audio_shape: Sequence[int] | None = None,
    *,
    audio_latent: Tensor | None = None,
    image_latent: Tensor | None = None,
    audio_prefix: Tensor | None = None,
    video_end: Tensor | None = None,
    audio_end: Tensor | None = None,
    steps: int = SAMPLING.base_steps,
    shift: float = SAMPLING.shift,
    guidance: float | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    cancel: Cancel | None = None,
    stage: str = "base",
    velocity_pair: VelocityPairFn | None = None,
) -> tuple[Tensor, Tensor]:
    """Base model: UniPC with classifier-free guidance against the negative text (`video_guidance_scale`; audio
    5.0). `guidance` replaces both 5.0s. `velocity_pair` computes a step's two DiT calls at once (CFG-parallel on
    two GPU groups). Prefixes and ends as in `denoise_distill`."""
    video, audio = _initial_latents(noise, video_shape, audio_shape, audio_latent)
    sigmas, timesteps = sigma_schedule(steps, shift)
    video_solver = FlowUniPC(sigmas)
    audio_solver = FlowUniPC(sigmas) if audio_latent is None else None
    video_high = SAMPLING.video_guidance_high if guidance is None else guidance
    audio_scale = SAMPLING.audio_guidance if guidance is None else guidance
    for i in _step_clock(stage, steps, on_step, cancel, video.device):
        video = overwrite_first_frame(video, image_latent)
        audio = overwrite_audio_prefix(audio, audio_prefix)
        video, audio = overwrite_ends(video, audio, video_end, audio_end)
        if velocity_pair is None:
            vc_video, vc_audio = velocity(video, audio, text)
            vu_video, vu_audio = velocity(video, audio, text_negative)
        else:
            (vc_video, vc_audio), (vu_video, vu_audio) = velocity_pair(video, audio, text, text_negative)
        video = video_solver.step(guided(vu_video, vc_video, video_guidance_scale(timesteps[i], video_high)), video)
        if audio_solver is not None:
            audio = audio_solver.step(guided(vu_audio, vc_audio, audio_scale), audio)
    video, audio = overwrite_first_frame(video, image_latent), overwrite_audio_prefix(audio, audio_prefix)
    return overwrite_ends(video, audio, video_end, audio_end)


@dataclass(frozen=True)
class SRStart:
    upsampled: Tensor
    video: Tensor
    audio: Tensor


def prepare_sr(noise: NoiseFn, base_video: Tensor, base_audio: Tensor, latent_hw: Sequence[int]) -> SRStart:
    """Upsample (1, C, T, h, w) → (1, C, T, *latent_hw) and re-noise it; draws video then audio noise."""
    upsampled = upsample_latent(base_video, (base_video.shape[2], *latent_hw))
    video = renoise_for_sr(upsampled, noise(tuple(upsampled.shape)))
    audio = sr_audio_input(noise(tuple(base_audio.shape)), base_audio)
    return SRStart(upsampled, video, audio)


@torch.no_grad()
def denoise_sr(
    velocity: VelocityFn,
    noise: NoiseFn,
    text: Tensor,
    base_video: Tensor,
    base_audio: Tensor,
    latent_hw: Sequence[int],
    *,
    image_latent: Tensor | None = None,
    steps: int = SAMPLING.sr_steps,
    shift: float = SAMPLING.shift,
    on_step: Callable[[StepEvent], None] | None = None,
    cancel: Cancel | None = None,
    stage: str = "sr",
) -> tuple[Tensor, Tensor]:
    """Super-resolution: conditional-only UniPC on the video; the SR DiT's audio output is discarded and the
    base audio returned. `image_latent` is encoded at SR size."""
    start = prepare_sr(noise, base_video, base_audio, latent_hw)
    video, audio_in = start.video, start.audio
    sigmas, _ = sigma_schedule(steps, shift)
    video_solver = FlowUniPC(sigmas)
    for _ in _step_clock(stage, steps, on_step, cancel, video.device):
        video = overwrite_first_frame(video, image_latent)
        v_video, _ = velocity(video, audio_in, text)
        video = video_solver.step(v_video, video)
    return overwrite_first_frame(video, image_latent), base_audio
