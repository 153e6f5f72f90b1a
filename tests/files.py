"""Real media files for tests: tones in any container PyAV writes, noise portraits."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image


def tone(seconds: float, rate: int, amplitude: float = 0.3, frequency: float = 440.0) -> np.ndarray:
    """(2, n) float32 stereo sine."""
    t = np.arange(round(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return np.stack([wave, wave])


def write_audio(path: Path, planar: np.ndarray, rate: int, codec: str) -> Path:
    """Encode (2, n) float32 with PyAV; the container follows the file name."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def wav(path: Path, seconds: float, amplitude: float = 0.3, rate: int = 44_100) -> Path:
    return write_audio(path, tone(seconds, rate, amplitude), rate, "pcm_s16le")


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def portrait(path: Path, width: int = 320, height: int = 400) -> Path:
    noise_image(width, height).save(path)
    return path
