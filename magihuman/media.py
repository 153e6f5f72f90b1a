"""Media in and out: portrait and speech uploads, the audio rate change, MP4 muxing, all with PyAV in-process.

Every way an upload can be unusable is an `InputError` saying what to upload instead; sizes are checked from
headers before anything is decoded. The reference's conventions are kept: its crop and resize, audio at a
virtual 51.2 kHz resampled to 44.1 kHz by FFT, and audio that outlasts the video kept in the MP4.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import signal

from magihuman.config import AUDIO, FPS, MEDIA_LIMITS, MediaLimits
from magihuman.errors import InputError
from magihuman.forksafe import MediaJob

AUDIO_SAMPLES_PER_FRAME = AUDIO.samples_per_latent  # one audio latent per video frame
VIRTUAL_SAMPLE_RATE = AUDIO.virtual_sample_rate  # 51 200 Hz, the rate the model hears
OUTPUT_SAMPLE_RATE = AUDIO.output_sample_rate  # the audio VAE's training rate, and what the MP4 carries
# (x264 CRF, preset) per `quality` choice, measured by `python -m tests.encode_quality` (README, "Output quality").
# "reference" is the reference's imageio `quality=8`; "high" keeps its CRF 10 with a faster preset: within 1 dB at
# the same size and about half the encode time, so encoding stays behind the decoder at 1080p.
QUALITY = {"standard": (18, "veryfast"), "high": (10, "veryfast"), "reference": (10, "medium")}
# Formats Pillow decodes natively; the rest (EPS shells out to Ghostscript, PSD, ICO...) are refused.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_WHITE = (255, 255, 255, 255)


def _existing_file(path: str | Path, max_bytes: int, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the {what} file {path.name} was not found; upload it again")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"the {what} file {path.name} is empty (0 bytes); upload it again")
    if size > max_bytes:
        raise InputError(
            f"the {what} file {path.name} is {size / 2**20:.3g} MB, more than the {max_bytes / 2**20:.3g} MB "
            f"accepted; upload a smaller file"
        )
    return path


def load_portrait(path: str | Path, limits: MediaLimits = MEDIA_LIMITS) -> Image.Image:
    """An uploaded still image as an upright RGB picture (EXIF orientation applied, transparency on white)."""
    path = _existing_file(path, limits.max_image_bytes, "image")
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            _check_image_header(img, path.name, limits)
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as exc:
        # Pillow refuses on its own beyond twice its default limit, before we could read the size.
        raise InputError(
            f"{path.name} is far too large to open safely; upload an image of at most "
            f"{limits.max_image_pixels / 1e6:g} megapixels"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"{path.name} is not an image we can read; upload a PNG, JPEG or WebP photo") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(
            f"{path.name} is damaged or cut short ({exc}); save or download it again, or upload another photo"
        ) from exc


def _check_image_header(img: Image.Image, name: str, limits: MediaLimits) -> None:
    width, height = img.size
    if width * height > limits.max_image_pixels:
        raise InputError(
            f"{name} is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels), more than the "
            f"{limits.max_image_pixels / 1e6:g} megapixels accepted; upload a smaller copy "
            f"(2000 pixels across is plenty)"
        )
    if min(width, height) < limits.min_image_side:
        raise InputError(
            f"{name} is only {width}×{height} pixels; upload a portrait at least "
            f"{limits.min_image_side} pixels on its shorter side"
        )
    # A phone's multi-picture JPEG (MPO) is not an animation: its first picture is the photo.
    if getattr(img, "is_animated", False) and img.format != "MPO":
        raise InputError(
            f"{name} is animated (it has several frames); upload a single still image, e.g. a PNG or JPEG "
            f"of the frame you want"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I"):
        # Pillow's own conversion of 16-bit greyscale clips at 255 (a mostly white picture).
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257
        img = Image.fromarray(np.round(grey).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        # As a viewer shows it; dropping alpha would expose arbitrary colours.
        background = Image.new("RGBA", img.size, _WHITE)
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def crop_resize(img: Image.Image, height: int, width: int) -> Image.Image:
    """The reference's `resizecrop`: centre-crop to the aspect keeping one full side (float box, rounded by
    Pillow half to even: 1280×720 → 448×256 keeps x ∈ [10, 1270)), then LANCZOS-resize."""
    w, h = img.size
    if (w, h) == (width, height):
        return img
    if h / w > height / width:
        new_w, new_h = w, int(w * height / width)
    else:
        new_w, new_h = int(h * width / height), h
    box = ((w - new_w) / 2, (h - new_h) / 2, (w + new_w) / 2, (h + new_h) / 2)
    return img.crop(box).resize((width, height), Image.Resampling.LANCZOS)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB → (1, 3, 1, H, W) float32 in [−1, 1], x/255·2 − 1 in float32 like diffusers (bit for bit)."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r} (load it with load_portrait)")
    unit = np.asarray(img).astype(np.float32) / 255.0
    chw = torch.from_numpy(unit).permute(2, 0, 1)
    return (2.0 * chw - 1.0)[None, :, None].contiguous()


def load_audio(
    path: str | Path,
    seconds: float | None = None,
    *,
    sample_rate: int = VIRTUAL_SAMPLE_RATE,
    limits: MediaLimits = MEDIA_LIMITS,
) -> np.ndarray:
    """The first `seconds` of the first audio track as (N,) float32 mono, int16 / 32768 like the reference's
    whisper loader. Decoding stops there, so a long recording costs no more than a short one."""
    seconds = limits.max_audio_seconds if seconds is None else seconds
    if not 0 < seconds <= limits.max_audio_seconds:
        raise ValueError(f"seconds must be in (0, {limits.max_audio_seconds}], got {seconds}")
    path = _existing_file(path, limits.max_audio_bytes, "audio")
    wanted = round(seconds * sample_rate)
    wave = _decode_mono_s16(path, sample_rate, wanted)[:wanted].astype(np.float32) / 32768
    _check_usable(wave, path.name, sample_rate, limits)
    return wave


def usable_audio_seconds(path: str | Path, limits: MediaLimits = MEDIA_LIMITS) -> float:
    """Seconds of the upload a clip can follow: whole video frames (one per 2048 virtual samples)."""
    wave = load_audio(path, limits=limits)
    return len(wave) // AUDIO_SAMPLES_PER_FRAME / FPS


def _decode_mono_s16(path: Path, sample_rate: int, wanted: int) -> np.ndarray:
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise InputError(
            f"{path.name} is not an audio file we can read; upload a WAV, MP3, M4A, OGG or FLAC recording"
        ) from exc
    with MediaJob(f"decoding {path.name}"), container:
        if not container.streams.audio:
            raise InputError(
                f"{path.name} has no audio track; upload a recording of the speech (WAV, MP3, M4A...) "
                f"or a video with sound"
            )
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        chunks, count = [], 0
        try:
            for chunk in _resampled(container, container.streams.audio[0], resampler):
                chunks.append(chunk)
                count += len(chunk)
                if count >= wanted:
                    break
        except (av.FFmpegError, ValueError) as exc:  # ValueError: the track changes format mid-stream
            raise InputError(
                f"{path.name} is damaged: decoding failed after {count / sample_rate:.1f} s ({exc}); "
                f"export it again or upload another file"
            ) from exc
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def _resampled(
    container: av.container.InputContainer, stream: av.AudioStream, resampler: av.AudioResampler
) -> Iterator[np.ndarray]:
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            yield out.to_ndarray()[0]  # packed mono: (1, n)
    for out in resampler.resample(None):
        yield out.to_ndarray()[0]


def _check_usable(wave: np.ndarray, name: str, sample_rate: int, limits: MediaLimits) -> None:
    min_samples = math.ceil(sample_rate / FPS)  # one audio latent, i.e. one video frame
    if len(wave) < min_samples:
        raise InputError(
            f"{name} holds only {1000 * len(wave) / sample_rate:.0f} ms of audio; a clip needs at least "
            f"{1000 / FPS:.0f} ms (one video frame): upload a longer recording"
        )
    rms = math.sqrt(float(np.mean(np.square(wave, dtype=np.float64))))
    if rms < limits.silence_rms:
        raise InputError(
            f"the audio in {name} is silent (its level stays below {20 * math.log10(limits.silence_rms):.0f} dBFS "
            f"over the first {len(wave) / sample_rate:.1f} s); upload a recording where the speech is audible"
        )


def virtual_to_44k(wave: np.ndarray) -> np.ndarray:
    """(N, C) at the virtual 51.2 kHz → (⌊N·441/512⌋, C) float32 at 44.1 kHz by FFT, like the reference
    (not a polyphase filter), unclamped as upstream writes it."""
    if wave.ndim != 2:
        raise ValueError(f"expected (samples, channels) audio, got shape {wave.shape}")
    length = wave.shape[0] * OUTPUT_SAMPLE_RATE // VIRTUAL_SAMPLE_RATE
    return signal.resample(wave, length, axis=0).astype(np.float32, copy=False)


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    audio: np.ndarray | None = None,
    *,
    fps: int = FPS,
    sample_rate: int = OUTPUT_SAMPLE_RATE,
    crf: int = QUALITY["reference"][0],
    preset: str = QUALITY["reference"][1],
) -> Path:
    """(F, H, W, 3) uint8 frames and optional (N, 2) audio → an H.264 + AAC MP4 with faststart (a browser plays
    it before the download ends). Audio longer than the video is kept, as in the reference."""
    with Mp4Writer(path, audio, fps=fps, sample_rate=sample_rate, crf=crf, preset=preset) as writer:
        writer.write(frames)
    return writer.path


class Mp4Writer:
    """`write_mp4` in pieces, so encoding overlaps decoding; removes the partial file on an exception.
    `audio_later`: the audio comes by `add_audio` after the frames (a long take decodes its speech at the end)."""

    def __init__(
        self,
        path: str | Path,
        audio: np.ndarray | None = None,
        *,
        fps: int = FPS,
        sample_rate: int = OUTPUT_SAMPLE_RATE,
        crf: int = QUALITY["reference"][0],
        preset: str = QUALITY["reference"][1],
        audio_later: bool = False,
    ) -> None:
        self.path = Path(path)
        self.audio = None if audio is None else _checked_audio(audio)
        self.audio_later = audio_later and audio is None
        self.fps, self.sample_rate, self.options = fps, sample_rate, {"crf": str(crf), "preset": preset}
        self.frames_written = 0
        self._audio_sent = 0
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._sound: av.AudioStream | None = None
        self._to_yuv: VideoReformatter | None = None
        self._job = MediaJob(f"encoding {self.path.name}")

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: np.ndarray) -> None:
        _check_frames(frames)
        if self._container is None:
            self._open(*frames.shape[1:3])
        elif (frames.shape[1], frames.shape[2]) != (self._video.height, self._video.width):
            raise ValueError(
                f"frames of {frames.shape[2]}×{frames.shape[1]} in a {self._video.width}×{self._video.height} video"
            )
        for pixels in frames:
            # Converted here on one thread: left to the encoder, the scaler would get a slice-thread pool
            # that lives as long as PyAV's stream/container cycle (magihuman.forksafe).
            rgb = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame = self._to_yuv.reformat(rgb, format="yuv420p", threads=1)
            frame.pts = self.frames_written
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1
            # Keep the audio level with the video so that the muxer can interleave the two closely.
            self._send_audio(round(self.frames_written * self.sample_rate / self.fps))

    def add_audio(self, audio: np.ndarray) -> None:
        if not self.audio_later or self.audio is not None:
            raise ValueError("add_audio is for a writer made with audio_later, once")
        self.audio = _checked_audio(audio)

    def close(self) -> Path:
        if self._container is None:
            raise ValueError("an MP4 needs at least one frame")
        if self._sound is not None and self.audio is None:
            self.abort()
            raise ValueError("the writer was made with audio_later and no audio was added")
        try:
            self._container.mux(self._video.encode(None))
            if self._sound is not None:
                self._send_audio(len(self.audio))
                self._container.mux(self._sound.encode(None))
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._release()
        return self.path

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is removed anyway; the original error is what matters
                pass
        self.path.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        """Let go of the FFmpeg objects (the encoders' threads end when the collector frees the container) and
        end the media job, so that a fork no longer waits for this writer."""
        self._container = self._video = self._sound = self._to_yuv = None
        self._job.end()

    def _open(self, height: int, width: int) -> None:
        self._job.start()
        try:
            container = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "faststart"})
        except BaseException:
            self._job.end()
            raise
        self._container = container
        self._to_yuv = VideoReformatter()
        self._video = container.add_stream("libx264", rate=self.fps, options=self.options)
        self._video.height, self._video.width = height, width
        self._video.pix_fmt = "yuv420p"
        if self.audio is not None or self.audio_later:
            self._sound = container.add_stream("aac", rate=self.sample_rate, layout="stereo")

    def _send_audio(self, until: int) -> None:
        if self._sound is not None and self.audio is not None:
            until = min(len(self.audio), until)
            _mux_audio(self._container, self._sound, self.audio, self._audio_sent, until)
            self._audio_sent = max(self._audio_sent, until)


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected (F ≥ 1, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 in yuv420p needs an even width and height, got {width}×{height}")


def _checked_audio(audio: np.ndarray) -> np.ndarray:
    if audio.ndim != 2 or audio.shape[1] != 2 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"expected (N, 2) float stereo audio, got {audio.dtype} {audio.shape}")
    return np.asarray(audio, dtype=np.float32)


def _mux_audio(
    container: av.container.OutputContainer, stream: av.AudioStream, audio: np.ndarray, start: int, stop: int
) -> None:
    if stop <= start:
        return
    planar = np.ascontiguousarray(audio[start:stop].T)  # (2, n): AAC's native planar float layout
    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="stereo")
    frame.sample_rate = stream.rate
    frame.pts = start
    frame.time_base = Fraction(1, stream.rate)
    container.mux(stream.encode(frame))


def read_video_frames(path: str | Path, max_frames: int | None = None, pixel_format: str = "rgb24") -> np.ndarray:
    """(F, H, W, 3) uint8 frames of a clip ((F, H, W) for "gray"), decoded on this thread with a scaler freed
    before returning: `to_ndarray(format=...)` would cache a threaded one for the thread's life (forksafe)."""
    path = Path(path)
    scaler = VideoReformatter()
    frames = []
    with MediaJob(f"decoding {path.name}"), av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1  # no decoder thread pool
        for frame in container.decode(stream):
            frames.append(scaler.reformat(frame, format=pixel_format, threads=1).to_ndarray())
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise InputError(f"{path.name} has no video frames")
    return np.stack(frames)
