"""Size, fidelity and encode time of the mp4 settings: `python -m tests.encode_quality [--seconds 2]`.

The frames are a slow pan and zoom over the example portrait (a real photograph: skin, hair, fabric), at 540p
and 1080p. Fidelity is the PSNR of the decoded luma against a lossless (qp 0) encode of the same frames, so the
number measures what the CRF/preset throws away, not the yuv420p conversion every setting shares.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from magihuman.config import FPS, RESOLUTIONS
from magihuman.media import QUALITY, read_video_frames, write_mp4

PORTRAIT = Path(__file__).resolve().parent.parent / "assets" / "portraits" / "eileen_collins.jpg"
SETTINGS = [(18, "veryfast"), (14, "veryfast"), (12, "faster"), (10, "veryfast"), (10, "fast"), (10, "medium")]


def frames(height: int, width: int, count: int) -> np.ndarray:
    """(count, H, W, 3) uint8: a 10 % zoom and a small pan over the portrait, one frame per step."""
    source = Image.open(PORTRAIT).convert("RGB")
    sw, sh = source.size
    out = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        t = i / max(count - 1, 1)
        crop_w = sw * (1 - 0.1 * t)
        crop_h = crop_w * height / width
        left, top = (sw - crop_w) * (0.3 + 0.4 * t), (sh - crop_h) * 0.4
        box = (left, top, left + crop_w, top + crop_h)
        out[i] = np.asarray(source.resize((width, height), Image.Resampling.LANCZOS, box=box))
    return out


def luma(path: Path) -> np.ndarray:
    return read_video_frames(path, pixel_format="gray").astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--resolutions", default="540p,1080p")
    args = parser.parse_args(argv)
    count = round(args.seconds * FPS) + 1
    named = {v: k for k, v in QUALITY.items()}
    print(
        "| resolution | CRF | preset | quality choice | MB per 10 s | PSNR (dB, luma vs lossless) | encode s per 10 s |"
    )
    print("|---|---:|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.resolutions.split(","):
            height, width = RESOLUTIONS[name].pixel_size()
            video = frames(height, width, count)
            reference = Path(folder) / f"{name}-lossless.mp4"
            write_mp4(reference, video, crf=0, preset="ultrafast")
            truth = luma(reference)
            for crf, preset in SETTINGS:
                path = Path(folder) / f"{name}-{crf}-{preset}.mp4"
                start = time.perf_counter()
                write_mp4(path, video, crf=crf, preset=preset)
                seconds = time.perf_counter() - start
                scale = 10 / args.seconds
                size, fidelity = path.stat().st_size * scale / 1e6, psnr(luma(path), truth)
                choice = named.get((crf, preset), "")
                print(
                    f"| {name} | {crf} | {preset} | {choice} | {size:.1f} | {fidelity:.2f} | {seconds * scale:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
