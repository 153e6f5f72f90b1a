"""Timing: where the speech lies in the take (Silero VAD, the TorchScript model its wheel ships)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from magihuman.score.clip import SAMPLE_RATE

LATE_START_S = 1.0  # a line that starts after this much silence makes a talking clip feel stuck
CUT_END_S = 0.15  # speech still going this close to the end of the audio was cut off
_LOCK = threading.Lock()  # the VAD model keeps state between chunks: one clip at a time


@dataclass(frozen=True)
class SpeechSpan:
    """Speech segments as (start, end) seconds; `start`/`end` of the first and last, None without speech."""

    segments: tuple[tuple[float, float], ...]

    @property
    def start(self) -> float | None:
        return self.segments[0][0] if self.segments else None

    @property
    def end(self) -> float | None:
        return self.segments[-1][1] if self.segments else None

    def flags(self, audio_seconds: float) -> list[str]:
        if not self.segments:
            return ["no speech"]
        flags = []
        if self.start > LATE_START_S:
            flags.append(f"speech starts late ({self.start:.1f} s)")
        if audio_seconds - self.end < CUT_END_S:
            flags.append("speech cut off at the end")
        return flags


@lru_cache(maxsize=1)
def _load_vad(pid: int):
    """Keyed by pid: a forked process loads its own copy."""
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_span(audio: np.ndarray) -> SpeechSpan:
    """Speech segments of (N,) float32 16 kHz mono audio."""
    from silero_vad import get_speech_timestamps

    model = _load_vad(os.getpid())
    with _LOCK, torch.inference_mode():
        stamps = get_speech_timestamps(torch.from_numpy(audio), model, sampling_rate=SAMPLE_RATE)
    return SpeechSpan(tuple((s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps))
