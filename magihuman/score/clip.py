"""Reading a take for scoring: grey frames for the mouth and 16 kHz mono audio for the ear, in one pass.

No codec outlives the call (a forked codec context is unusable, and the studio forks). Frames are downscaled
to `FRAME_WIDTH` while decoding: the face detector needs no more, and a 60 s take costs ~6 MB, not ~500 MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from magihuman.errors import InputError

SAMPLE_RATE = 16_000  # what Whisper, Silero VAD and DNSMOS all expect
FRAME_WIDTH = 320
MAX_TAKE_SECONDS = 60.0  # a take longer than this is refused before decoding: scoring it would stall the worker
MAX_TAKE_BYTES = 2 * 2**30


@dataclass(frozen=True)
class TakeMedia:
    """A decoded take: (F, H, W) uint8 grey frames at `fps`, (N,) float32 mono audio at `SAMPLE_RATE`."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray

    @property
    def video_seconds(self) -> float:
        return len(self.frames) / self.fps

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def read_take(path: str | Path, max_seconds: float = MAX_TAKE_SECONDS) -> TakeMedia:
    """Decode the first video and audio tracks of `path`; `InputError` for a file that cannot be scored."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the take {path.name} was not found")
    size = path.stat().st_size
    if size == 0 or size > MAX_TAKE_BYTES:
        raise InputError(f"the take {path.name} is {size} bytes; a take to score is a video between 1 byte and 2 GB")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise InputError(f"{path.name} is not a video file we can read; score an MP4, WebM or MOV take") from exc
    with container:
        if not container.streams.video:
            raise InputError(f"{path.name} has no video track; score a video take (MP4, WebM, MOV)")
        if not container.streams.audio:
            raise InputError(f"{path.name} has no audio track: there is no speech to score")
        seconds = container.duration / av.time_base if container.duration else None
        if seconds is not None and seconds > max_seconds:
            raise InputError(
                f"{path.name} lasts {seconds:.1f} s, more than the {max_seconds:.0f} s a take may have for scoring"
            )
        try:
            frames, fps, audio = _decode(container, max_seconds)
        except (av.FFmpegError, ValueError) as exc:
            raise InputError(f"{path.name} is damaged: decoding failed ({exc})") from exc
    if len(frames) == 0:
        raise InputError(f"{path.name} holds no video frames")
    if len(frames) > max_seconds * fps + 1:
        raise InputError(f"{path.name} is longer than the {max_seconds:.0f} s a take may have for scoring")
    return TakeMedia(frames, fps, audio)


def _decode(container: av.container.InputContainer, max_seconds: float) -> tuple[np.ndarray, float, np.ndarray]:
    """One pass over the packets of both tracks: (F, H, W) grey frames, the frame rate, (N,) float32 audio."""
    video, sound = container.streams.video[0], container.streams.audio[0]
    fps = float(video.average_rate or video.guessed_rate or 25)
    limit = int(max_seconds * fps) + 2  # one past the cap, so that a longer file is detected and refused
    width = min(FRAME_WIDTH, video.codec_context.width)
    height = max(2, round(video.codec_context.height * width / video.codec_context.width / 2) * 2)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    wanted = int(max_seconds * SAMPLE_RATE)
    frames, chunks, samples = [], [], 0
    for packet in container.demux(video, sound):
        if len(frames) >= limit and samples >= wanted:
            break
        if packet.stream is video and len(frames) < limit:
            frames += [f.reformat(width=width, height=height, format="gray").to_ndarray() for f in packet.decode()]
        elif packet.stream is sound and samples < wanted:
            for frame in packet.decode():  # a flush packet (no data) decodes the codec's tail
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray()[0])
                    samples += chunks[-1].size
    chunks += [out.to_ndarray()[0] for out in resampler.resample(None)]
    grey = np.stack(frames) if frames else np.zeros((0, height, width), np.uint8)
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return grey, fps, wave[:wanted].astype(np.float32) / 32768
