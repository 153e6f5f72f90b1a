"""Test-wide settings (no network: there is no Hugging Face access in CI) and the shared tiny engine."""

from __future__ import annotations

import os

import pytest

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory):
    """One tiny preview engine for the studio tests of a session (building one costs seconds of CPU)."""
    from magihuman.build import load_engine

    return load_engine("tiny", output_root=tmp_path_factory.mktemp("outputs"))
