"""Turbo VAE decoder: Wan2.2 48-channel latents to RGB video. A decode-only, non-causal 3-D conv network
(LTX-style, distilled from the Wan2.2 decoder) whose state dict is the official checkpoint's decoder key set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from magihuman.config import TurboVAEConfig

# --- 1. Latent statistics and de-normalisation -----------------------------------------------------------

# The 48 Wan2.2 latent statistics, as published (Wan2.2-TI2V-5B VAE config). Read as float32 these are
# bit-identical to the reference tensors (tests/golden_checks/turbovae.py checks it).
LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


def denormalize(z: torch.Tensor) -> torch.Tensor:
    """Normalised latent (B, 48, T, h, w) -> raw: z / (1/std) + mean in fp32 (dividing by the reciprocal, as
    upstream: multiplying by std differs in the last bit)."""
    stats = dict(dtype=torch.float32, device=z.device)
    mean = torch.tensor(LATENT_MEAN, **stats).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(LATENT_STD, **stats).view(1, -1, 1, 1, 1)
    return (z.float() / inv_std + mean).to(z.dtype)


# --- 2. Building blocks ----------------------------------------------------------------------------------

NORM_EPS = 1e-8  # norm1, norm2 and the final norm; the shortcut norm uses config.resnet_norm_eps

UpsampleMode = Literal["space", "space-time"]


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm over the channel axis of (B, C, T, H, W); statistics in fp32."""
    variance = x.float().pow(2).mean(dim=1, keepdim=True)
    return (x * torch.rsqrt(variance + eps)).to(x.dtype)


class TimePaddedConv3d(nn.Module):
    """3-D conv, non-causal: (k_t - 1)/2 copies of the first and last frame around the clip, zero padding in
    H and W. Upstream calls it causal; the key level `.conv` is kept for the checkpoint names."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int]) -> None:
        super().__init__()
        kt, kh, kw = kernel_size
        self.time_pad = (kt - 1) // 2
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            p = self.time_pad
            x = torch.cat([x[:, :, :1].expand(-1, -1, p, -1, -1), x, x[:, :, -1:].expand(-1, -1, p, -1, -1)], 2)
        return self.conv(x)


class ResnetBlock3d(nn.Module):
    """norm -> act -> conv1 -> norm -> SiLU -> conv2, plus the shortcut; `act` is ReLU after an upsampler."""

    def __init__(self, in_channels: int, out_channels: int, shortcut_eps: float, relu_first: bool) -> None:
        super().__init__()
        self.act = F.relu if relu_first else F.silu
        self.shortcut_eps = shortcut_eps
        self.conv1 = TimePaddedConv3d(in_channels, out_channels, (3, 3, 3))
        self.conv2 = TimePaddedConv3d(out_channels, out_channels, (3, 3, 3))
        self.conv_shortcut = (
            TimePaddedConv3d(in_channels, out_channels, (1, 1, 1)) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(rms_norm(x, NORM_EPS)))
        h = self.conv2(F.silu(rms_norm(h, NORM_EPS)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(rms_norm(x, self.shortcut_eps))
        return h + x


class Upsampler(nn.Module):
    """Wan resample: optional ×2 in time (the first window drops its first frame: T -> 2T - 1), then ×2
    nearest in space and a 3×3 conv per frame."""

    def __init__(self, channels: int, mode: UpsampleMode) -> None:
        super().__init__()
        self.time_conv = TimePaddedConv3d(channels, 2 * channels, (3, 1, 1)) if mode == "space-time" else None
        # Nearest upsampling copies values, so running it in the input dtype equals upstream's fp32 detour.
        self.resample = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest-exact"), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.time_conv is not None:
            x = self.time_conv(x).view(b, 2, c, t, h, w)  # (B, s, C, T, H, W)
            x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # frame 2t + s
            if is_first_chunk:
                x = x[:, :, 1:]
            t = x.shape[2]
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B·T, C, H, W)
        frames = self.resample(frames)  # (B·T, C, 2H, 2W)
        return frames.view(b, t, c, 2 * h, 2 * w).transpose(1, 2).contiguous()


class DecoderBlock(nn.Module):
    """conv_in (when the width changes) -> upsampler (optional) -> resnets; the mid block has neither."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_resnets: int,
        shortcut_eps: float,
        upsample: UpsampleMode | None = None,
    ) -> None:
        super().__init__()
        self.conv_in = (
            ResnetBlock3d(in_channels, out_channels, shortcut_eps, relu_first=False)
            if in_channels != out_channels
            else None
        )
        self.upsamplers = nn.ModuleList([Upsampler(out_channels, upsample)] if upsample else [])
        self.resnets = nn.ModuleList(
            ResnetBlock3d(out_channels, out_channels, shortcut_eps, relu_first=upsample is not None)
            for _ in range(num_resnets)
        )

    def forward(self, x: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x)
        for upsampler in self.upsamplers:
            x = upsampler(x, is_first_chunk)
        for resnet in self.resnets:
            x = resnet(x)
        return x


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C·p·p, T, H, W) -> (B, C, T, H·p, W·p), width offset major (the transpose of pixel_shuffle's)."""
    b, cpp, t, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, t, h, w)  # (B, C, pw, ph, T, H, W)
    x = x.permute(0, 1, 4, 5, 3, 6, 2)  # (B, C, T, H, ph, W, pw)
    return x.reshape(b, cpp // (p * p), t, h * p, w * p)


# --- 3. The decoder --------------------------------------------------------------------------------------


def check_supported(config: TurboVAEConfig) -> None:
    """Raise ValueError for configurations this implementation does not build (none of them is shipped)."""
    n = len(config.decoder_block_out_channels)
    lengths = {
        "decoder_layers_per_block": (len(config.decoder_layers_per_block), n + 1),
        "decoder_spatio_temporal_scaling": (len(config.decoder_spatio_temporal_scaling), n),
        "decoder_spatio_only": (len(config.decoder_spatio_only), n),
    }
    for name, (got, want) in lengths.items():
        if got != want:
            raise ValueError(f"{name} has {got} entries, expected {want} (decoder_block_out_channels has {n})")
    if config.decoder_causal or any(config.decoder_is_dw_conv):
        raise ValueError("causal and depthwise-separable Turbo VAE convs are not supported")
    if not config.use_unpatchify or config.patch_size_t != 1:
        raise ValueError("only use_unpatchify=True with patch_size_t=1 is supported")
    scaling = zip(config.decoder_spatio_temporal_scaling, config.decoder_spatio_only, strict=True)
    temporal = sum(up and not spatial_only for up, spatial_only in scaling)
    if 2**temporal != config.temporal_compression_ratio:
        raise ValueError(
            f"{temporal} temporal upsamplers give ×{2**temporal} frames, "
            f"but temporal_compression_ratio is {config.temporal_compression_ratio}"
        )


class TurboVAEDecoder(nn.Module):
    """One decoder call: raw latent (B, 48, T, h, w) -> video (B, 3, F, 16h, 16w) in about [-1, 1]; F = r·T,
    less r - 1 on the first window. Config lists are in encoder order."""

    def __init__(self, config: TurboVAEConfig) -> None:
        super().__init__()
        check_supported(config)
        channels = config.decoder_block_out_channels[::-1]  # 512, 256, 128, 64
        layers = config.decoder_layers_per_block[::-1]  # mid 3, up 3, 2, 2, 2
        scaling = config.decoder_spatio_temporal_scaling[::-1]
        spatial_only = config.decoder_spatio_only[::-1]
        eps = config.resnet_norm_eps
        self.patch_size = config.patch_size

        # 3.1 latent -> widest features
        self.conv_in = TimePaddedConv3d(config.latent_channels, channels[0], (3, 3, 3))
        # 3.2 mid block: resnets only
        self.mid_block = DecoderBlock(channels[0], channels[0], layers[0], eps)
        # 3.3 up blocks: block i goes from the previous width to channels[i]
        self.up_blocks = nn.ModuleList()
        for i, width in enumerate(channels):
            upsample = ("space" if spatial_only[i] else "space-time") if scaling[i] else None
            self.up_blocks.append(DecoderBlock(channels[max(i - 1, 0)], width, layers[i + 1], eps, upsample))
        # 3.4 norm -> SiLU -> conv_out to RGB patches
        rgb_patch = config.out_channels * config.patch_size**2 * config.patch_size_t
        self.conv_out = TimePaddedConv3d(channels[-1], rgb_patch, (3, 3, 3))

    def forward(
        self, z: torch.Tensor, is_first_chunk: bool, stages: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Decode one window; `stages` collects the outputs of conv_in, mid_block and up_blocks.i."""
        x = self.conv_in(z)  # (B, C0, T, h, w)
        if stages is not None:
            stages["conv_in"] = x
        x = self.mid_block(x, is_first_chunk)
        if stages is not None:
            stages["mid_block"] = x
        for i, block in enumerate(self.up_blocks):
            x = block(x, is_first_chunk)  # time ×2 (or 2T - 1) and space ×2 where the block upsamples
            if stages is not None:
                stages[f"up_blocks.{i}"] = x
        x = self.conv_out(F.silu(rms_norm(x, NORM_EPS)))  # (B, 3·p·p, F, 8h, 8w)
        return unpatchify(x, self.patch_size)  # (B, 3, F, 16h, 16w)


# --- 4. Sliding-window decode ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One decoder call of the schedule: latent frames [start, stop), then output frames trimmed."""

    start: int
    stop: int
    is_first_chunk: bool
    trim_front: int
    trim_back: int


def window_schedule(num_latents: int, config: TurboVAEConfig) -> tuple[int, list[Window]]:
    """(padding latent frames, windows): one latent of context on each inner side of a window, trimmed away."""
    first, step, r = config.first_chunk_size, config.step_size, config.temporal_compression_ratio
    padded = first + max(0, -(-(num_latents - first) // step)) * step
    if padded == first:
        return padded - num_latents, [Window(0, first, True, 0, 0)]
    windows = [Window(0, first + 1, True, 0, r)]
    for i in range(first, padded, step):
        last = i + step == padded
        windows.append(Window(i - 1, i + step + (0 if last else 1), False, r, 0 if last else r))
    return padded - num_latents, windows


class TurboVAE(nn.Module):
    """The Turbo VAE decoder (`decoder.*` keys) plus the windowed decode of the sampler's latent."""

    def __init__(self, config: TurboVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = TurboVAEDecoder(config)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, on_window: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Normalised latent (B, 48, T, h, w) -> video (B, 3, 4·(T-1)+1, 16h, 16w), in independent windows."""
        pieces = []
        for done, total, piece in self.decode_windows(z):
            pieces.append(piece)
            if on_window is not None:
                on_window(done, total)
        return torch.cat(pieces, dim=2)

    @torch.no_grad()
    def decode_windows(self, z: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
        """`decode` as (done, total, piece) per window, so a consumer can encode a piece while the next decodes."""
        frames_left = self.config.temporal_compression_ratio * (z.shape[2] - 1) + 1
        z = denormalize(z.to(self.decoder.conv_in.conv.weight.dtype))
        pad, windows = window_schedule(z.shape[2], self.config)
        if pad:
            z = torch.cat([z, z[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        for done, window in enumerate(windows, start=1):
            video = self.decoder(z[:, :, window.start : window.stop], window.is_first_chunk)
            piece = video[:, :, window.trim_front : video.shape[2] - window.trim_back][:, :, :frames_left]
            frames_left -= piece.shape[2]  # the padding's frames are cut from the end
            yield done, len(windows), piece


# --- 5. uint8 post-processing ----------------------------------------------------------------------------


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(1, 3, F, H, W) -> (F, H, W, 3) uint8: x·0.5 + 0.5 in fp32, clamped, ×255 truncated as the pipeline does."""
    if video.dim() == 5:
        if video.shape[0] != 1:
            raise ValueError(f"to_uint8 takes one video, got a batch of {video.shape[0]}")
        video = video[0]
    pixels = (video.float() * 0.5 + 0.5).clamp(0.0, 1.0).permute(1, 2, 3, 0)  # (F, H, W, 3)
    return (pixels * 255).to(torch.uint8).cpu()
