"""A long take on ZeroGPU: made over several GPU calls, none asking for more than the call limit, the quota counted
for the whole take, and the take equal to one made in a single call (the stub engine of tests/test_long_take.py,
with spaces.GPU the identity as off a Space; the calls' arguments and results are what spaces would pickle)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from magihuman.config import FPS
from magihuman.engine import GenerationRequest, Result
from magihuman.long_take import TakeSettings
from magihuman.media import read_video_frames
from magihuman.take_plan import Shot, plan_take
from studio import gpu, slot, space
from studio.jobs import Piece, Progress
from studio.runtime import EngineSlot
from tests.long_take_stub import make_stub


def test_a_long_take_is_split_into_calls_under_the_limit_and_equals_one_call(tiny_engine, tmp_path, monkeypatch):
    stub = make_stub(tiny_engine, tmp_path)
    engine = stub.engine
    engine.take_settings = TakeSettings(window_frames=13)
    request = GenerationRequest(prompt="A man talks.", shots=json.dumps([{"seconds": 2}]), seed=5)
    monkeypatch.setattr(slot, "_slot", EngineSlot.ready(engine))
    monkeypatch.setattr(gpu, "SPLIT_LONG_TAKES", True)
    monkeypatch.setattr(space, "MAX_CALL_S", 25)  # ≥ 22 s per call here: a few windows per call
    calls = []
    for name in ("advance_take", "finish_take"):
        method = getattr(engine, name)

        def spy(state, *args, _method=method, _name=name, **kwargs):
            made = state.todo[: args[0]] if _name == "advance_take" else state.todo
            calls.append(
                (_name, made, space.take_call_seconds(state.plan, state.request, made, _name == "finish_take"))
            )
            pickle.loads(pickle.dumps(state))  # what spaces sends to a worker
            return _method(state, *args, **kwargs)

        monkeypatch.setattr(engine, name, spy)

    items = list(gpu.gpu_generate(request))
    result = items[-1]
    assert isinstance(result, Result) and all(isinstance(item, Progress | Piece) for item in items[:-1])
    assert [item.index for item in items if isinstance(item, Piece)] == list(range(5))  # each from its own call
    assert [name for name, _, _ in calls] == ["advance_take"] * (len(calls) - 1) + ["finish_take"]
    assert len(calls) >= 2 and [i for _, made, _ in calls for i in made] == list(range(5))
    assert all(seconds <= space.MAX_CALL_S for _, _, seconds in calls)
    whole = engine.generate(request)
    assert np.array_equal(read_video_frames(result.video_path), read_video_frames(whole.video_path))
    pickle.loads(pickle.dumps(result))  # the Result crosses back (its windows stay on disk)


def test_the_quota_counts_every_call_of_a_long_take(monkeypatch) -> None:
    monkeypatch.setattr(space, "PLAN", space.zerogpu_plan())  # as on a Space: weights to copy into each worker
    request = GenerationRequest(prompt="x", seconds=120, seed=0, steps=8)
    plan = plan_take([Shot(120 * FPS)], seed=0)
    with pytest.raises(space.QuotaError, match=r"120-second 256p take needs about \d+ s of ZeroGPU time in \d+ calls"):
        space.take_calls(plan, request)
    monkeypatch.setenv(space.QUOTA_ENV, "2400")  # a Space for PRO users
    counts = space.take_calls(plan, request)
    assert sum(counts) == len(plan.windows) and len(counts) > 1
    made = 0
    for number, count in enumerate(counts, start=1):
        own = range(made, made + count)
        assert space.take_call_seconds(plan, request, own, number == len(counts)) <= space.MAX_CALL_S
        made += count
    sr = GenerationRequest(prompt="x", seconds=120, seed=0, resolution="1080p")
    with pytest.raises(space.gr.Error, match="does not fit one ZeroGPU call"):
        space.take_calls(plan, sr)
