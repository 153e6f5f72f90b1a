"""The long-take planner (pure arithmetic) and the `shots` field's parser."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magihuman.config import decoded_frames
from magihuman.prompts import DialogueLine, build_prompt, parse_prompt
from magihuman.take_plan import (
    MAX_SHOTS,
    MAX_TAKE_SECONDS,
    MAX_WINDOW_FRAMES,
    Shot,
    extend_plan,
    parse_shots,
    plan_take,
    window_seed,
)
from magihuman.take_prompts import sentences, split_dialogue

window_sizes = st.integers(3, (MAX_WINDOW_FRAMES - 1) // 4).map(lambda m: 4 * m + 1)


@settings(max_examples=400, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 3000), min_size=1, max_size=5),
    window=window_sizes,
    overlap=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    loudness_seed=st.none() | st.integers(0, 1000),
)
def test_windows_tile_the_take_exactly(lengths, window, overlap, seed, loudness_seed) -> None:
    if overlap >= (window - 1) // 4:
        overlap = 1
    loudness = None
    if loudness_seed is not None:  # joins snapped to the quiet frames of a recording
        loudness = random.Random(loudness_seed).choices([0.0, 0.01, 0.3], k=sum(lengths))
    plan = plan_take(
        [Shot(n) for n in lengths], seed=seed, window_frames=window, overlap_latents=overlap, loudness=loudness
    )
    assert plan.frames == sum(lengths)
    _assert_tiles(plan, {sum(lengths[:i]) for i in range(len(lengths))}, window, overlap, seed)


def _assert_tiles(plan, shot_starts: set[int], window: int, overlap: int, seed: int) -> None:
    covered = 0  # the next frame of the take no window has kept yet
    for w, prev in zip(plan.windows, (None, *plan.windows[:-1]), strict=True):
        # 4m+1 frames, within one call, decoding to as many frames as it has audio latents
        assert (w.frames - 1) % 4 == 0 and 1 <= w.frames <= window
        assert decoded_frames(w.latents) == w.frames
        # a new shot starts fresh; a continuation repeats exactly K latents' frames of the previous window
        if prev is None or prev.shot != w.shot:
            assert w.overlap == 0 and w.start in shot_starts and w.pinned_latents == 0
        else:
            assert w.overlap == 4 * (overlap - 1) + 1 and w.pinned_latents == overlap
            assert w.start == prev.start + prev.frames - w.overlap  # the pinned frames are the previous window's
        # no frame kept twice or missing at any join, and only the surplus (< 4 frames) trimmed
        assert w.first_new == covered and 0 < w.keep <= w.frames - w.overlap
        assert w.frames - w.overlap - w.keep < 4
        covered += w.keep
        assert w.seed == window_seed(seed, w.index)
    assert covered == plan.frames
    assert plan.generated_frames - plan.frames < 4


@settings(max_examples=150, deadline=None)
@given(
    first=st.integers(1, 1500),
    more=st.integers(1, 1500),
    window=window_sizes,
    overlap=st.integers(1, 3),
    new_shot=st.booleans(),
)
def test_a_continued_plan_keeps_the_take_s_windows_and_tiles_the_rest(first, more, window, overlap, new_shot) -> None:
    if overlap >= (window - 1) // 4:
        overlap = 1
    plan = plan_take([Shot(first)], seed=3, window_frames=window, overlap_latents=overlap)
    longer = extend_plan(plan, Shot(more, "More."), seed=3, new_shot=new_shot, window_frames=window)
    assert longer.frames == first + more
    _assert_tiles(longer, {0, first} if new_shot else {0}, window, overlap, 3)
    count = len(plan.windows)
    assert longer.windows[: count - 1] == plan.windows[:-1]
    last = longer.windows[count - 1]
    assert (last.start, last.frames, last.seed) == (
        plan.windows[-1].start,
        plan.windows[-1].frames,
        3 + (count - 1) * 2**34,
    )
    assert all(w.prompt == "More." for w in longer.windows[count:])


@settings(max_examples=200, deadline=None)
@given(frames=st.integers(1, 3000), window=window_sizes)
def test_windows_are_balanced_and_as_few_as_fit(frames, window) -> None:
    plan = plan_take([Shot(frames)], seed=0, window_frames=window)
    sizes = [w.frames - w.overlap for w in plan.windows[1:]]
    assert not sizes or max(sizes) - min(sizes) <= 1 * 4  # no short last window
    capacity = 1 + (window - 1) + (len(plan.windows) - 2) * (window - 1)  # one window fewer would not do
    assert len(plan.windows) == 1 or capacity < frames


def test_joins_move_into_pauses() -> None:
    """A 0.3-s pause 8 frames after where the balanced join would be: the join moves into it."""
    balanced = plan_take([Shot(150)], seed=0)
    join = balanced.windows[1].first_new
    loudness = [0.2] * 150
    loudness[join + 6 : join + 14] = [0.0] * 8
    snapped = plan_take([Shot(150)], seed=0, loudness=loudness)
    assert snapped.windows[1].first_new == join + 8 and len(snapped.windows) == len(balanced.windows)
    assert plan_take([Shot(150)], seed=0, loudness=[0.2] * 150) == balanced  # nothing quieter: no move


def test_one_window_plan_is_one_clip() -> None:
    plan = plan_take([Shot(101)], seed=5)
    assert len(plan.windows) == 1
    (w,) = plan.windows
    assert (w.start, w.frames, w.overlap, w.keep, w.seed) == (0, 101, 0, 101, 5)


def test_a_reset_every_m_windows_changes_only_which_windows_start_from_the_portrait() -> None:
    shots = [Shot(700), Shot(300)]
    plain = plan_take(shots, seed=4, window_frames=49)
    reset = plan_take(shots, seed=4, window_frames=49, reset_every=3)
    assert [dataclasses.replace(w, reset=False) for w in reset.windows] == list(plain.windows)
    for shot in (0, 1):
        in_shot = [w for w in reset.windows if w.shot == shot]
        assert [w.reset for w in in_shot] == [j > 0 and j % 3 == 0 for j in range(len(in_shot))]
    assert sum(w.reset for w in reset.windows) >= 3 and all(w.overlap for w in reset.windows if w.reset)
    with pytest.raises(ValueError, match="reset_every"):
        plan_take(shots, seed=4, window_frames=49, overlap_latents=2, reset_every=3)


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one shot"):
        plan_take([], seed=0)
    with pytest.raises(ValueError, match="4m\\+1"):
        plan_take([Shot(100)], seed=0, window_frames=100)
    with pytest.raises(ValueError, match="overlap_latents"):
        plan_take([Shot(100)], seed=0, window_frames=9, overlap_latents=2)


def test_shots_field() -> None:
    shots = parse_shots(json.dumps([{"prompt": " A man waves. ", "seconds": 2}, {"seconds": 1.5}]))
    assert shots == [Shot(50, "A man waves."), Shot(38, None)]
    assert parse_shots(None) is None and parse_shots("  ") is None
    for text, message in [
        ("[]", "non-empty JSON list"),
        ("{", "JSON list like"),
        ('{"seconds": 3}', "non-empty JSON list"),
        (json.dumps([{"seconds": 3}] * (MAX_SHOTS + 1)), f"at most {MAX_SHOTS} shots"),
        ('[{"seconds": 0.5}]', "shot 1 must last 1 to"),
        ('[{"seconds": 2}, {"seconds": "5"}]', "shot 2 must last"),
        ('[{"seconds": 2, "voice": "x"}]', "must be an object"),
        ('[{"seconds": 2, "prompt": ""}]', "non-empty text"),
        (json.dumps([{"seconds": 100}, {"seconds": 30}]), f"a take is at most {MAX_TAKE_SECONDS} s"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_shots(text)


def test_generated_speech_is_split_at_sentence_ends_across_a_shot_s_windows() -> None:
    said = "Good morning everyone. Today we talk about rivers. They carry water to the sea! That is all."
    prompt = build_prompt("A man at a desk.", [DialogueLine("The man", "English", said)], "Soft rain")
    prompts = split_dialogue(prompt, [(0, 50), (50, 100), (100, 400)])
    parsed = [parse_prompt(p) for p in prompts]
    assert all(d.startswith("A man at a desk.") and b == "Soft rain" for d, _, b in parsed)  # the scene stays
    spoken = [" ".join(line.text for line in lines) for _, lines, _ in parsed]
    assert spoken[0].startswith("Good morning everyone.") and "That is all." not in spoken[0]
    assert spoken[-1].endswith("That is all.") and "Good morning" not in spoken[-1]
    assert all(f'"{text}"' in p for text, p in zip(spoken, prompts, strict=True))  # quoted in the body too
    assert " ".join(dict.fromkeys(s for text in spoken for s in sentences(text))) == said  # all said, in order
    # nothing to split: one window, no dialogue block, or a language the model does not speak
    assert split_dialogue(prompt, [(0, 100)]) == [prompt]
    assert split_dialogue("A man waves.", [(0, 50), (50, 100)]) == ["A man waves."] * 2
    klingon = prompt.replace("English", "Klingon")
    assert split_dialogue(klingon, [(0, 50), (50, 100)]) == [klingon] * 2
