"""Colour anchoring for long takes.

Each window continues from the previous one's last frame through a VAE round trip that nudges colour, and the
nudges add up. So that frame's CIELAB mean and spread are moved part of the way toward the portrait's, and its
ΔE from the portrait is logged per window. Pixels are sRGB (D65) in [−1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float64,
)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_EPSILON, _KAPPA = 216 / 24389, 24389 / 27


def _to_lab(pixels: torch.Tensor) -> torch.Tensor:
    """(1, 3, ..., H, W) in [−1, 1] → (3, N) Lab, float64."""
    rgb = ((pixels.double().reshape(3, -1) + 1) / 2).clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = (_RGB_TO_XYZ @ linear) / _WHITE_D65[:, None]
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(1e-12) ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _from_lab(lab: torch.Tensor) -> torch.Tensor:
    """(3, N) Lab → (3, N) sRGB in [−1, 1], float64."""
    fy = (lab[0] + 16) / 116
    f = torch.stack([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    xyz = torch.where(f**3 > _EPSILON, f**3, (116 * f - 16) / _KAPPA) * _WHITE_D65[:, None]
    linear = (torch.linalg.inv(_RGB_TO_XYZ) @ xyz).clamp(0, 1)
    rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return rgb * 2 - 1


@dataclass(frozen=True)
class LabStats:
    mean: torch.Tensor  # (3,)
    std: torch.Tensor  # (3,)

    @classmethod
    def of(cls, pixels: torch.Tensor) -> LabStats:
        lab = _to_lab(pixels)
        return cls(lab.mean(dim=1), lab.std(dim=1))

    def distance(self, other: LabStats) -> float:
        """ΔE (CIE76) between the two mean colours."""
        return float((self.mean - other.mean).norm())


def anchor_colour(pixels: torch.Tensor, reference: LabStats, strength: float) -> torch.Tensor:
    """`pixels` with their Lab mean and spread moved `strength` (0..1) of the way to `reference`'s; same shape
    and dtype. Strength 0 returns the pixels unchanged."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return pixels
    lab = _to_lab(pixels)
    own = LabStats(lab.mean(dim=1), lab.std(dim=1))
    target_mean = own.mean + strength * (reference.mean - own.mean)
    target_std = own.std + strength * (reference.std - own.std)
    moved = (lab - own.mean[:, None]) / own.std.clamp_min(1e-6)[:, None] * target_std[:, None] + target_mean[:, None]
    return _from_lab(moved).reshape(pixels.shape).to(pixels.dtype)
