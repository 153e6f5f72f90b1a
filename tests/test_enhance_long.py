"""The prompt enhancer for long takes (over 10 s, up to 120 s), against the local chat-completions server
(tests/chat_server.py): it asks for lines through the whole duration, accepts as many lines as the take holds,
warns against the take's length, and its prompt is split across the take's windows by the engine."""

from __future__ import annotations

import json

import pytest

from magihuman.enhance import MAX_LINES, enhance, max_lines, parse_scene
from magihuman.prompts import parse_prompt
from magihuman.take_prompts import split_dialogue
from tests.chat_server import chat_server
from tests.test_enhance import config, scene_json

SENTENCES = [
    "Good morning, and welcome to the bakery.",
    "We light the oven at four every day.",
    "The sourdough rests for a whole night before it is baked.",
    "On Saturdays we also make a rye loaf with caraway.",
    "Our croissants use butter from the farm next door.",
    "Children get a small cookie with every order.",
    "We close at two, when the shelves are empty.",
    "Thank you for coming, and see you tomorrow.",
]


@pytest.fixture
def server():
    with chat_server() as running:
        yield running


def test_a_40_s_take_gets_lines_through_its_whole_duration(server) -> None:
    server.replies = [scene_json(lines=[{"text": text} for text in SENTENCES])]
    result = enhance("a baker tells the day of her shop", language="English", seconds=40, config=config(server))

    user = server.requests[0]["messages"][-1]["content"]
    assert "40 seconds" in user and "through the whole duration" in user and f"at most {max_lines(40)}" in user
    _, lines, _ = parse_prompt(result.prompt)
    assert [line.text for line in lines] == SENTENCES  # 8 lines: more than one clip's MAX_LINES, kept
    assert len(SENTENCES) > MAX_LINES and result.warning is None  # ~30 s of speech fits 40 s

    # The engine's long take says them window by window: each window the sentences its time overlaps, all of
    # them in order over the take's 10 windows.
    spans = [(first, first + 100) for first in range(0, 1000, 100)]
    windows = [[line.text for line in parse_prompt(prompt)[1]] for prompt in split_dialogue(result.prompt, spans)]
    said = [sentence for window in windows for text in window for sentence in text.split(". ")]
    assert list(dict.fromkeys(s.rstrip(".") for s in said)) == [s.rstrip(".") for s in SENTENCES]
    assert max(len(window) for window in windows) == 1 and len(windows[0][0]) < 2 * len(SENTENCES[0])


def test_the_lines_are_checked_against_the_take_not_a_clip(server) -> None:
    server.replies = [scene_json(lines=[{"text": text} for text in SENTENCES[:MAX_LINES]])]
    short = enhance("a baker", seconds=10, config=config(server))  # 6 lines, ~20 s of speech, in 10 s
    assert short.warning is not None and "the clip is 10 s" in short.warning
    assert "raise the duration" in short.warning  # a take may be up to 120 s long
    with pytest.raises(ValueError, match="at most 6"):
        parse_scene(scene_json(lines=[{"text": "Hello."}] * 7), max_lines(10))
    assert parse_scene(scene_json(lines=[{"text": "Hello."}] * 7), max_lines(11)).lines[6].text == "Hello."
    assert max_lines(120) == MAX_LINES * 12


def test_a_take_over_two_minutes_is_refused_before_asking(server) -> None:
    with pytest.raises(ValueError, match="from 1 to 120"):
        enhance("a baker", seconds=121, config=config(server))
    assert server.requests == []


def test_the_studio_shortens_a_long_take_s_lines(server, monkeypatch) -> None:
    """The "shorter lines" button sends back a long take's structure (more lines than one clip holds)."""
    from studio.enhance import shorten_lines

    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("MAGIHUMAN_ENHANCER_MODEL", "test-model")
    structure = json.loads(scene_json(lines=[{"text": text} for text in SENTENCES]))
    server.replies = [scene_json(lines=[{"text": text} for text in SENTENCES[:4]])]
    prompt, _, warning = shorten_lines("a baker", "English", 20, "", structure, "⚠️ too long")
    assert [line.text for line in parse_prompt(prompt)[1]] == SENTENCES[:4] and warning == ""
    assert SENTENCES[-1] in server.requests[0]["messages"][-2]["content"]
