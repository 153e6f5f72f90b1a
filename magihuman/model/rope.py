"""3-axis rotary position embedding.

Per token, each axis a ∈ (t, h, w) gets a position p_a = (coord_a − centre_a) · scale_a with
scale_a = (ref_a − 1)/(size_a − 1) (1 when ref = size = 1), centre_t = 0 and centre_h/w = (size − 1)/2.
Angles p_a · ω_k for B bands per axis fill the first 6·B of the head dims in rotate-half pairs (j, j + 3B).
"""

from __future__ import annotations

import torch
from torch import nn


def rope_bands(bands_per_axis: int, temperature: float = 10000.0) -> torch.Tensor:
    exponents = torch.arange(bands_per_axis, dtype=torch.float32) / bands_per_axis
    return 1.0 / (temperature**exponents)


def rope_table(coords: torch.Tensor, bands: torch.Tensor) -> torch.Tensor:
    """(N, 9) coordinates -> (N, 6·B) fp32 table [sin(angles), cos(angles)], angles ordered t, h, w bands."""
    coords = coords.float()
    position, size, ref = coords[:, 0:3], coords[:, 3:6], coords[:, 6:9]
    unit = (ref == 1) & (size == 1)
    scale = torch.where(unit, torch.ones_like(size), (ref - 1) / (size - 1))
    centre = (size - 1) / 2
    centre[:, 0] = 0.0  # time is not centred
    p = (position - centre) * scale  # (N, 3)
    angles = (p.unsqueeze(-1) * bands.to(p.device)).flatten(1)  # (N, 3·B): t bands, h bands, w bands
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate (N, heads, D) fp32 vectors by a (N, 6·B) table; dims from 6·B on pass through unchanged."""
    half = table.shape[1] // 2  # = 3·B angles; rotated dims are [0, 2·half)
    sin = table[:, None, :half]
    cos = table[:, None, half:]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    rotated = (x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest)
    return torch.cat(rotated, dim=-1)


class RotaryEmbedding(nn.Module):
    """Holds the `bands` buffer under its checkpoint name (`adapter.rope.bands`) and builds tables."""

    def __init__(self, bands_per_axis: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("bands", rope_bands(bands_per_axis, temperature))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return rope_table(coords, self.bands)
