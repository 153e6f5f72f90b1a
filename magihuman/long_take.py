"""Long takes: a take longer than one model call (up to 2 minutes, or a scene of several shots), made window by
window by the engine's own single-clip loop.

```
plan (magihuman.take_plan) ─► for each window w, seeded from (seed, w):
    prefix = portrait latent (first window of a shot)
           | [encode(seam frame of w−1, float) ; last K−1 latents of w−1]  (pinned at every step, base and SR)
    audio  = the recording's latent A[start : start + N]   (encoded once for the whole take)
           | generated, its first F rows pinned to the last F rows of w−1
    base loop ─► decode ─► frames [overlap, overlap + keep) appended to the mp4; seam frame kept in float
generated speech: one decode of the stitched audio latents, muxed after the video
SR (540p/1080p, now or later from the Take): the same windows, prefixes from the SR stream
```

Memory stays bounded by one window of frames: the mp4 is written as each window decodes, and what each window
keeps is written beside the take (magihuman.take_state), not held in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import torch

from magihuman.colour import LabStats, anchor_colour
from magihuman.config import AUDIO, FPS, MAX_SECONDS, MEDIA_LIMITS, RESOLUTIONS, SR_SEED_OFFSET
from magihuman.errors import GenerationCancelled, InputError
from magihuman.media import QUALITY, Mp4Writer, crop_resize, image_to_tensor, load_audio, virtual_to_44k
from magihuman.model.turbo_vae import to_uint8
from magihuman.offload import resident
from magihuman.sampling import denoise_sr, gaussian_noise
from magihuman.take_plan import MAX_TAKE_SECONDS, WINDOW_FRAMES, Shot, TakePlan, Window, parse_shots, plan_take
from magihuman.take_prompts import split_dialogue
from magihuman.take_state import REROLLED, StoredWindows, TakeState, WindowLatents, load_window, save_window
from magihuman.text import NEGATIVE_PROMPT
from magihuman.threads import worker_thread

ProgressFn = Callable[[str, int, int], None]
# (path, window index, window count) of a window's own mp4: the studio plays it while the others render.
PieceFn = Callable[[Path, int, int], None]
# Decoding stops one second past the cap, so a longer recording is told apart (and refused) cheaply.
LONG_TAKE_AUDIO = replace(MEDIA_LIMITS, max_audio_seconds=MAX_TAKE_SECONDS + 1)


@dataclass(frozen=True)
class TakeSettings:
    """How the engine cuts long takes (engine settings, not request fields). K > 1 pins K−1 generated latents
    besides the seam frame: outside what the model was trained on, so it stays off until a GPU check says it
    helps (README, "Long takes")."""

    window_frames: int = WINDOW_FRAMES
    overlap_latents: int = 1
    colour_strength: float = 0.5  # how far the carried frame's colour moves toward the portrait's (magihuman.colour)
    # Every M-th window of a shot pinned to the portrait again: a visible cut that undoes any drift; 0: never.
    reset_every: int = 0


@dataclass(frozen=True)
class LongTake:
    plan: TakePlan
    wave: np.ndarray | None  # the recording at 51.2 kHz, at least the take's length; None: generated speech


def prepare(request, settings: TakeSettings) -> LongTake | None:
    """The plan of a request that needs more than one model call; None for a single clip."""
    shots = parse_shots(request.shots)
    seconds = request.seconds
    if shots is None and request.audio is None:  # `validate` gave the seconds
        return _long_take(request, [Shot(seconds * FPS)], None, settings) if seconds > MAX_SECONDS else None
    if shots is None and seconds is not None and seconds <= MAX_SECONDS:
        return None
    wave = None
    if request.audio is not None:
        wave = load_audio(request.audio, sample_rate=AUDIO.virtual_sample_rate, limits=LONG_TAKE_AUDIO)
        available = len(wave) // AUDIO.samples_per_latent
        if shots is None and seconds is None:
            if available > MAX_TAKE_SECONDS * FPS:
                raise InputError(_too_long(request.audio))
            if available <= MAX_SECONDS * FPS:
                return None  # one clip follows all of it
            shots = [Shot(available)]
        elif shots is None:
            shots = [Shot(min(seconds * FPS, available))]
        elif sum(shot.frames for shot in shots) > available:
            raise InputError(
                f"the shots last {sum(s.frames for s in shots) / FPS:g} s but the recording only "
                f"{available / FPS:.2f} s; shorten the shots or leave the recording out"
            )
    return _long_take(request, shots, wave, settings)


def _long_take(request, shots: list[Shot], wave: np.ndarray | None, settings: TakeSettings) -> LongTake:
    loudness = None
    if wave is not None:  # joins fall in the recording's pauses: RMS per frame
        per = AUDIO.samples_per_latent
        frames = wave[: len(wave) // per * per].reshape(-1, per).astype(np.float64)
        loudness = np.sqrt(np.mean(frames**2, axis=1)).tolist()
    plan = plan_take(
        shots,
        seed=request.seed,
        window_frames=settings.window_frames,
        overlap_latents=settings.overlap_latents,
        loudness=loudness,
        reset_every=settings.reset_every,
    )
    if wave is None:  # generated speech: each window says its own sentences (a recording carries its own words)
        plan = _split_dialogue(plan, request.prompt)
    return LongTake(plan, wave)


def _split_dialogue(plan: TakePlan, take_prompt: str) -> TakePlan:
    windows = list(plan.windows)
    for shot in sorted({w.shot for w in windows}):
        own = [w for w in windows if w.shot == shot]
        origin = own[0].start
        spans = [(w.first_new - origin, w.first_new + w.keep - origin) for w in own]
        for w, prompt in zip(own, split_dialogue(own[0].prompt or take_prompt, spans), strict=True):
            windows[w.index] = replace(w, prompt=prompt)
    return replace(plan, windows=tuple(windows))


def _too_long(path) -> str:
    try:
        with av.open(str(path)) as container:
            length = container.duration / av.time_base if container.duration else None
    except av.FFmpegError:
        length = None
    told = f"{int(length // 60)} min {length % 60:.0f} s" if length else f"more than {MAX_TAKE_SECONDS} s"
    return (
        f"the recording lasts {told}; a take follows at most {MAX_TAKE_SECONDS} s of it: trim it, or set the "
        f"duration (up to {MAX_TAKE_SECONDS} s) to use its beginning"
    )


ENCODE_CHUNK_FRAMES = 29 * FPS  # the reference encodes long audio in 29-s chunks


def encode_recording(audio_vae, wave: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
    """The whole recording's latent (1, frames, 64) in one encoding: one pass up to 29 s; a longer one in 29-s
    chunks overlapping by half, the overlapping latents cross-faded linearly (as the reference does), which
    bounds the encoder's activations (~3 GB per layer for 2 minutes at 51.2 kHz in one pass)."""
    per, chunk = AUDIO.samples_per_latent, ENCODE_CHUNK_FRAMES
    frames = len(wave) // per
    if frames <= chunk:
        return audio_vae.encode(torch.from_numpy(wave[: frames * per]), generator=generator)
    hop = chunk // 2
    starts = list(range(0, frames - chunk, hop)) + [frames - chunk]
    total = weights = None
    for i, start in enumerate(starts):
        latent = audio_vae.encode(torch.from_numpy(wave[start * per : (start + chunk) * per]), generator=generator)
        if total is None:
            total = latent.new_zeros(1, frames, latent.shape[2])
            weights = latent.new_zeros(frames)
        ramp = latent.new_ones(chunk)
        fade = torch.linspace(0, 1, hop + 2, dtype=latent.dtype, device=latent.device)[1:-1]  # never exactly 0
        if i > 0:
            ramp[:hop] = fade
        if i < len(starts) - 1:
            ramp[chunk - hop :] = fade.flip(0)
        total[:, start : start + chunk] += latent[0] * ramp[:, None]
        weights[start : start + chunk] += ramp
    return total / weights[None, :, None]


@dataclass
class _Carry:
    """What window w hands to window w+1: its latents and audio, and its decoded seam frame (float pixels)."""

    video: torch.Tensor
    audio: torch.Tensor
    seam: torch.Tensor | None  # (1, 3, 1, H, W) in [−1, 1]; None after a shot's last window


def advance(
    engine, state: TakeState, count: int, timer, progress: ProgressFn, cancel, on_piece: PieceFn | None = None
) -> TakeState:
    """Make and store the next `count` windows of `state`, without the mp4 (one GPU call of a split take)."""
    if not 1 <= count <= len(state.todo):
        raise ValueError(f"{count} windows asked for; {len(state.todo)} are left to make")
    _run(engine, state, state.todo[:count], None, timer, progress, cancel, on_piece=on_piece)
    return replace(state, todo=state.todo[count:])


def finish(
    engine,
    state: TakeState,
    timer,
    progress: ProgressFn,
    cancel,
    wave: np.ndarray | None = None,
    on_piece: PieceFn | None = None,
) -> dict:
    """Make what is left of `state` and write the whole take to `base_256p.mp4` (earlier windows decoded again
    from their stored latents); returns the fields of its `Take`."""
    plan, folder = state.plan, state.folder
    path = folder / "base_256p.mp4"
    image, output_audio = _run(engine, state, state.todo, path, timer, progress, cancel, wave, on_piece)
    windows = StoredWindows(folder, len(plan.windows))
    (folder / "plan.json").write_text(plan.to_json(colour_distance=[w.colour_distance for w in windows]))
    first = windows[0]
    return dict(
        request=state.request,
        text=engine._encode_text(first.prompt),
        video=first.video,
        audio=first.audio,
        output_audio=output_audio,
        portrait=image,
        base_video_path=path,
        folder=folder,
        plan=plan,
        windows=windows,
    )


def _run(
    engine, state: TakeState, render, path: Path | None, timer, progress: ProgressFn, cancel, wave=None, on_piece=None
):
    """Make the windows `render`, each stored as it finishes; with `path`, also write every window's kept frames.
    Returns (portrait, output audio)."""
    request, plan, folder, device = state.request, state.plan, state.folder, engine.device
    portrait = request.aspect == "portrait"
    base_res = RESOLUTIONS["256p"]
    lat_h, lat_w = base_res.latent_hw(portrait)

    image, image_latent = engine._portrait(request, base_res.pixel_size(portrait), timer, progress)
    reference = _portrait_colour(image, base_res.pixel_size(portrait))
    strength = engine.take_settings.colour_strength

    # The recording: one encoding for the whole take (padded with silence over the last window's surplus);
    # every window holds its exact slice fixed, and the mp4 carries the recording itself, trimmed to the take.
    if wave is None and request.audio:
        wave = load_audio(request.audio, sample_rate=AUDIO.virtual_sample_rate, limits=LONG_TAKE_AUDIO)
    audio_all = output_audio = audio_generator = padded = None
    if wave is not None:
        with timer("audio"):
            progress("audio", 0, 1)
            per = AUDIO.samples_per_latent
            needed = plan.generated_frames * per
            padded = np.zeros(needed, np.float32)
            padded[: min(needed, len(wave))] = wave[:needed]
            if render:
                audio_generator = torch.Generator(device=device).manual_seed(request.seed)
                audio_all = encode_recording(engine.models.audio_vae, padded, audio_generator).to(device, torch.float32)
            if path is not None:
                output_audio = virtual_to_44k(np.repeat(padded[: plan.frames * per, None], 2, axis=1))
            progress("audio", 1, 1)

    base_model = request.base_model
    latent_channels = engine.models.dits[base_model].config.latent_channels
    negative = None
    if base_model == "base" and render:
        negative = engine._encode_text(request.negative_prompt or NEGATIVE_PROMPT)
    todo, last = set(render), max(render, default=-1)
    generated_audio: list[torch.Tensor] = []
    carry: _Carry | None = None
    opened = _writer(engine, path, output_audio, request.quality) if path is not None else nullcontext()
    try:
        with opened as writer:
            for window in plan.windows:
                if path is None and window.index > last:
                    break
                report = _window_progress(progress, window, len(plan.windows))
                if window.index in todo:
                    prompt = window.prompt or request.prompt
                    with timer("text"):
                        text = engine._encode_text(prompt)
                    prefix, drift = image_latent, None
                    if window.overlap and not window.reset:
                        prefix, drift = _prefix(engine, carry, window, (lat_h, lat_w), reference, strength)
                    audio_latent = audio_shape = audio_prefix = None
                    if audio_all is not None:
                        audio_latent = audio_all[:, window.start : window.start + window.frames]
                    else:
                        audio_shape = (1, window.frames, AUDIO.latent_channels)
                        if window.overlap:
                            audio_prefix = carry.audio[:, -window.overlap :]
                    video_shape = (1, latent_channels, window.latents, lat_h, lat_w)
                    generator = torch.Generator(device=device).manual_seed(window.seed)
                    if window.index == 0 and audio_generator is not None and window.seed == request.seed:
                        generator = audio_generator  # window 0 draws after the recording's encoding, as one clip does
                    with timer("denoise"):
                        video, audio = engine._denoise(
                            request,
                            gaussian_noise(generator, device),
                            text,
                            negative,
                            video_shape,
                            audio_shape,
                            audio_latent,
                            prefix,
                            report,
                            cancel,
                            audio_prefix=audio_prefix,
                            ends=_ends(state, window, generated=audio_all is None),
                        )
                    if audio_latent is not None:
                        audio = audio_latent
                    own = None
                    if on_piece is not None:
                        own = _piece_writer(engine, folder, window, padded, audio, request.quality)
                    with own or nullcontext():
                        seam = _write_window(
                            engine, video, window, _seam_index(plan, window), writer, timer, report, cancel, own
                        )
                    if own is not None:
                        on_piece(own.path, window.index, len(plan.windows))
                    save_window(
                        folder, window.index, WindowLatents(prompt, video.cpu(), audio.cpu(), drift, seam.cpu())
                    )
                    todo.discard(window.index)
                    carry = _Carry(video, audio, seam)
                elif path is not None or window.index + 1 in todo:
                    kept = load_window(folder, window.index)
                    carry = _Carry(kept.video.to(device), kept.audio.to(device), kept.seam.to(device))
                    if path is not None:
                        _write_window(engine, carry.video, window, None, writer, timer, report, cancel)
                else:
                    continue
                if path is not None and wave is None:
                    generated_audio.append(carry.audio[:, window.overlap : window.overlap + window.keep].cpu())
            if path is not None and output_audio is None:
                with timer("decode"):
                    output_audio = engine._decode_audio(torch.cat(generated_audio, dim=1).to(device))
                writer.add_audio(output_audio)
    except GenerationCancelled as exc:
        left = tuple(i for i in state.todo if i in todo or i not in render)
        if len(left) < len(plan.windows):  # some windows are kept: the take can be resumed (TakeState)
            exc.take_state = replace(state, todo=left)
        raise
    return image, output_audio


def _ends(state: TakeState, window: Window, generated: bool):
    """(video, audio) pinned at the end of a re-rolled window: the latents (and generated audio rows) of the
    window it replaces that the following, kept window started from; (None, None) for any other window."""
    plan = state.plan
    following = plan.windows[window.index + 1] if window.index + 1 < len(plan.windows) else None
    if following is None or following.overlap == 0 or following.index in state.todo:
        return None, None
    before = load_window(state.folder, window.index, REROLLED)
    video = before.video[:, :, before.video.shape[2] - following.pinned_latents :]
    audio = before.audio[:, before.audio.shape[1] - following.overlap :] if generated else None
    return video, audio


def super_resolve(engine, take, resolution: str, timer, progress: ProgressFn, cancel) -> Path:
    """The SR stage of a long take, window by window, each pinned to the SR stream's own prefix."""

    res, request, device = RESOLUTIONS[resolution], take.request, engine.device
    portrait = request.aspect == "portrait"
    hw = res.latent_hw(portrait)
    image_latent = None
    if take.portrait is not None:
        with timer("image"):
            image_latent = engine._encode_image(take.portrait, res.pixel_size(portrait))
    reference = _portrait_colour(take.portrait, res.pixel_size(portrait))
    sr_dit = engine.models.dits[res.sr_model]
    carry: _Carry | None = None
    path = take.folder / f"sr_{resolution}.mp4"
    with _writer(engine, path, take.output_audio, request.quality) as writer:
        for window, latents in zip(take.plan.windows, take.windows, strict=True):
            report = _window_progress(progress, window, len(take.plan.windows))
            prefix = image_latent
            if window.overlap and not window.reset:
                prefix, _ = _prefix(engine, carry, window, hw, reference, engine.take_settings.colour_strength)
            generator = torch.Generator(device=device).manual_seed(window.seed + SR_SEED_OFFSET)
            audio = latents.audio.to(device)
            with timer("sr"), resident(sr_dit):
                video, _ = denoise_sr(
                    sr_dit,
                    gaussian_noise(generator, device),
                    engine._encode_text(latents.prompt),
                    latents.video.to(device),
                    audio,
                    hw,
                    image_latent=prefix,
                    steps=request.sr_steps,
                    on_step=engine._step_reporter("sr", report),
                    cancel=cancel,
                )
            seam = _write_window(engine, video, window, _seam_index(take.plan, window), writer, timer, report, cancel)
            carry = _Carry(video, audio, seam)
    return path


def _prefix(
    engine, carry: _Carry, window: Window, latent_hw: tuple[int, int], reference: LabStats | None, strength: float
) -> tuple[torch.Tensor, float | None]:
    """K pinned latent frames: the seam frame (colour-anchored to the portrait) re-encoded alone (a 1-frame
    latent, as frame 0 must be; never a 4-frame latent), then the previous window's last K−1 latents verbatim.
    Also the seam's colour distance from the portrait before anchoring (None without a portrait)."""
    height, width = latent_hw[0] * 16, latent_hw[1] * 16
    seam, drift = carry.seam, None
    if tuple(seam.shape[-2:]) != (height, width):
        raise RuntimeError(f"seam frame of {tuple(seam.shape[-2:])}, expected {(height, width)}")
    if reference is not None:
        drift = LabStats.of(seam).distance(reference)
        seam = anchor_colour(seam, reference, strength)
    first = engine.models.video_vae.encode_image(seam.to(engine.device)).to(engine.device, torch.float32)
    rest = window.pinned_latents - 1
    prefix = torch.cat([first, carry.video[:, :, carry.video.shape[2] - rest :]], dim=2) if rest else first
    return prefix, drift


def plan_table(take) -> str:
    """A long take's plan as a small text table (the studio's details)."""
    plan = take.plan
    lines = [
        f"long take: {plan.frames} frames ({plan.seconds:.2f} s) in {len(plan.windows)} windows",
        f"{'window':>6} {'frames':>11} {'shot':>4} {'seed':>12} {'colour ΔE':>9}",
    ]
    for w, kept in zip(plan.windows, take.windows, strict=True):
        drift = "-" if kept.colour_distance is None else f"{kept.colour_distance:.1f}"
        frames = f"{w.first_new}-{w.first_new + w.keep - 1}"
        lines.append(f"{w.index + 1:>6} {frames:>11} {w.shot + 1:>4} {w.seed:>12} {drift:>9}")
    return "\n".join(lines)


def _portrait_colour(image, size_hw: tuple[int, int]) -> LabStats | None:
    return None if image is None else LabStats.of(image_to_tensor(crop_resize(image, *size_hw)))


def _seam_index(plan: TakePlan, window: Window) -> int:
    """The local frame of `window` that a window continuing it starts from (kept for every window: a take can be
    continued after its last one)."""
    return window.frames - (4 * (plan.overlap_latents - 1) + 1)


def _write_window(
    engine,
    video,
    window: Window,
    seam_index: int | None,
    writer: Mp4Writer | None,
    timer,
    report,
    cancel,
    own_writer: Mp4Writer | None = None,
) -> torch.Tensor | None:
    """Decode one window and encode its kept frames on the mux thread while the next piece decodes; returns the
    seam frame in float (no 8-bit round trip before it is re-encoded)."""
    keep_from, keep_to = window.overlap, window.overlap + window.keep
    encoder = worker_thread("mux")
    writers = [w for w in (writer, own_writer) if w is not None]

    def write(frames: np.ndarray) -> None:
        for each in writers:
            each.write(frames)

    seam, done_frames, pending = None, 0, None
    try:
        with timer("decode"):
            for done, total, piece in engine.models.decoder.decode_windows(video):
                count = piece.shape[2]
                if seam_index is not None and done_frames <= seam_index < done_frames + count:
                    local = seam_index - done_frames
                    seam = piece[:, :, local : local + 1].float().clamp(-1.0, 1.0)
                lo, hi = max(keep_from - done_frames, 0), min(keep_to - done_frames, count)
                if lo < hi and writers:
                    frames = to_uint8(piece[:, :, lo:hi]).numpy()
                    if pending is not None:
                        pending.result()
                    pending = encoder.submit(write, frames)
                done_frames += count
                report("decode", done, total)
                if cancel is not None and cancel.is_set():
                    raise GenerationCancelled("decode", done, total)
        with timer("mux"):
            if pending is not None:
                pending.result()
    finally:
        if pending is not None:
            pending.exception()  # a running encode finishes before the writer is closed or removed
    if done_frames != window.frames:
        raise RuntimeError(f"decoder returned {done_frames} frames for a window of {window.frames}")
    return seam


def _piece_writer(engine, folder: Path, window: Window, recording, latent_audio, quality: str) -> Mp4Writer:
    """The writer of one window's own mp4; generated speech is decoded for it alone (the take's comes at the end)."""
    if recording is not None:
        per = AUDIO.samples_per_latent
        own = recording[window.first_new * per : (window.first_new + window.keep) * per]
        sound = virtual_to_44k(np.repeat(own[:, None], 2, axis=1))
    else:
        sound = engine._decode_audio(latent_audio[:, window.overlap : window.overlap + window.keep])
    (folder / "pieces").mkdir(exist_ok=True)
    return _writer(engine, folder / "pieces" / f"window_{window.index + 1:03d}.mp4", sound, quality)


def _writer(engine, path: Path, audio: np.ndarray | None, quality: str) -> Mp4Writer:
    crf, preset = QUALITY[quality]
    preset = "ultrafast" if engine.preview else preset  # the preview's noise pictures do not compress
    return Mp4Writer(path, audio, crf=crf, preset=preset, audio_later=audio is None)


def _window_progress(progress: ProgressFn, window: Window, count: int) -> ProgressFn:
    """Phases named per window: "window 3/12 base" step 5 of 8."""

    def report(phase: str, step: int, total: int) -> None:
        progress(f"window {window.index + 1}/{count} {phase}", step, total)

    return report
