"""The dialogue builder's "Add shot" (studio.scene): lines with their own speaker, language and length become the
`shots` field, which the engine makes as one take lasting the sum of the shots."""

from __future__ import annotations

import json

import gradio as gr
import pytest

import app as studio_app
from magihuman.engine import GenerationRequest
from magihuman.prompts import parse_prompt
from magihuman.take_plan import parse_shots
from studio import scene
from studio.runtime import EngineSlot
from tests.long_take_stub import Stub, make_stub

SCENE = "A woman and a man sit at a kitchen table in morning light. Static medium shot."
SHOTS = [
    ("A woman in a blue cardigan", "English", "Did you sleep at all?", 1),
    ("A man with a grey beard", "German", "Kaum. Der Hund hat die ganze Nacht gebellt.", 1.5),
    ("A woman in a blue cardigan", "French", "Alors, du café.", 2),
]


@pytest.fixture()
def stub(tiny_engine, tmp_path) -> Stub:
    return make_stub(tiny_engine, tmp_path)


def _build_scene(prompt: str = "") -> tuple[str, str, str]:
    shots = ""
    for speaker, language, line, seconds in SHOTS:
        shots, prompt, _, listing = scene.add_shot(shots, prompt, SCENE, speaker, language, line, "", seconds)
    return shots, prompt, listing


def test_add_shot_builds_the_shots_field_one_line_at_a_time() -> None:
    shots, prompt, listing = _build_scene()
    items = json.loads(shots)
    assert [item["seconds"] for item in items] == [1, 1.5, 2]
    for item, (speaker, language, line, _) in zip(items, SHOTS, strict=True):
        description, lines, _ = parse_prompt(item["prompt"])
        assert [(ln.speaker, ln.language, ln.text) for ln in lines] == [(speaker, language, line)]
        assert description.startswith(SCENE[:40])
    assert [shot.frames for shot in parse_shots(shots)] == [25, 38, 50]
    assert prompt == items[0]["prompt"]  # an empty main prompt gets the first shot's
    assert _build_scene("My own prompt.")[1] == "My own prompt."  # a written one is kept
    assert listing.splitlines()[0] == "**Scene: 3 shots, 4.52 s**"  # 1.5 s is 38 frames
    assert "2. 1.52 s · A man with a grey beard (German): “Kaum." in listing
    assert scene.summary("") == "" and scene.summary('[{"seconds": 0}]').startswith("⚠️ shot 1 must last")


def test_add_shot_refuses_what_the_scene_cannot_hold() -> None:
    with pytest.raises(gr.Error, match="1 to 120 seconds"):
        scene.add_shot("", "", SCENE, "A man", "English", "Hello.", "", 0)
    with pytest.raises(gr.Error, match="Write the line"):
        scene.add_shot("", "", SCENE, "A man", "English", "  ", "", 5)
    with pytest.raises(gr.Error, match="not a JSON list"):
        scene.add_shot("{oops", "", SCENE, "A man", "English", "Hello.", "", 5)
    full = json.dumps([{"seconds": 100}])
    with pytest.raises(gr.Error, match="at most 120 s"):
        scene.add_shot(full, "", SCENE, "A man", "English", "Hello.", "", 30)


def test_the_built_scene_is_one_take_lasting_the_sum_of_its_shots(stub) -> None:
    shots, prompt, _ = _build_scene()
    result = stub.engine.generate(GenerationRequest(prompt=prompt, shots=shots, seed=4))
    plan = result.take.plan
    assert plan.frames == 25 + 38 + 50
    assert [window.shot for window in plan.windows if window.overlap == 0] == [0, 1, 2]
    said = [parse_prompt(kept.prompt)[1][0].language for kept in result.take.windows]
    assert said[0] == "English" and said[-1] == "French"


def test_the_studio_has_the_add_shot_buttons_wired(tiny_engine) -> None:
    demo = studio_app.build_demo(EngineSlot.ready(tiny_engine))
    wired = {fn.fn for fn in demo.fns.values()}
    assert scene.add_shot in wired and scene.summary in wired
