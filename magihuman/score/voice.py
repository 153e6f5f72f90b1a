"""Voice: how alike two voices sound, as the cosine similarity of speaker embeddings (a GE2E speaker encoder).

Resemblyzer's `pretrained.pt` with our own network and front end (power mel, not log), built to the encoder's
published parameters (README: Voice similarity). Embeddings are non-negative, so similarities lie in 0-1 and the
scale depends on the recordings: compare takes against one reference, not one number in isolation.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from magihuman.score.clip import SAMPLE_RATE

WINDOW = 400  # 25 ms at 16 kHz, also the FFT size
HOP = 160  # 10 ms
MEL_BANDS = 40
PARTIAL_FRAMES = 160  # 1.6 s per embedded window
PARTIALS_PER_SECOND = 1.3
MIN_LAST_COVERAGE = 0.75
TARGET_DBFS = -30.0
HIDDEN = 256
LAYERS = 3
SPEECH_MARGIN_S = 0.1  # kept around each VAD segment so that word edges are not clipped
WEIGHTS_FILE = "pretrained.pt"
_LOCK = threading.Lock()


class SpeakerEncoder(nn.Module):
    """(B, 160, 40) power-mel windows -> (B, 256) L2-normalised, non-negative speaker embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(MEL_BANDS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # hidden: (LAYERS, B, HIDDEN)
        embedding = torch.relu(self.linear(hidden[-1]))
        return embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-8)


def weights_path() -> Path | None:
    """The wheel's encoder weights, found without importing the package (its __init__ imports librosa)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _encoder(pid: int) -> SpeakerEncoder:
    """Keyed by pid: a forked process loads its own copy. A changed wheel's weights are refused, not partly loaded."""
    path = weights_path()
    if path is None:
        raise RuntimeError(f"resemblyzer's {WEIGHTS_FILE} was not found (pip install --no-deps resemblyzer)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in checkpoint["model_state"].items() if k.startswith(("lstm.", "linear."))}
    encoder = SpeakerEncoder()
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        raise RuntimeError(f"{path} is not the speaker encoder this code expects: {sorted(set(found) ^ set(expected))}")
    encoder.load_state_dict(state)
    return encoder.eval()


@lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """(40, 201) triangular filters on the FFT bins, evenly spaced on the Slaney mel scale (linear below 1 kHz,
    logarithmic above) from 0 Hz to Nyquist, each scaled to unit area (2 / its width in Hz)."""
    bins = np.linspace(0, SAMPLE_RATE / 2, WINDOW // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), MEL_BANDS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return (triangles * 2.0 / (upper - lower)).astype(np.float32)


_LINEAR_HZ_PER_MEL = 200.0 / 3  # below 1 kHz
_LOG_START_HZ, _LOG_START_MEL, _LOG_STEP = 1000.0, 15.0, np.log(6.4) / 27


def _hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _LINEAR_HZ_PER_MEL
    logarithmic = _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_START_HZ, logarithmic, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _LINEAR_HZ_PER_MEL
    logarithmic = _LOG_START_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_START_MEL) - _LOG_START_MEL))
    return np.where(mel >= _LOG_START_MEL, logarithmic, linear)


def mel_frames(audio: np.ndarray) -> np.ndarray:
    """(T, 40) power mel frames of (N,) float32 16 kHz audio, T = N // 160 + 1 (centred, zero-padded)."""
    spectrum = torch.stft(
        torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
        n_fft=WINDOW,
        hop_length=HOP,
        window=torch.hann_window(WINDOW),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # (201, T)
    power = spectrum.abs().square().numpy()
    return (_mel_filters() @ power).T.astype(np.float32)


def speech_only(audio: np.ndarray) -> np.ndarray:
    """The audio's speech segments joined (else all of it): pauses would fill windows with silence, no voice."""
    if importlib.util.find_spec("silero_vad") is None:
        return audio
    from magihuman.score.timing import speech_span

    segments = speech_span(audio).segments
    if not segments:
        return audio
    margin = int(SPEECH_MARGIN_S * SAMPLE_RATE)
    kept = [audio[max(0, int(a * SAMPLE_RATE) - margin) : int(b * SAMPLE_RATE) + margin] for a, b in segments]
    return np.concatenate(kept)


def _louder(audio: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    gain_db = TARGET_DBFS - 20 * np.log10(max(rms, 1e-9))
    return audio * np.float32(10 ** (gain_db / 20)) if gain_db > 0 else audio


def _window_starts(samples: int) -> tuple[list[int], int]:
    """Start frames of the 160-frame windows covering `samples`, and the (zero-padded) samples they need."""
    frames = samples // HOP + 1
    step = round(SAMPLE_RATE / PARTIALS_PER_SECOND / HOP)  # 77 frames
    starts = list(range(0, max(frames - PARTIAL_FRAMES + step, 1), step))
    if len(starts) > 1:
        last = starts[-1] * HOP
        if (samples - last) / (PARTIAL_FRAMES * HOP) < MIN_LAST_COVERAGE:
            starts.pop()
    return starts, (starts[-1] + PARTIAL_FRAMES) * HOP


def voice_embedding(audio: np.ndarray) -> np.ndarray:
    """(256,) unit-length speaker embedding of (N,) float32 16 kHz mono speech."""
    if not np.any(audio):
        raise ValueError("the recording is silent: there is no voice to compare")
    speech = _louder(speech_only(audio.astype(np.float32)))
    starts, needed = _window_starts(len(speech))
    padded = np.zeros(max(needed, len(speech)), np.float32)
    padded[: len(speech)] = speech
    mel = mel_frames(padded)
    windows = np.stack([mel[s : s + PARTIAL_FRAMES] for s in starts])  # (W, 160, 40)
    encoder = _encoder(os.getpid())
    with _LOCK, torch.inference_mode():
        partial = encoder(torch.from_numpy(windows)).numpy()
    mean = partial.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-8)


def voice_similarity(audio: np.ndarray, reference: np.ndarray) -> float:
    """Cosine similarity (0-1) of the voices in two 16 kHz mono recordings: 1 is the same embedding."""
    return float(np.dot(voice_embedding(audio), voice_embedding(reference)))
