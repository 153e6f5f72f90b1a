"""A long take's kept state (magihuman.take_state) on the stub engine of tests/test_long_take.py: a stopped take
resumes to the uninterrupted one, a take made over several calls equals one made in one, a re-rolled window leaves
the others unchanged, and a take can be continued."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from magihuman.engine import GenerationRequest
from magihuman.errors import GenerationCancelled, InputError
from magihuman.long_take import TakeSettings
from magihuman.take_state import window_path
from tests.files import portrait, tone, write_audio
from tests.long_take_stub import Stub, make_stub
from tests.probe import probe_media
from tests.test_long_take import _frames, _sound

SCENE = json.dumps([{"prompt": "A man talks.", "seconds": 2}])  # 50 frames: 5 windows of ≤ 13 frames


@pytest.fixture()
def stub(tiny_engine, tmp_path) -> Stub:
    stub = make_stub(tiny_engine, tmp_path)
    stub.engine.take_settings = TakeSettings(window_frames=13)
    return stub


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    return portrait(tmp_path_factory.mktemp("state-inputs") / "face.png")


def _same_latents(a, b) -> bool:
    return torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio) and torch.equal(a.seam, b.seam)


def test_a_stopped_take_resumes_to_the_uninterrupted_take_and_calls_split_it_exactly(stub, face) -> None:
    """Generated speech (the audio is one decode of the stitched rows, so it is the stricter case)."""
    request = GenerationRequest(prompt="A man talks.", portrait=face, shots=SCENE, seed=7)
    whole = stub.engine.generate(request)
    count = len(whole.take.plan.windows)
    assert count == 5

    # Stop during window 3: windows 1-2 are kept beside the take, no mp4 is left.
    stop = threading.Event()

    def on_progress(phase: str, step: int, total: int) -> None:
        if phase == f"window 3/{count} base" and step == 4:
            stop.set()

    with pytest.raises(GenerationCancelled) as stopped:
        stub.engine.generate(request, on_progress=on_progress, cancel=stop)
    state = stopped.value.take_state
    assert state.done == 2 and state.todo == (2, 3, 4)
    assert sorted(p.name for p in (state.folder / "windows").iterdir()) == ["000.pt", "001.pt"]
    assert not (state.folder / "base_256p.mp4").exists()
    resumed = stub.engine.finish_take(state)
    assert np.array_equal(_frames(resumed.video_path), _frames(whole.video_path))
    assert np.array_equal(_sound(resumed.video_path), _sound(whole.video_path))
    assert all(_same_latents(a, b) for a, b in zip(resumed.take.windows, whole.take.windows, strict=True))

    # The same take made over three calls (2 windows, 2 windows, then the last and the mp4).
    state = stub.engine.plan_take(request)
    state = stub.engine.advance_take(state, 2)
    state = stub.engine.advance_take(state, 2)
    assert state.todo == (4,) and not (state.folder / "base_256p.mp4").exists()
    split = stub.engine.finish_take(state)
    assert np.array_equal(_frames(split.video_path), _frames(whole.video_path))
    assert np.array_equal(_sound(split.video_path), _sound(whole.video_path))
    assert json.loads((split.take.folder / "plan.json").read_text()) == json.loads(
        (whole.take.folder / "plan.json").read_text()
    )


def test_rerolling_window_2_leaves_the_other_windows_unchanged(stub, face) -> None:
    request = GenerationRequest(prompt="A man talks.", portrait=face, shots=SCENE, seed=8)
    take = stub.engine.generate(request).take
    calls_before = len(stub.dit.calls)
    rerolled = stub.engine.reroll(take, 1, seed=12345)
    new = rerolled.take
    assert len(stub.dit.calls) - calls_before == 8  # one window made again, nothing else
    assert new.plan.windows[1].seed == 12345 and new.folder != take.folder
    for i, (old_w, new_w) in enumerate(zip(take.windows, new.windows, strict=True)):
        if i != 1:
            assert _same_latents(old_w, new_w), f"window {i + 1} changed"
    old_w, new_w = take.windows[1], new.windows[1]
    assert not torch.equal(old_w.video, new_w.video)
    pinned = new.plan.windows[2].pinned_latents
    assert torch.equal(new_w.video[:, :, :pinned], old_w.video[:, :, :pinned])  # starts where window 1 left
    assert torch.equal(new_w.video[:, :, -pinned:], old_w.video[:, :, -pinned:])  # ends where window 3 began
    overlap = new.plan.windows[2].overlap
    assert torch.equal(new_w.audio[:, -overlap:], old_w.audio[:, -overlap:])
    # In the mp4: the frames before window 2 are the same; window 2's own differ; the earlier take is untouched.
    window = new.plan.windows[1]
    before, after = _frames(take.base_video_path), _frames(rerolled.video_path)
    assert before.shape == after.shape
    assert np.array_equal(before[: window.first_new], after[: window.first_new])
    assert not np.array_equal(
        before[window.first_new : window.first_new + window.keep], after[window.first_new :][: window.keep]
    )
    assert window_path(take.folder, 1).exists() and probe_media(take.base_video_path).video.frames == 50
    with pytest.raises(InputError, match="windows 1 to 5; there is no window 6"):
        stub.engine.reroll(take, 5)


def test_continuing_a_take_keeps_it_and_adds_seconds_or_a_shot(stub, face) -> None:
    request = GenerationRequest(prompt="A man talks.", portrait=face, shots=SCENE, seed=9)
    take = stub.engine.generate(request).take
    longer = stub.engine.continue_take(take, 1).take
    plan = longer.plan
    assert plan.frames == 75 and longer.request.seconds == 3
    assert plan.windows[:4] == take.plan.windows[:4] and all(w.overlap for w in plan.windows[1:])
    assert all(_same_latents(a, b) for a, b in zip(take.windows, longer.windows[:5], strict=False))
    assert probe_media(longer.base_video_path).video.frames == 75
    old, new = _frames(take.base_video_path), _frames(longer.base_video_path)
    assert np.array_equal(old[: plan.windows[4].first_new], new[: plan.windows[4].first_new])
    # The new windows go on from the last one's carried state: its first latent is the re-encoded seam frame.
    added = plan.windows[5]
    assert added.start == plan.windows[4].start + plan.windows[4].frames - 1
    scene = stub.engine.continue_take(take, 1, prompt="He waves.", new_shot=True).take
    assert scene.plan.frames == 75 and scene.plan.windows[5].overlap == 0 and scene.plan.windows[5].shot == 1
    assert scene.windows[5].prompt == "He waves."
    with pytest.raises(InputError, match="pass the 120-s limit"):
        stub.engine.continue_take(take, 119)


def test_a_stopped_take_that_follows_a_recording_resumes_to_the_uninterrupted_take(stub, face, tmp_path) -> None:
    """The recording is encoded again on resume (from the take's seed: the same latents), window 0 having drawn
    its noise after that encoding, as a single clip does."""
    speech = write_audio(tmp_path / "talk.wav", tone(2.1, 44_100), 44_100, "pcm_s16le")
    request = GenerationRequest(prompt="A man talks.", portrait=face, audio=speech, shots=SCENE, seed=11)
    whole = stub.engine.generate(request)
    stop = threading.Event()
    count = len(whole.take.plan.windows)
    assert count == 5

    def on_progress(phase: str, step: int, total: int) -> None:
        if phase == f"window 2/{count} base" and step == 2:
            stop.set()

    with pytest.raises(GenerationCancelled) as stopped:
        stub.engine.generate(request, on_progress=on_progress, cancel=stop)
    resumed = stub.engine.finish_take(stopped.value.take_state)
    assert np.array_equal(_frames(resumed.video_path), _frames(whole.video_path))
    assert np.array_equal(_sound(resumed.video_path), _sound(whole.video_path))
    with pytest.raises(InputError, match="a take that follows a recording ends with it"):
        stub.engine.continue_take(whole.take, 2)
