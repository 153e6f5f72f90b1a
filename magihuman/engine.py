"""The generation engine: models loaded once, then `generate` and `upscale` per request.

```
prompt ─► text embedding (cached) ─┐
portrait ─► crop/resize ─► Wan VAE encode (frame 0) ─┤
own audio ─► 51.2 kHz mono ─► Oobleck encode (held fixed) ─┤
                                                          ▼
      noise ─► base loop (distill 8 steps, or base 32 + CFG) ─► Take (latents, seed, embedding, portrait)
                                                          │
                       [SR: trilinear + re-noise ─► SR loop, 5 steps]  ← also later, from a Take
                                                          ▼
            Turbo VAE decode (video) + Oobleck decode (audio, 51.2 → 44.1 kHz) ─► mp4
```

Noise: the base stage draws from a generator seeded with the request's seed (audio, then video, then per
step); the SR stage from its own generator seeded with `seed + SR_SEED_OFFSET`, so upscaling a Take later
gives exactly the SR output of a fresh run with the same seed.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from magihuman import take_state
from magihuman.config import (
    AUDIO,
    DEFAULT_SECONDS,
    MAX_SECONDS,
    REQUEST_LIMITS,
    RESOLUTIONS,
    SR_RESOLUTIONS,
    SR_SEED_OFFSET,
    Aspect,
    BaseModel,
    decoded_frames,
    latents_for_frames,
    video_frames,
)
from magihuman.errors import Cancel, GenerationCancelled, InputError
from magihuman.fields import FIELD, FIELDS
from magihuman.long_take import PieceFn, TakeSettings, WindowLatents
from magihuman.long_take import advance as advance_take
from magihuman.long_take import finish as finish_take
from magihuman.long_take import prepare as prepare_take
from magihuman.long_take import super_resolve as super_resolve_take
from magihuman.media import QUALITY, Mp4Writer, crop_resize, image_to_tensor, load_audio, load_portrait, virtual_to_44k
from magihuman.model.dit import DiT
from magihuman.model.turbo_vae import TurboVAE, to_uint8
from magihuman.offload import resident
from magihuman.sampling import (
    StepEvent,
    VelocityPairFn,
    denoise_base,
    denoise_distill,
    denoise_sr,
    gaussian_noise,
)
from magihuman.take_plan import TakePlan, parse_shots
from magihuman.take_state import TakeState
from magihuman.text import NEGATIVE_PROMPT, TextEncoder
from magihuman.threads import worker_thread
from magihuman.timing import seconds_since
from magihuman.vae import AudioVAE, VideoVAE

ProgressFn = Callable[[str, int, int], None]  # (phase, step, total)


class ParallelDriver(Protocol):
    """What the engine needs of a multi-GPU driver (magihuman.parallel.Driver)."""

    def describe(self) -> str: ...

    def guided_pair(self, dit: DiT) -> VelocityPairFn | None: ...


# --- 1. Requests and results ---


@dataclass(frozen=True)
class GenerationRequest:
    """One clip to generate; each field's default and range is declared in `magihuman.fields` (a test keeps the
    two in step). `resolution` is the final one (540p / 1080p add SR); `seed` None: a random one; `steps`,
    `guidance`, `negative_prompt` None: the model's own."""

    prompt: str
    portrait: str | Path | None = None
    audio: str | Path | None = None
    resolution: str = FIELD["resolution"].default
    aspect: Aspect = FIELD["aspect"].default
    seconds: int = FIELD["seconds"].default
    seed: int | None = None
    base_model: BaseModel = FIELD["base_model"].default
    steps: int | None = None
    sr_steps: int = FIELD["sr_steps"].default
    guidance: float | None = None
    negative_prompt: str | None = None
    quality: str = FIELD["quality"].default
    shots: str | None = None  # JSON list of {"prompt", "seconds"} (magihuman.take_plan.parse_shots)

    @property
    def mode(self) -> str:
        """T2V, TI2V, TA2V or TIA2V."""
        return "T" + ("I" if self.portrait else "") + ("A" if self.audio else "") + "2V"


@dataclass(frozen=True)
class Take:
    """Everything super-resolution needs to continue a generated clip without re-running the base stage."""

    request: GenerationRequest  # with the seed resolved
    text: torch.Tensor  # (L, C) prompt embedding, real rows only
    video: torch.Tensor  # (1, 48, T, h, w) final base latent (normalised)
    audio: torch.Tensor  # (1, A, 64) final audio latent
    output_audio: np.ndarray  # (N, 2) float32 at 44.1 kHz: what every mp4 of this take carries
    portrait: object | None  # the validated PIL image, re-encoded at SR size for TI2V
    base_video_path: Path
    folder: Path
    # A long take (magihuman.long_take): its plan and every window's latents; text/video/audio above are then
    # its first window's, output_audio the whole take's.
    plan: TakePlan | None = None
    windows: Sequence[WindowLatents] = ()  # read from the take's folder when asked for (take_state.StoredWindows)

    @property
    def seed(self) -> int:
        return self.request.seed  # type: ignore[return-value]


@dataclass(frozen=True)
class Result:
    video_path: Path  # the base-stage mp4
    sr_video_path: Path | None  # the super-resolution mp4, when the resolution asks for one
    sr_resolution: str | None  # the resolution of sr_video_path ("540p" or "1080p"); None without one
    seed: int
    take: Take
    timings: dict[str, float]  # seconds per stage: text, image, audio, denoise, sr, decode, mux
    peak_memory_gb: float | None  # CUDA peak during the call; None on CPU
    preview: bool  # produced by the tiny preview engine (noise pictures and sound)
    layout: str | None = None  # the multi-GPU layout that ran it, e.g. "4 GPUs: CP 4"; None: one device


# --- 2. The engine ---


@dataclass
class Models:
    text: TextEncoder
    video_vae: VideoVAE
    audio_vae: AudioVAE
    decoder: TurboVAE
    dits: dict[str, DiT] = field(default_factory=dict)  # "distill", "base", "sr-540p", "sr-1080p"


class Engine:
    """Owns the loaded models; `generate` and `upscale` are safe to call from one worker thread at a time."""

    def __init__(self, models: Models, device: torch.device, *, preview: bool, output_root: Path | None = None):
        self.models, self.device, self.preview = models, torch.device(device), preview
        self.output_root = Path(output_root) if output_root else Path(tempfile.gettempdir()) / "magihuman"
        self.output_root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.fault_hook: Callable[[str, int], None] | None = None  # tests inject faults per (stage, step)
        # Several GPUs on one clip (magihuman.parallel.Driver, set by `attach`): the DiTs run on all ranks.
        self.parallel: ParallelDriver | None = None
        self.take_settings = TakeSettings()  # how takes longer than one call are cut (magihuman.long_take)

    @property
    def layout(self) -> str | None:
        """The multi-GPU layout, e.g. "4 GPUs: CP 4 (base model: CFG 2 × CP 2)"; None on one device."""
        return self.parallel.describe() if self.parallel is not None else None

    @property
    def available_base_models(self) -> list[str]:
        return [m for m in ("distill", "base") if m in self.models.dits]

    @property
    def available_resolutions(self) -> list[str]:
        return [name for name, r in RESOLUTIONS.items() if r.sr_model is None or r.sr_model in self.models.dits]

    # --- public API -----------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressFn | None = None,
        cancel: Cancel | None = None,
        on_piece: PieceFn | None = None,
    ) -> Result:
        """Run the base stage (and super-resolution when the resolution asks for it); write the mp4(s). A long
        take that is stopped raises `GenerationCancelled` with its `take_state` (resume it with `finish_take`);
        it hands each window it makes, as an mp4 of its own, to `on_piece`, or else to `on_progress.piece` when
        the progress callback has one (studio.jobs.JobReport; magihuman.long_take)."""
        request = self.validate(request)
        with self._lock, torch.inference_mode(), _cuda_peak(self.device) as peak:
            timer = _StageTimer(self.device)
            folder = Path(tempfile.mkdtemp(prefix="take-", dir=self.output_root))
            try:
                long_take = prepare_take(request, self.take_settings)
                progress = on_progress or _ignore
                if long_take is not None:
                    state = TakeState(request, long_take.plan, folder, tuple(range(len(long_take.plan.windows))))
                    pieces = _pieces(on_piece, on_progress)
                    take = Take(**finish_take(self, state, timer, progress, cancel, long_take.wave, pieces))
                else:
                    take = self._base(request, folder, timer, progress, cancel)
                return self._result(take, timer, peak, progress, cancel)
            except BaseException as exc:
                if getattr(exc, "take_state", None) is None:  # a stopped long take keeps its windows to resume
                    shutil.rmtree(folder, ignore_errors=True)  # a stopped or failed job leaves no files behind
                raise

    # Long takes in steps (magihuman.take_state): resume, several GPU calls, continue, re-roll.

    def plan_take(self, request: GenerationRequest) -> TakeState | None:
        """A long take's state before any window is made (None: a single clip), for a take made over several calls."""
        request = self.validate(request)
        long_take = prepare_take(request, self.take_settings)
        if long_take is None:
            return None
        folder = Path(tempfile.mkdtemp(prefix="take-", dir=self.output_root))
        return TakeState(request, long_take.plan, folder, tuple(range(len(long_take.plan.windows))))

    def advance_take(
        self,
        state: TakeState,
        windows: int,
        on_progress: ProgressFn | None = None,
        cancel: Cancel | None = None,
        on_piece: PieceFn | None = None,
    ) -> TakeState:
        """Make the next `windows` windows of an unfinished take, stored beside it (no mp4 yet)."""
        with self._lock, torch.inference_mode():
            timer = _StageTimer(self.device)
            pieces = _pieces(on_piece, on_progress)
            return advance_take(self, state, windows, timer, on_progress or _ignore, cancel, pieces)

    def finish_take(
        self,
        state: TakeState,
        on_progress: ProgressFn | None = None,
        cancel: Cancel | None = None,
        on_piece: PieceFn | None = None,
    ) -> Result:
        """Make what is left of a take (stopped, advanced, continued or re-rolled), its mp4 and its SR."""
        with self._lock, torch.inference_mode(), _cuda_peak(self.device) as peak:
            timer = _StageTimer(self.device)
            progress = on_progress or _ignore
            take = Take(**finish_take(self, state, timer, progress, cancel, on_piece=_pieces(on_piece, on_progress)))
            return self._result(take, timer, peak, progress, cancel)

    def continue_take(
        self,
        take: Take,
        seconds: int,
        prompt: str | None = None,
        new_shot: bool = False,
        on_progress: ProgressFn | None = None,
        cancel: Cancel | None = None,
    ) -> Result:
        """A new take: `take` and `seconds` more of it (the same shot, or a new one from the portrait)."""
        state = take_state.extend(take, seconds, self.take_settings, self.output_root, prompt=prompt, new_shot=new_shot)
        return self.finish_take(state, on_progress, cancel)

    def reroll(
        self,
        take: Take,
        window: int,
        seed: int | None = None,
        on_progress: ProgressFn | None = None,
        cancel: Cancel | None = None,
    ) -> Result:
        """A new take: `take` with window `window` (0-based) made again from `seed`, the others kept."""
        return self.finish_take(take_state.reroll(take, window, self.output_root, seed), on_progress, cancel)

    def _result(self, take: Take, timer, peak, progress: ProgressFn, cancel) -> Result:
        sr_path = sr_resolution = None
        if RESOLUTIONS[take.request.resolution].sr_model is not None:
            sr_resolution = take.request.resolution
            sr_path = self._super_resolve_any(take, sr_resolution, timer, progress, cancel)
        return Result(
            take.base_video_path,
            sr_path,
            sr_resolution,
            take.seed,
            take,
            timer.totals,
            peak(),
            self.preview,
            self.layout,
        )

    def upscale(
        self,
        take: Take,
        resolution: str,
        on_progress: ProgressFn | None = None,
        cancel: Cancel | None = None,
    ) -> Result:
        """Super-resolve an earlier take to `resolution` (540p or 1080p) without re-running its base stage."""
        if resolution not in RESOLUTIONS or RESOLUTIONS[resolution].sr_model is None:
            raise InputError(f"cannot upscale to {resolution!r}; choose one of {', '.join(SR_RESOLUTIONS)}")
        self._require_resolution(resolution)
        with self._lock, torch.inference_mode(), _cuda_peak(self.device) as peak:
            timer = _StageTimer(self.device)
            sr_path = self._super_resolve_any(take, resolution, timer, on_progress or _ignore, cancel)
        return Result(
            take.base_video_path, sr_path, resolution, take.seed, take, timer.totals, peak(), self.preview, self.layout
        )

    def validate(self, request: GenerationRequest) -> GenerationRequest:
        """Check every field against its declaration in `magihuman.fields` (the API must not trust UI
        sliders), then what depends on the loaded models; returns the request with seed and steps resolved."""
        limits = REQUEST_LIMITS
        checked = {}
        for f in FIELDS:  # files are checked where they are read
            value = getattr(request, f.name)
            try:
                checked[f.name] = f.check(int(value) if isinstance(value, np.integer) else value)
            except ValueError as exc:
                raise InputError(str(exc)) from None
        request = replace(request, **checked)
        self._require_resolution(request.resolution)
        if request.base_model not in self.available_base_models:
            raise InputError(
                f"base model {request.base_model!r} is not loaded; available: {', '.join(self.available_base_models)}"
            )
        steps = request.steps if request.steps is not None else limits.default_steps[request.base_model]
        max_steps = limits.max_steps[request.base_model]
        if not 1 <= steps <= max_steps:
            raise InputError(f"steps for the {request.base_model} model must be 1 to {max_steps}")
        try:
            shots = parse_shots(request.shots)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        seconds = request.seconds
        if shots is not None and seconds is not None:
            raise InputError("give either a duration or shots (each shot has its own seconds), not both")
        if seconds is None and shots is None and not request.audio:
            seconds = DEFAULT_SECONDS  # empty: 5 s, or with a recording its length (magihuman.long_take)
        seed = request.seed
        if seed is None:
            seed = random.SystemRandom().randint(0, limits.max_seed)
        return replace(request, seed=int(seed), steps=int(steps), seconds=seconds)

    # --- stages ---------------------------------------------------------------------------------------

    def _base(self, request: GenerationRequest, folder: Path, timer, progress: ProgressFn, cancel) -> Take:
        generator = torch.Generator(device=self.device).manual_seed(request.seed)
        noise = gaussian_noise(generator, self.device)
        base_res = RESOLUTIONS["256p"]
        portrait = request.aspect == "portrait"
        lat_h, lat_w = base_res.latent_hw(portrait)

        # 1. Text (cached per prompt) and the negative prompt for the CFG base model.
        with timer("text"):
            progress("text", 0, 1)
            text = self._encode_text(request.prompt)
            negative = None
            if request.base_model == "base":
                negative = self._encode_text(request.negative_prompt or NEGATIVE_PROMPT)
            progress("text", 1, 1)

        # 2. Portrait: crop/resize to the base size, encode frame 0.
        image, image_latent = self._portrait(request, base_res.pixel_size(portrait), timer, progress)

        # 3. Own audio: its latent is held fixed; it also sets the clip length (fewer frames if shorter).
        audio_latent = None
        output_audio = None
        seconds = request.seconds if request.seconds is not None else MAX_SECONDS  # None: all of a short recording
        num_audio = video_frames(seconds)
        if request.audio:
            with timer("audio"):
                progress("audio", 0, 1)
                wave = load_audio(request.audio, sample_rate=AUDIO.virtual_sample_rate, seconds=seconds)
                audio_latent = self.models.audio_vae.encode(torch.from_numpy(wave), generator=generator)
                audio_latent = audio_latent.to(self.device, torch.float32)
                num_audio = audio_latent.shape[1]
                output_audio = virtual_to_44k(np.repeat(wave[: num_audio * AUDIO.samples_per_latent, None], 2, axis=1))
                progress("audio", 1, 1)
        dit = self.models.dits[request.base_model]
        video_shape = (1, dit.config.latent_channels, latents_for_frames(num_audio), lat_h, lat_w)
        audio_shape = None if audio_latent is not None else (1, num_audio, AUDIO.latent_channels)

        # 4. Base denoising loop.
        with timer("denoise"):
            video, audio = self._denoise(
                request, noise, text, negative, video_shape, audio_shape, audio_latent, image_latent, progress, cancel
            )
        if audio_latent is not None:
            audio = audio_latent  # the user's speech is the clip's audio, whatever the model did with it

        # 5. Decode and mux.
        if output_audio is None:
            with timer("decode"):
                output_audio = self._decode_audio(audio)
        path = self._write(video, output_audio, folder / "base_256p.mp4", request.quality, timer, progress, cancel)
        return Take(request, text, video, audio, output_audio, image, path, folder)

    def _denoise(
        self,
        request: GenerationRequest,
        noise,
        text: torch.Tensor,
        negative: torch.Tensor | None,
        video_shape: tuple[int, ...],
        audio_shape: tuple[int, ...] | None,
        audio_latent: torch.Tensor | None,
        prefix: torch.Tensor | None,
        progress: ProgressFn,
        cancel,
        audio_prefix: torch.Tensor | None = None,
        ends: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base loop for one clip or window: `prefix` holds the clean latent frames pinned at the start (the
        portrait's, or the previous window's); `ends` the (video, audio) pinned at the end (a re-rolled window)."""
        dit = self.models.dits[request.base_model]
        step_report = self._step_reporter("base", progress)
        with resident(dit):
            if request.base_model == "distill":
                return denoise_distill(
                    dit,
                    noise,
                    text,
                    video_shape,
                    audio_shape,
                    audio_latent=audio_latent,
                    image_latent=prefix,
                    audio_prefix=audio_prefix,
                    video_end=ends[0],
                    audio_end=ends[1],
                    steps=request.steps,
                    on_step=step_report,
                    cancel=cancel,
                    stage="base",
                )
            return denoise_base(
                dit,
                noise,
                text,
                negative,
                video_shape,
                audio_shape,
                audio_latent=audio_latent,
                image_latent=prefix,
                audio_prefix=audio_prefix,
                video_end=ends[0],
                audio_end=ends[1],
                steps=request.steps,
                guidance=request.guidance,
                on_step=step_report,
                cancel=cancel,
                stage="base",
                velocity_pair=self.parallel.guided_pair(dit) if self.parallel is not None else None,
            )

    def _portrait(self, request: GenerationRequest, size_hw, timer, progress: ProgressFn):
        """(the validated portrait, its frame-0 latent at `size_hw`), or (None, None) for text-to-video."""
        if not request.portrait:
            return None, None
        with timer("image"):
            progress("image", 0, 1)
            image = load_portrait(request.portrait)
            image_latent = self._encode_image(image, size_hw)
            progress("image", 1, 1)
        return image, image_latent

    def _super_resolve_any(self, take: Take, resolution: str, timer, progress: ProgressFn, cancel) -> Path:
        """SR of a single clip, or window by window for a long take (magihuman.long_take)."""
        if take.plan is not None:
            return super_resolve_take(self, take, resolution, timer, progress, cancel)
        return self._super_resolve(take, resolution, timer, progress, cancel)

    def _super_resolve(self, take: Take, resolution: str, timer, progress: ProgressFn, cancel) -> Path:
        res = RESOLUTIONS[resolution]
        portrait = take.request.aspect == "portrait"
        generator = torch.Generator(device=self.device).manual_seed(take.seed + SR_SEED_OFFSET)
        image_latent = None
        if take.portrait is not None:
            with timer("image"):
                image_latent = self._encode_image(take.portrait, res.pixel_size(portrait))
        sr_dit = self.models.dits[res.sr_model]
        with timer("sr"), resident(sr_dit):
            video, _ = denoise_sr(
                sr_dit,
                gaussian_noise(generator, self.device),
                take.text,
                take.video,
                take.audio,
                res.latent_hw(portrait),
                image_latent=image_latent,
                steps=take.request.sr_steps,
                on_step=self._step_reporter("sr", progress),
                cancel=cancel,
            )
        path = take.folder / f"sr_{resolution}.mp4"
        return self._write(video, take.output_audio, path, take.request.quality, timer, progress, cancel)

    # --- helpers --------------------------------------------------------------------------------------

    def _encode_text(self, prompt: str) -> torch.Tensor:
        return self.models.text.encode(prompt).tokens.to(self.device, torch.float32)

    def _encode_image(self, image, size_hw: tuple[int, int]) -> torch.Tensor:
        pixels = image_to_tensor(crop_resize(image, *size_hw)).to(self.device)
        return self.models.video_vae.encode_image(pixels).to(self.device, torch.float32)

    def _decode_audio(self, audio: torch.Tensor) -> np.ndarray:
        return virtual_to_44k(self.models.audio_vae.decode(audio).numpy())

    def _write(self, video: torch.Tensor, audio: np.ndarray, path: Path, quality: str, timer, progress, cancel) -> Path:
        """Decode window by window, encoding each piece on a worker thread while the next one decodes (the
        encoder's time hides behind the decoder's); "mux" times only the encoding left after the loop."""
        expected = decoded_frames(video.shape[2])
        crf, preset = QUALITY[quality]
        preset = "ultrafast" if self.preview else preset  # the preview's noise pictures do not compress
        encoder = worker_thread("mux")  # long-lived (magihuman.threads): a thread per clip made memory creep
        with Mp4Writer(path, audio, crf=crf, preset=preset) as writer:
            pending = None
            try:
                with timer("decode"):
                    for done, total, piece in self.models.decoder.decode_windows(video):
                        frames = to_uint8(piece).numpy()
                        if pending is not None:
                            pending.result()  # in order, and at most one piece waiting in memory
                        pending = encoder.submit(writer.write, frames)
                        progress("decode", done, total)
                        if cancel is not None and cancel.is_set():
                            raise GenerationCancelled("decode", done, total)
                with timer("mux"):
                    progress("mux", 0, 1)
                    pending.result()
            finally:
                if pending is not None:
                    pending.exception()  # let a running encode finish before the file is closed or removed
            if writer.frames_written != expected:
                raise RuntimeError(f"decoder returned {writer.frames_written} frames for {video.shape[2]} latents")
        progress("mux", 1, 1)
        return path

    def _step_reporter(self, phase: str, progress: ProgressFn) -> Callable[[StepEvent], None]:
        def report(event: StepEvent) -> None:
            progress(phase, event.step, event.total)
            if self.fault_hook is not None:
                self.fault_hook(phase, event.step)

        return report

    def _require_resolution(self, resolution: str) -> None:
        if resolution not in self.available_resolutions:
            raise InputError(
                f"{resolution} needs the {RESOLUTIONS[resolution].sr_model} model, which this engine has not loaded"
            )


# --- 3. Small utilities ---


def _pieces(on_piece: PieceFn | None, on_progress) -> PieceFn | None:
    """Where a long take's finished windows go: `on_piece`, else the progress callback's own `piece` method
    (the studio's job report carries one, so the callers that wrap progress keep working unchanged)."""
    return on_piece if on_piece is not None else getattr(on_progress, "piece", None)


def _ignore(phase: str, step: int, total: int) -> None:
    return None


class _StageTimer:
    """Accumulates wall time per stage name (GPU work is counted in the stage that queued it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[stage] = self.totals.get(stage, 0.0) + seconds_since(start, self.device)


@contextmanager
def _cuda_peak(device: torch.device):
    """Yields a function returning the CUDA peak memory (GiB) since entry; None on CPU."""
    if device.type != "cuda":
        yield lambda: None
        return
    torch.cuda.reset_peak_memory_stats(device)
    yield lambda: torch.cuda.max_memory_allocated(device) / 2**30
