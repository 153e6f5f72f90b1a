"""EngineOptions (the flags every entry point shares) and the one start-up, in one process (the torchrun path
is tests/test_distributed.py's `case_engine`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from magihuman.optimize import SpeedFlags
from magihuman.options import DEFAULT_DITS, MODEL_ENV, EngineOptions, default_model_size
from magihuman.parallel import start


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    EngineOptions.add_arguments(parser)
    return parser.parse_args(argv)


def test_from_args_reads_every_engine_flag(monkeypatch) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    argv = ["--model", "tiny", "--weights-dir", "w", "--cp", "2", "--no-cfg-parallel", "--no-compile", "--fp8"]
    options = EngineOptions.from_args(_parse(argv), dits=["distill"])
    assert (options.size, options.weights_dir, options.dits) == ("tiny", Path("w"), ("distill",))
    assert (options.cp, options.cfg_parallel) == (2, False)
    assert options.speed.compile is False and options.speed.fp8 is True
    defaults = EngineOptions.from_args(_parse([]))
    assert defaults.dits == DEFAULT_DITS and defaults.cp is None and defaults.cfg_parallel
    assert defaults.size == default_model_size() and defaults.weights_dir is None


def test_the_environment_names_the_model_when_no_flag_does(monkeypatch) -> None:
    monkeypatch.setenv(MODEL_ENV, "tiny")
    assert EngineOptions.from_env().size == "tiny"
    assert EngineOptions.from_args(_parse([])).size == "tiny"
    monkeypatch.setenv(MODEL_ENV, "full")
    assert EngineOptions.from_args(_parse(["--model", "tiny"])).size == "tiny"  # the flag wins


def test_start_in_one_process_returns_the_engine(tmp_path) -> None:
    engine = start(EngineOptions("tiny", speed=SpeedFlags()), output_root=tmp_path)
    assert engine is not None and engine.preview and engine.parallel is None
    assert set(engine.models.dits) >= set(DEFAULT_DITS)


def test_start_refuses_several_gpus_per_clip_without_torchrun(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="process"):
        start(EngineOptions("tiny", cp=2))
