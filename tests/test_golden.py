"""One test per golden fixture file, named after the file (see tests/golden_checks)."""

from __future__ import annotations

import importlib

import pytest

from tests.golden_checks import fixture_kind, fixture_paths, golden_dir, load_fixture

# Kind prefix -> module in tests/golden_checks. A kind missing here fails its fixtures' tests.
KNOWN_KINDS = ("dit", "packing", "sampler", "loop", "turbovae")

GOLDEN_DIR = golden_dir()
PATHS = fixture_paths(GOLDEN_DIR) if GOLDEN_DIR.is_dir() else []


def test_golden_folder_present() -> None:
    assert GOLDEN_DIR.is_dir(), f"golden fixtures folder {GOLDEN_DIR} not found (set MAGIHUMAN_GOLDEN_DIR)"
    assert PATHS, f"no fixtures in {GOLDEN_DIR}"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_golden(path) -> None:
    kind = fixture_kind(path)
    assert kind in KNOWN_KINDS, f"{path.name}: unknown fixture kind {kind!r} (known: {', '.join(KNOWN_KINDS)})"
    checks = importlib.import_module(f"tests.golden_checks.{kind}")
    checks.check(load_fixture(path))
