"""Seeing a long take while it renders (CPU, the stub engine of tests/test_long_take.py): every finished window is
handed over as its own playable mp4 through the job stream before the next window starts, with its own frames
and its slice of the sound; the studio's per-session store of them (studio.live)."""

from __future__ import annotations

import json
import pickle

import gradio as gr
import numpy as np
import pytest

from magihuman.engine import GenerationRequest
from magihuman.forksafe import media_in_flight
from magihuman.long_take import TakeSettings
from studio import jobs
from studio.live import LivePieces, LiveTake
from studio.take_actions import StoppedTakes
from tests.files import tone, write_audio
from tests.long_take_stub import Stub, make_stub
from tests.probe import probe_media
from tests.test_long_take import _frames, _sound

RATE = 44_100


@pytest.fixture()
def stub(tiny_engine, tmp_path) -> Stub:
    return make_stub(tiny_engine, tmp_path)


def _run(stub, request: GenerationRequest):
    """The request as the studio runs it (studio.gpu.gpu_generate, studio.jobs.run_job): progress and pieces
    in the order the page would get them."""
    log = []
    job = jobs.stream(lambda report, cancel: stub.engine.generate(request, on_progress=report, cancel=cancel))
    result = jobs.run_job(job, lambda phase, step, total: log.append(phase), lambda: False, log.append)
    return result, log


def test_each_window_is_handed_over_as_its_own_mp4_before_the_next_one_starts(stub, tmp_path) -> None:
    stub.engine.take_settings = TakeSettings(window_frames=25)
    recording = write_audio(tmp_path / "talk.wav", tone(3.0, RATE, frequency=330.0), RATE, "pcm_s16le")
    request = GenerationRequest(prompt="A man talks.", audio=recording, shots=json.dumps([{"seconds": 3}]), seed=5)
    result, log = _run(stub, request)
    plan = result.take.plan
    count = len(plan.windows)
    pieces = [item for item in log if isinstance(item, jobs.Piece)]
    assert count >= 3 and [(p.index, p.count) for p in pieces] == [(i, count) for i in range(count)]
    assert media_in_flight() == []  # every piece's writer has ended with its window

    # Window w's piece arrives before window w+2's first progress: the page can play it while the rest renders.
    for piece in pieces[:-1]:
        later = f"window {piece.index + 2}/{count} "
        assert log.index(piece) < next(i for i, item in enumerate(log) if str(item).startswith(later))

    take_frames = _frames(result.video_path)
    assert len(take_frames) == plan.frames == 75
    for window, piece in zip(plan.windows, pieces, strict=True):
        info = probe_media(piece.path)
        assert info.video.frames == window.keep
        assert info.audio.seconds == pytest.approx(window.keep / 25, abs=0.03)
        # its frames are the take's frames of that window (two lossy encodes of the same pictures)
        frames = _frames(piece.path).astype(np.int16)
        same = take_frames[window.first_new : window.first_new + window.keep].astype(np.int16)
        assert np.abs(frames - same).mean() < 2.0
        # its sound is the recording over the window's frames (decoded PCM against the source tone, AAC error)
        sound = _sound(piece.path)[0]
        t = window.first_new / 25 + np.arange(len(sound)) / RATE
        reference = 0.3 * np.sin(2 * np.pi * 330.0 * t)
        middle = slice(RATE // 20, len(sound) - RATE // 20)
        assert np.sqrt(np.mean((sound[middle] - reference[middle]) ** 2)) < 0.02


def test_generated_speech_pieces_carry_their_own_sound(stub) -> None:
    stub.engine.take_settings = TakeSettings(window_frames=13)
    request = GenerationRequest(prompt="A man talks.", shots=json.dumps([{"seconds": 1.5}]), seed=2)
    result, log = _run(stub, request)
    pieces = [item for item in log if isinstance(item, jobs.Piece)]
    assert len(pieces) == len(result.take.plan.windows) >= 3
    for window, piece in zip(result.take.plan.windows, pieces, strict=True):
        info = probe_media(piece.path)
        assert info.video.frames == window.keep
        assert info.audio.seconds == pytest.approx(window.keep / 25, abs=0.03)
        assert np.abs(_sound(piece.path)).max() > 0


def test_a_take_made_over_several_calls_hands_over_each_window_once(stub) -> None:
    """ZeroGPU's split take (studio.gpu: advance_take calls, then finish_take): every window's mp4 comes from the
    call that made it; the last call decodes the earlier windows again for the take, but hands them over no more."""
    stub.engine.take_settings = TakeSettings(window_frames=13)
    state = stub.engine.plan_take(GenerationRequest(prompt="A man talks.", shots='[{"seconds": 1.5}]', seed=3))
    count, handed = len(state.plan.windows), []
    state = stub.engine.advance_take(state, 2, on_piece=lambda path, index, total: handed.append((index, total)))
    assert handed == [(0, count), (1, count)]
    stub.engine.finish_take(state, on_piece=lambda path, index, total: handed.append((index, total)))
    assert handed == [(i, count) for i in range(count)]


def test_a_stopped_long_take_is_kept_for_resume_and_removed_when_replaced(stub) -> None:
    """A stopped long take's state rides on the "Stopped" error; the studio keeps it for Resume (one per
    session), and a newer stopped take replaces it: nothing of the older one stays on disk."""
    stub.engine.take_settings = TakeSettings(window_frames=13)
    before = set(stub.engine.output_root.iterdir())
    stopped = StoppedTakes(lambda request: request)  # the "request" is the session's name here
    folders = []
    for seed in (4, 5):
        request = GenerationRequest(prompt="A man talks.", shots=json.dumps([{"seconds": 1.5}]), seed=seed)
        pieces = []
        job = jobs.stream(lambda report, cancel, r=request: stub.engine.generate(r, on_progress=report, cancel=cancel))
        with pytest.raises(gr.Error, match="Resume") as caught:
            jobs.run_job(job, lambda phase, step, total: None, lambda shown=pieces: bool(shown), pieces.append)
        state = caught.value.take_state
        assert pickle.loads(pickle.dumps(caught.value)).take_state == state  # as spaces sends it from a worker
        assert pieces and 1 <= state.done < len(state.plan.windows)
        assert set(stub.engine.output_root.iterdir()) == before | {*folders, state.folder}  # its windows, kept
        stopped.keep("a", state)
        folders.append(state.folder)
    assert not folders[0].exists() and stopped.get("a").folder == folders[1]
    stopped.clear()
    assert set(stub.engine.output_root.iterdir()) == before


def test_a_single_clip_has_no_pieces(stub) -> None:
    result, log = _run(stub, GenerationRequest(prompt="A man talks.", seconds=1, seed=1))
    assert result.take.plan is None and not any(isinstance(item, jobs.Piece) for item in log)


def test_the_live_store_sends_only_news_then_the_finished_take_once(tmp_path) -> None:
    live = LivePieces(lambda request: request)  # the "request" is the session's name here
    skip = type(gr.skip())
    paths = [str(write_audio(tmp_path / f"p{i}.wav", tone(0.1, RATE), RATE, "pcm_s16le")) for i in range(2)]
    value, timer = live.poll("a")
    assert isinstance(value, skip) and timer == gr.update(active=False)  # no job: the timer stops
    live.begin("a")
    value, timer = live.poll("a")
    assert isinstance(value, skip) and isinstance(timer, skip)  # nothing new yet, keep polling
    live.add("a", jobs.Piece(paths[0], 0, 3))
    live.add("b", jobs.Piece(paths[1], 0, 2))
    assert live.poll("a") == ({"pieces": [paths[0]], "count": 3, "done": False}, gr.skip())
    assert isinstance(live.poll("a")[0], skip)
    live.add("a", jobs.Piece(paths[1], 1, 3))
    live.finish("a")
    assert live.poll("a") == ({"pieces": paths, "count": 3, "done": True}, gr.update(active=False))
    value, timer = live.poll("a")  # a late tick changes nothing
    assert isinstance(value, skip) and timer == gr.update(active=False)
    assert live.poll("b")[0]["count"] == 2  # another session's take is its own
    live.begin("a")
    live.finish("a")  # failed before any window: the widget empties, the timer stops
    assert live.poll("a") == (None, gr.update(active=False))

    shown = LiveTake().postprocess({"pieces": [paths[0]], "count": 3, "done": False})
    assert shown["pieces"][0]["path"] == paths[0] and shown["count"] == 3
    assert LiveTake().postprocess(None)["pieces"] == []
