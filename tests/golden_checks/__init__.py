"""Golden-fixture harness: find every fixture in the golden folder, load it, and compare with tolerances.

Fixtures are produced by the reference implementation (see ../shared/golden/README.md). The kind of a
fixture is the prefix of its file name (``dit_``, ``packing_``, ``sampler_``, ``loop_``, ``turbovae_``);
each kind has a module here with a ``check(fixture)`` function.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[2]
NOT_FIXTURES = {"MANIFEST.json"}


def modality_ids(layout) -> torch.Tensor:
    """(N,) int64 per token of a `TokenLayout`: 0 video, 1 audio, 2 text (the reference's modality ids, which
    the engine expresses as the segment lengths of its sequence order)."""
    return torch.arange(3).repeat_interleave(torch.tensor(layout.segments))


def golden_dir() -> Path:
    """`$MAGIHUMAN_GOLDEN_DIR`, relative paths taken from the repository root; default ../shared/golden."""
    raw = os.environ.get("MAGIHUMAN_GOLDEN_DIR", "../shared/golden")
    path = Path(raw)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def fixture_paths(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in (".safetensors", ".json") and p.name not in NOT_FIXTURES
    )


def fixture_kind(path: Path) -> str:
    return path.name.split("_", 1)[0]


@dataclass
class Fixture:
    path: Path
    config: dict
    tolerance: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def recommended(self) -> dict:
        return self.tolerance.get("recommended") or {}

    def weights(self) -> dict[str, torch.Tensor]:
        return {k[len("weights.") :]: v for k, v in self.tensors.items() if k.startswith("weights.")}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors


def load_fixture(path: Path) -> Fixture:
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return Fixture(path, config=data, tolerance=data.get("tolerance") or {})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return Fixture(
        path,
        config=json.loads(meta.get("config", "{}")),
        tolerance=json.loads(meta.get("tolerance", "null")) or {},
        tensors=load_file(str(path)),
    )


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def rel_rms(a: torch.Tensor, b: torch.Tensor, reference_scale: torch.Tensor | None = None) -> float:
    """‖a − b‖ / ‖scale‖ where scale defaults to b (pass the layer update for teacher-forced checks)."""
    scale = b if reference_scale is None else reference_scale
    denom = scale.double().norm().item()
    return (a.double() - b.double()).norm().item() / max(denom, 1e-30)


class Report:
    """Collects every comparison of one fixture, so that a failure lists all deviations at once."""

    def __init__(self, fixture: Fixture) -> None:
        self.fixture = fixture
        self.lines: list[str] = []
        self.failures: list[str] = []

    def close(
        self,
        what: str,
        actual: torch.Tensor,
        expected: torch.Tensor,
        atol: float,
        rms_tol: float | None = None,
        rms_scale: torch.Tensor | None = None,
    ) -> None:
        if tuple(actual.shape) != tuple(expected.shape):
            self.failures.append(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
            return
        diff = max_abs(actual, expected)
        ok = diff <= atol
        line = f"{what}: max|diff| {diff:.3g} (atol {atol:g})"
        if rms_tol is not None:
            rr = rel_rms(actual, expected, rms_scale)
            ok = ok and rr <= rms_tol
            line += f", rel RMS {rr:.3g} (tol {rms_tol:g})"
        self.lines.append(line)
        if not ok:
            self.failures.append(line)

    def equal(self, what: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
        self.close(what, actual, expected, atol=0.0)

    def finish(self) -> None:
        if self.failures:
            raise AssertionError(
                f"{self.fixture.path.name}: {len(self.failures)} check(s) out of tolerance:\n  "
                + "\n  ".join(self.failures)
            )
        if not self.lines:
            raise AssertionError(f"{self.fixture.path.name}: the check compared nothing")
