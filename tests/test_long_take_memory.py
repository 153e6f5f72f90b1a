"""A long take's resident memory stays flat after its first windows: the mp4 is written window by window and
each window's carried state goes to disk (magihuman.take_state), so nothing grows with the take's length.

Lean by design: the tiny engine makes a 256p window in about 30-70 s on this CPU, so a 120-s take (30 windows)
would take half an hour. The take here runs the engine's own window loop, writer and state store at 256p with
the stand-in networks of tests/long_take_stub.py (a DiT without a call log), and is a 30-s recording cut into
25-frame windows: 32 windows, more joins than a 120-s take has. Kept in memory, its frames would be ~260 MB,
its windows' latents and seam frames ~60 MB; the bound below is well under either.
"""

from __future__ import annotations

import torch

from magihuman.config import TINY_DIT
from magihuman.engine import Engine, GenerationRequest, Models
from magihuman.long_take import TakeSettings
from tests.files import tone, write_audio
from tests.long_take_stub import PixelDecoder, PooledImageEncoder, ProjectingAudioVAE
from tests.probe import probe_media
from tests.test_hardening import _live_rss_mb

GROWTH_BOUND_MB = 40


class MixDiT:
    """Velocity = a fixed mix of the inputs (the stub's SpyDiT without its log of every call)."""

    config = TINY_DIT

    def __call__(self, video, audio, text):
        return 0.3 * video + 0.01 * text.mean(), 0.2 * audio - 0.05


def test_resident_memory_of_a_long_take_stays_flat(tiny_engine, tmp_path) -> None:
    m = tiny_engine.models
    models = Models(
        m.text, PooledImageEncoder(), ProjectingAudioVAE(m.audio_vae), PixelDecoder(), {"distill": MixDiT()}
    )
    engine = Engine(models, torch.device("cpu"), preview=True, output_root=tmp_path / "out")
    engine.take_settings = TakeSettings(window_frames=25)
    speech = write_audio(tmp_path / "talk.wav", tone(30, 44_100), 44_100, "pcm_s16le")
    after_window: list[float] = []

    def on_progress(phase: str, step: int, total: int) -> None:
        if phase.startswith("window ") and phase.endswith(" decode") and step == total:
            after_window.append(_live_rss_mb())

    result = engine.generate(GenerationRequest(prompt="A man talks.", audio=speech, seed=1), on_progress=on_progress)
    windows = len(result.take.plan.windows)
    assert windows >= 30 and len(after_window) == windows
    assert probe_media(result.video_path).video.frames == 30 * 25
    if after_window[0] is None:  # no /proc or glibc: the take itself was checked above
        return
    settled = after_window[5]
    growth = max(after_window[5:]) - settled
    assert growth < GROWTH_BOUND_MB, f"resident memory grew {growth:.0f} MB over {windows - 6} windows: {after_window}"
