"""Test-wide settings (no network: there is no Hugging Face access in CI) and the shared tiny engine."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}.items():
    os.environ.setdefault(_name, _value)

# Compiled kernels of this session only: Inductor's shared cache in /tmp would hand the compile tests kernels
# built by another process for another instruction set (seen: NaNs and aborts after a run with
# ATEN_CPU_CAPABILITY=avx2), and a test of compilation should compile.
_INDUCTOR_DIR = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_DIR = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="magihuman-tests-inductor-")


def pytest_sessionfinish(session, exitstatus) -> None:
    if _INDUCTOR_DIR is not None:
        shutil.rmtree(_INDUCTOR_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory):
    """One tiny preview engine for the studio tests of a session (building one costs seconds of CPU)."""
    from magihuman.build import load_engine

    return load_engine("tiny", output_root=tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="module")
def studio_url(tiny_engine):
    """The studio on the session's engine, served for one browser test module (skipped without Chromium)."""
    import app as studio_app
    from studio.runtime import EngineSlot
    from tests.browser import require_chromium
    from tests.studio import launched

    require_chromium()
    demo = studio_app.build_demo(EngineSlot.ready(tiny_engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    with launched(demo) as url:
        yield url
