"""Resume, Continue this take and Re-roll window N in the studio (studio.take_actions), through the same job path
as Generate (studio.gpu, studio.jobs), on the stub engine of tests/long_take_stub.py; one call of the API."""

from __future__ import annotations

import json
import shutil

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client

import app as studio_app
from magihuman.config import REQUEST_LIMITS
from magihuman.engine import GenerationRequest
from magihuman.long_take import TakeSettings
from magihuman.take_state import TakeState
from studio import gpu_takes, jobs
from studio.handlers import Studio
from studio.runtime import EngineSlot
from studio.take_actions import NOTHING_TO_RESUME, StoppedTakes
from tests.long_take_stub import make_stub
from tests.studio import launched
from tests.test_long_take import _frames

STEPS = REQUEST_LIMITS.default_steps["distill"]  # DiT calls per window of the stub's distilled model
SHOTS = json.dumps([{"seconds": 1.5}])  # 3+ windows of 13 frames


@pytest.fixture(scope="module")
def stub(tiny_engine, tmp_path_factory):
    stub = make_stub(tiny_engine, tmp_path_factory.mktemp("take-actions"))
    stub.engine.take_settings = TakeSettings(window_frames=13)
    return stub


@pytest.fixture(scope="module")
def studio(stub):
    studio = Studio(EngineSlot.ready(stub.engine))
    yield studio
    studio.stopped.clear()
    studio.takes.clear()


@pytest.fixture(scope="module")
def whole(studio):
    """A long take made without a stop: (take id, its stored take)."""
    take_id = studio.generate(prompt="A man talks.", shots=SHOTS, seed=4, request=gr.Request(session_hash="whole"))[4]
    return take_id, studio.takes.get(take_id)


def _latents(take) -> list[torch.Tensor]:
    return [window.video for window in take.windows]


def test_stop_then_resume_equals_an_uninterrupted_run(stub, studio, whole) -> None:
    request = gr.Request(session_hash="stopper")
    add = studio.live.add

    def stop_after_the_first_window(req, piece) -> None:  # Stop pressed once a window plays
        add(req, piece)
        studio.stops["stopper"] = True

    studio.live.add = stop_after_the_first_window
    try:
        with pytest.raises(gr.Error, match="Resume"):
            studio.generate(prompt="A man talks.", shots=SHOTS, seed=4, request=request)
    finally:
        del studio.live.add
    state = studio.stopped.get(request)
    assert state is not None and 1 <= state.done < len(state.plan.windows) and state.folder.exists()

    calls = len(stub.dit.calls)
    take_id = studio.actions.resume(request)[4]
    assert len(stub.dit.calls) - calls == STEPS * len(state.todo)  # the kept windows are not made again
    resumed, first = studio.takes.get(take_id).take, whole[1].take
    assert studio.stopped.get(request) is None and take_id != whole[0]
    assert all(torch.equal(a, b) for a, b in zip(_latents(resumed), _latents(first), strict=True))
    assert np.array_equal(_frames(resumed.base_video_path), _frames(first.base_video_path))
    with pytest.raises(gr.Error, match="No stopped take"):
        studio.actions.resume(request)


def test_continue_adds_seconds_and_keeps_the_earlier_windows(studio, whole) -> None:
    take_id, stored = whole
    answer = studio.actions.continue_take(take_id, 1, "A man talks on.", False, gr.Request(session_hash="more"))
    longer, first = studio.takes.get(answer[4]).take, stored.take
    assert longer.plan.frames == first.plan.frames + 25 == len(_frames(longer.base_video_path))
    count = len(first.plan.windows)
    assert len(longer.plan.windows) > count
    assert all(torch.equal(a, b) for a, b in zip(_latents(longer)[:count], _latents(first), strict=True))
    assert longer.windows[count].prompt == "A man talks on."


def test_rerolling_a_window_changes_only_that_window(stub, studio, whole) -> None:
    take_id, stored = whole
    calls = len(stub.dit.calls)
    answer = studio.actions.reroll_window(take_id, 2, 12345, gr.Request(session_hash="reroll"))
    assert len(stub.dit.calls) - calls == STEPS  # one window made
    rerolled, first = studio.takes.get(answer[4]).take, stored.take
    same = [torch.equal(a, b) for a, b in zip(_latents(rerolled), _latents(first), strict=True)]
    assert same == [i != 1 for i in range(len(same))]
    assert rerolled.plan.windows[1].seed == 12345 and rerolled.plan.frames == first.plan.frames


def test_refusals(studio, whole, tmp_path) -> None:
    take_id, stored = whole
    count = len(stored.take.plan.windows)
    request = gr.Request(session_hash="refused")
    clip = studio.generate(prompt="A man talks.", seconds=1, seed=1, request=request)[4]
    cases = [
        (lambda: studio.actions.resume(request), NOTHING_TO_RESUME[:20]),
        (lambda: studio.actions.continue_take(clip, 1), "Only a long take"),
        (lambda: studio.actions.reroll_window(clip, 1), "Only a long take"),
        (lambda: studio.actions.reroll_window("no-such-take", 1), "No such take"),
        (lambda: studio.actions.reroll_window(take_id, 0), f"windows 1 to {count}; there is no window 0"),
        (lambda: studio.actions.reroll_window(take_id, count + 1), f"there is no window {count + 1}"),
        (lambda: studio.actions.reroll_window(take_id, 1, -3), "A seed is 0 to"),
        (lambda: studio.actions.continue_take(take_id, 119), "120-s limit"),
        (lambda: studio.actions.continue_take(take_id, 0), "1 second or more"),
        (lambda: studio.actions.continue_take(take_id, 1.5), "whole number"),
    ]
    for call, message in cases:
        with pytest.raises(gr.Error, match=message):
            call()

    # At most one stopped take per session and SESSIONS_KEPT overall: a replaced or evicted one is deleted.
    stopped = StoppedTakes(lambda session: session, capacity=2)
    folders = [tmp_path / str(i) for i in range(4)]
    for folder in folders:
        folder.mkdir()
    for session, folder in zip("aabc", folders, strict=True):
        stopped.keep(session, TakeState(None, None, folder, ()))
    assert [f.exists() for f in folders] == [False, False, True, True] and len(stopped) == 2
    stopped.clear()
    assert not any(f.exists() for f in folders)


def test_the_api_rerolls_a_window(stub, studio, whole) -> None:
    demo = studio_app.build_demo(EngineSlot.ready(stub.engine))
    demo.studio.takes = studio.takes  # the take made above
    with launched(demo) as url:
        client = Client(url, verbose=False, download_files=False)
        player, files, seed, details, take_id = client.predict(whole[0], 3, 7, api_name="/reroll_window")
        assert take_id != whole[0] and studio.takes.get(take_id).take.plan.windows[2].seed == 7
        with pytest.raises(Exception, match="there is no window 99"):
            client.predict(whole[0], 99, 7, api_name="/reroll_window")


def test_zerogpu_asks_for_the_windows_each_action_makes(whole) -> None:
    """The calls' durations on ZeroGPU (studio.gpu_takes): a continue asks for its new windows, a re-roll for one."""
    take = whole[1].take
    one = gpu_takes._reroll_seconds(take, 0, None)
    ten, sixty = gpu_takes._continue_seconds(take, 10, None, False), gpu_takes._continue_seconds(take, 60, None, True)
    assert 0 < one < ten < sixty


def test_a_job_closed_by_stop_hands_its_stopped_take_up(stub) -> None:
    """As on ZeroGPU (no same-process stop probe), Stop closes the job: the close raises the Stopped error with
    the take's state, so the studio can keep it."""
    request = GenerationRequest(prompt="A man talks.", shots=SHOTS, seed=6)
    job = jobs.stream(lambda report, cancel: stub.engine.generate(request, on_progress=report, cancel=cancel))
    next(item for item in job if isinstance(item, jobs.Piece))
    with pytest.raises(gr.Error, match="Resume") as caught:
        job.close()
    state = caught.value.take_state
    assert 1 <= state.done < len(state.plan.windows) and state.folder.exists()
    shutil.rmtree(state.folder)
