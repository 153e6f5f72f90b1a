"""The two diffusers encoder-decoders around the DiT: the Wan2.2 VAE (the portrait into frame 0 of the latent)
and the Stable Audio Open VAE (the user's speech in, the generated audio out, at a virtual 51.2 kHz so that one
2048-sample latent lasts one video frame). Both match the reference modules (Oobleck bit for bit).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from diffusers import AutoencoderKLWan, AutoencoderOobleck, ModelMixin

from magihuman.config import AUDIO, VAE_STRIDE_THW
from magihuman.errors import CheckpointError
from magihuman.loading import ModelWrapper, check_keys
from magihuman.model.turbo_vae import LATENT_MEAN, LATENT_STD
from magihuman.weights import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS, STABLE_AUDIO_REPO, WAN_VAE_REPO

# --- 1. Video VAE ----------------------------------------------------------------------------------------

# `vae/config.json` of Wan2.2-TI2V-5B-Diffusers. Its obsolete `clip_output` key is left out:
# current diffusers ignores it and always clamps the decoded pixels.
WAN22_VAE_CONFIG = MappingProxyType(
    dict(
        base_dim=160,
        decoder_base_dim=256,
        z_dim=48,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        is_residual=True,
        in_channels=12,  # 3 colours × 2×2 patch
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        latents_mean=list(LATENT_MEAN),
        latents_std=list(LATENT_STD),
    )
)

# The real strides (16 spatial, 4 temporal) and 48 latent channels with tiny widths.
TINY_WAN_VAE_CONFIG = MappingProxyType({**WAN22_VAE_CONFIG, "base_dim": 8, "decoder_base_dim": 16})


class VideoVAE(ModelWrapper):
    """Wan2.2 VAE with the pipeline's latent normalisation, (μ − mean)·(1/std), in fp32 whatever the model dtype.
    Tiling stays off: the reference never tiles, and tiles change the pixels."""

    def __init__(self, model: AutoencoderKLWan) -> None:
        self.model = model.eval().requires_grad_(False)
        self.model.disable_tiling()
        config = model.config
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(1, 3, 1, H, W) in [−1, 1], H and W multiples of 16 -> (1, 48, 1, H/16, W/16) fp32 normalised latent."""
        _, stride_h, stride_w = VAE_STRIDE_THW
        shape = tuple(pixels.shape)
        if len(shape) != 5 or shape[:3] != (1, 3, 1) or shape[3] % stride_h or shape[4] % stride_w:
            raise ValueError(f"expected one RGB frame (1, 3, 1, H, W) with H, W multiples of 16, got {shape}")
        mu = self.model.encode(pixels.to(self.device, self.dtype)).latent_dist.mode()  # (1, 48, 1, h, w)
        return (mu.float() - self._mean.to(mu.device)) * self._inv_std.to(mu.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(1, 48, T, h, w) normalised latent -> (1, 3, 4(T−1)+1, 16h, 16w) fp32 pixels in [−1, 1]."""
        latent = latent.to(self.device, torch.float32)
        # Inverse of encode_image; dividing by the fp32 reciprocal, as the reference does.
        raw = latent / self._inv_std.to(latent.device) + self._mean.to(latent.device)
        return self.model.decode(raw.to(self.dtype)).sample.float()


def load_video_vae(folder: str | Path, device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> VideoVAE:
    """The diffusers-format Wan2.2 VAE from `folder` (or its `vae/`); `CheckpointError` if it does not fit."""
    folder = _model_folder(folder, f"download `vae/` of {WAN_VAE_REPO.repo_id}")
    model = _load_strict(AutoencoderKLWan, folder, dtype)
    config = model.config
    if config.z_dim != 48 or len(config.latents_mean) != 48 or len(config.latents_std) != 48:
        raise CheckpointError(f"{folder / DIFFUSERS_CONFIG}: not a Wan2.2 VAE (z_dim {config.z_dim}, expected 48)")
    if (config.scale_factor_temporal, config.scale_factor_spatial) != VAE_STRIDE_THW[:2]:
        raise CheckpointError(f"{folder / DIFFUSERS_CONFIG}: strides differ from the Wan2.2 VAE's 4× time, 16× space")
    return VideoVAE(model.to(device))


# --- 2. Audio VAE ----------------------------------------------------------------------------------------

# `vae/config.json` of stable-audio-open-1.0. Its `sampling_rate` plays no role: see AUDIO.
SAO_VAE_CONFIG = MappingProxyType(
    dict(
        encoder_hidden_size=128,
        downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 2, 4, 8, 16],
        decoder_channels=128,
        decoder_input_channels=64,
        audio_channels=2,
        sampling_rate=44100,
    )
)

# The real 2048× downsampling; the encoder's output width stays 128 (64 means and 64 scales).
TINY_SAO_VAE_CONFIG = MappingProxyType({**SAO_VAE_CONFIG, "channel_multiples": [1, 1, 1, 1, 1], "decoder_channels": 8})


class AudioVAE(ModelWrapper):
    """Stable Audio Open VAE, always fp32 (the reference never casts it). Encoding is sampled, as in the
    reference, from the caller's generator so that a seed reproduces the latent."""

    def __init__(self, model: AutoencoderOobleck) -> None:
        self.model = model.eval().requires_grad_(False)
        self.model.disable_tiling()

    @torch.no_grad()
    def encode(self, wave: np.ndarray | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N,) mono float32 at 51.2 kHz -> (1, N // 2048, 64) fp32 latent, in one pass (the reference's windows
        start past 29 s)."""
        wave = torch.as_tensor(wave, dtype=torch.float32)
        if wave.ndim != 1 or wave.shape[0] < AUDIO.samples_per_latent:
            raise ValueError(f"expected mono audio of at least 2048 samples, got shape {tuple(wave.shape)}")
        stereo = wave.to(self.device).expand(1, 2, -1)  # (1, 2, N): the VAE was trained on stereo
        latent = self.model.encode(stereo).latent_dist.sample(generator)  # (1, 64, A)
        return latent.transpose(1, 2).float()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(1, F, 64) latent -> (F·2048, 2) fp32 waveform on the CPU, to be read at 51.2 kHz."""
        latent = latent.to(self.device, torch.float32).transpose(1, 2)  # (1, 64, F)
        wave = self.model.decode(latent).sample  # (1, 2, F·2048)
        return wave[0].T.contiguous().cpu()


def load_audio_vae(folder: str | Path, device: torch.device | str) -> AudioVAE:
    """The diffusers-format Oobleck VAE (fp32) from `folder` (or its `vae/`); `CheckpointError` if it does not fit."""
    folder = _model_folder(
        folder, f"download `vae/` of {STABLE_AUDIO_REPO.repo_id} (accept its licence on the model page first)"
    )
    model = _load_strict(AutoencoderOobleck, folder, torch.float32)
    config = model.config
    if int(np.prod(config.downsampling_ratios)) != AUDIO.samples_per_latent:
        raise CheckpointError(f"{folder / DIFFUSERS_CONFIG}: downsampling {config.downsampling_ratios}, expected 2048×")
    if config.decoder_input_channels != AUDIO.latent_channels or config.audio_channels != 2:
        raise CheckpointError(f"{folder / DIFFUSERS_CONFIG}: expected 64 latent channels and stereo audio")
    return AudioVAE(model.to(device))


# --- 3. Loading helpers ----------------------------------------------------------------------------------


def _model_folder(folder: str | Path, get_it: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"VAE folder {folder} does not exist: {get_it} into it")
    if not (folder / DIFFUSERS_CONFIG).exists() and (folder / "vae" / DIFFUSERS_CONFIG).exists():
        folder = folder / "vae"
    for name in (DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS):
        if not (folder / name).exists():
            raise CheckpointError(f"{folder / name} is missing: {get_it} into {folder}")
    return folder


def _load_strict(cls: type[ModelMixin], folder: Path, dtype: torch.dtype) -> ModelMixin:
    """`cls.from_pretrained(folder)`, failing on any missing, unexpected or wrongly shaped weight."""
    weights = folder / DIFFUSERS_WEIGHTS
    try:
        model, info = cls.from_pretrained(
            folder, torch_dtype=dtype, ignore_mismatched_sizes=True, output_loading_info=True
        )
    except Exception as exc:  # diffusers and safetensors raise many types for a damaged file or config
        raise CheckpointError(f"cannot load {cls.__name__} from {weights}: {exc}") from exc
    wrong = [key for key, *_ in info["mismatched_keys"]]  # (key, file shape, model shape)
    check_keys(str(weights), cls.__name__, info["missing_keys"], info["unexpected_keys"], wrong)
    return model
