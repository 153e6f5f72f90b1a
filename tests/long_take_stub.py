"""A stub engine for long-take tests: the tiny engine's text encoder and audio decoder, with stand-ins for the
networks that cost seconds per window on a CPU (see tests/test_long_take.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from magihuman.config import AUDIO, TINY_DIT
from magihuman.engine import Engine, Models


class SpyDiT:
    """Velocity = a fixed mix of the inputs; records what every call saw."""

    config = TINY_DIT

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, video, audio, text):
        self.calls.append((video.clone(), audio.clone()))
        return 0.3 * video + 0.01 * text.mean(), 0.2 * audio - 0.05


class PixelDecoder:
    """Latent channels 0-2 as pixels: frame 0 from latent 0, then 4 frames per latent (3 pieces)."""

    def decode_windows(self, z):
        pixels = torch.tanh(z[:, :3].float()).repeat_interleave(16, 3).repeat_interleave(16, 4)
        frames = torch.cat([pixels[:, :, :1], pixels[:, :, 1:].repeat_interleave(4, 2)], dim=2)
        pieces = torch.tensor_split(frames, 3, dim=2)
        for i, piece in enumerate(pieces, start=1):
            yield i, len(pieces), piece


class PooledImageEncoder:
    def encode_image(self, pixels):
        pooled = torch.nn.functional.avg_pool2d(pixels[:, :, 0].float(), 16)  # (1, 3, h, w)
        return pooled.repeat(1, 16, 1, 1)[:, :, None]  # (1, 48, 1, h, w)


class ProjectingAudioVAE:
    """Encodes each 2048-sample frame by a fixed projection plus noise from the caller's generator, like the
    real (sampled) encoder; decodes with the real tiny decoder."""

    def __init__(self, real) -> None:
        self.real, self.device = real, torch.device("cpu")
        self.projection = torch.randn(
            AUDIO.samples_per_latent, AUDIO.latent_channels, generator=torch.Generator().manual_seed(0)
        )

    def encode(self, wave, generator=None):
        wave = torch.as_tensor(wave, dtype=torch.float32)
        frames = wave[: len(wave) // AUDIO.samples_per_latent * AUDIO.samples_per_latent].view(
            1, -1, AUDIO.samples_per_latent
        )
        latent = frames @ self.projection
        return latent if generator is None else latent + 0.01 * torch.randn(latent.shape, generator=generator)

    def decode(self, latent):
        return self.real.decode(latent)


@dataclass
class Stub:
    engine: Engine
    dit: SpyDiT


def make_stub(tiny_engine, tmp_path) -> Stub:
    m = tiny_engine.models
    dit = SpyDiT()
    dits = {"distill": dit, "sr-540p": dit}
    models = Models(m.text, PooledImageEncoder(), ProjectingAudioVAE(m.audio_vae), PixelDecoder(), dits)
    engine = Engine(models, torch.device("cpu"), preview=True, output_root=tmp_path / "out")
    return Stub(engine, dit)
