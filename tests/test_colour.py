"""Colour anchoring of a long take's carried frame (magihuman.colour)."""

from __future__ import annotations

import pytest
import torch

from magihuman.colour import LabStats, anchor_colour


def _frame(seed: int, tint: tuple[float, float, float]) -> torch.Tensor:
    """(1, 3, 1, 32, 48) in [−1, 1]: noise around a tint."""
    noise = torch.rand(1, 3, 1, 32, 48, generator=torch.Generator().manual_seed(seed)) * 0.4 - 0.2
    return (noise + torch.tensor(tint).view(1, 3, 1, 1, 1)).clamp(-1, 1)


def test_strength_zero_is_a_no_op_and_own_stats_are_identity() -> None:
    frame = _frame(0, (0.1, -0.2, 0.3))
    assert anchor_colour(frame, LabStats.of(_frame(1, (0.5, 0.5, 0.5))), 0.0) is frame
    same = anchor_colour(frame, LabStats.of(frame), 1.0)
    assert same.shape == frame.shape and torch.allclose(same, frame, atol=1e-5)


def test_anchoring_moves_the_colour_toward_the_reference_by_the_strength() -> None:
    frame, reference = _frame(0, (0.3, -0.1, -0.3)), LabStats.of(_frame(1, (-0.1, 0.1, 0.2)))
    before = LabStats.of(frame).distance(reference)
    half = LabStats.of(anchor_colour(frame, reference, 0.5)).distance(reference)
    full = LabStats.of(anchor_colour(frame, reference, 1.0)).distance(reference)
    assert before > 10 and half == pytest.approx(before / 2, rel=0.1) and full < 0.05 * before
    with pytest.raises(ValueError, match="strength"):
        anchor_colour(frame, reference, 1.5)
