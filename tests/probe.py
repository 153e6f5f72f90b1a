"""Reading a media file back: codec, size, frames, audio and faststart of what the engine wrote (tests only)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av


@dataclass(frozen=True)
class VideoInfo:
    codec: str  # FFmpeg decoder name, e.g. "h264"
    pixel_format: str  # e.g. "yuv420p"
    width: int
    height: int
    fps: Fraction  # average frame rate
    frames: int  # video packets in the file: one per frame for H.264
    seconds: float | None  # stream duration, when the container records it


@dataclass(frozen=True)
class AudioInfo:
    codec: str  # e.g. "aac"
    sample_rate: int
    channels: int
    seconds: float | None  # stream duration (for AAC in MP4, priming and padding excluded)


@dataclass(frozen=True)
class MediaInfo:
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    seconds: float | None  # container duration
    video: VideoInfo | None  # first video stream, if any
    audio: AudioInfo | None  # first audio stream, if any
    faststart: bool | None  # MP4/MOV only: whether `moov` precedes `mdat`


def probe_media(path: str | Path) -> MediaInfo:
    """Read a media file's streams back with PyAV. Counts video packets by demuxing (no decoding).

    Meant for files the app wrote or is about to serve; one FFmpeg cannot open raises `av.FFmpegError`.
    """
    path = Path(path)
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        video_packets = sum(packet.size > 0 for packet in container.demux(video)) if video is not None else 0
        seconds = container.duration / av.time_base if container.duration is not None else None
        is_mp4 = "mp4" in container.format.name or "mov" in container.format.name
        return MediaInfo(
            container=container.format.name,
            seconds=seconds,
            video=_video_info(video, video_packets) if video is not None else None,
            audio=_audio_info(audio) if audio is not None else None,
            faststart=_moov_before_mdat(path) if is_mp4 else None,
        )


def _stream_seconds(stream: av.stream.Stream) -> float | None:
    return float(stream.duration * stream.time_base) if stream.duration is not None else None


def _video_info(stream: av.VideoStream, packets: int) -> VideoInfo:
    context = stream.codec_context
    return VideoInfo(
        codec=context.name,
        pixel_format=context.pix_fmt,
        width=context.width,
        height=context.height,
        fps=stream.average_rate,
        frames=packets,
        seconds=_stream_seconds(stream),
    )


def _audio_info(stream: av.AudioStream) -> AudioInfo:
    context = stream.codec_context
    return AudioInfo(
        codec=context.name,
        sample_rate=context.sample_rate,
        channels=context.channels,
        seconds=_stream_seconds(stream),
    )


def _moov_before_mdat(path: Path) -> bool | None:
    """Walk the top-level MP4 boxes until `moov` or `mdat` shows up; None if neither does."""
    for kind in _top_level_boxes(path):
        if kind in (b"moov", b"mdat"):
            return kind == b"moov"
    return None


def _top_level_boxes(path: Path) -> Iterator[bytes]:
    """Yield the four-letter types of the top-level boxes, reading only their headers."""
    with path.open("rb") as file:
        while len(header := file.read(8)) == 8:
            size, kind = struct.unpack(">I4s", header)
            yield kind
            header_size = 8
            if size == 1:  # a 64-bit size follows the type
                size, header_size = struct.unpack(">Q", file.read(8))[0], 16
            if size < header_size:  # 0: the box runs to the end of the file; less: not a valid box
                return
            file.seek(size - header_size, 1)
