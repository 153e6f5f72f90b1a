"""A scene of several shots from the dialogue builder: "Add shot" appends the builder's current line to the
`shots` field, so the field stays the one place the scene lives (the API, the CLI and copy-as-code see it). The
summary is read back from the field, so a pasted or edited scene is listed too.
"""

from __future__ import annotations

import html
import json
from types import SimpleNamespace

import gradio as gr

from magihuman.config import FPS
from magihuman.prompts import parse_prompt
from magihuman.take_plan import MAX_TAKE_SECONDS, parse_shots
from studio.handlers import dialogue_to_prompt

DEFAULT_SHOT_SECONDS = 5


def add_shot(shots: str | None, prompt: str | None, description, speaker, language, line, background, seconds):
    """The main prompt gets the first shot's prompt when it is empty (a request needs one)."""
    seconds = float(seconds or 0)
    if not 1 <= seconds <= MAX_TAKE_SECONDS:
        raise gr.Error(f"A shot lasts 1 to {MAX_TAKE_SECONDS} seconds, not {seconds:g}.")
    shot_prompt, warning = dialogue_to_prompt(description, speaker, language, line, background, seconds)
    try:
        items = json.loads(shots) if shots and shots.strip() else []
    except json.JSONDecodeError:
        raise gr.Error("The Shots field is not a JSON list: fix it or press Clear shots, then add again.") from None
    if not isinstance(items, list):
        raise gr.Error("The Shots field is not a JSON list: fix it or press Clear shots, then add again.")
    items.append({"prompt": shot_prompt, "seconds": int(seconds) if seconds.is_integer() else seconds})
    value = json.dumps(items, ensure_ascii=False)
    try:
        parse_shots(value)
    except ValueError as exc:
        raise gr.Error(f"Cannot add this shot: {exc}.") from None
    return value, (prompt if prompt and prompt.strip() else shot_prompt), warning, summary(value)


def summary(shots: str | None) -> str:
    """The scene as a short numbered list (speaker, language, seconds, the first words); "" for no scene."""
    try:
        parsed = parse_shots(shots)
    except ValueError as exc:
        return f"⚠️ {html.escape(str(exc))}"
    if not parsed:
        return ""
    total = sum(shot.frames for shot in parsed) / FPS
    rows = [f"**Scene: {len(parsed)} shot{'s' * (len(parsed) > 1)}, {total:g} s**"]
    for number, shot in enumerate(parsed, start=1):
        _, lines, _ = parse_prompt(shot.prompt or "")
        said = f"{lines[0].speaker} ({lines[0].language}): “{lines[0].text[:60]}”" if lines else "the main prompt"
        rows.append(f"{number}. {shot.frames / FPS:g} s · {html.escape(said)}")
    return "\n".join(rows)


def layout(p: SimpleNamespace) -> None:
    with gr.Row():
        p.shot_seconds = gr.Number(
            DEFAULT_SHOT_SECONDS, label="Shot length (s)", minimum=1, maximum=MAX_TAKE_SECONDS, elem_id="shot-seconds"
        )
        p.add_shot = gr.Button("Add shot", elem_id="db-add-shot")
        p.clear_shots = gr.Button("Clear shots", elem_id="db-clear-shots")
    p.scene_summary = gr.Markdown(elem_id="db-scene")


def wire(p: SimpleNamespace) -> None:
    private = {"api_visibility": "private"}
    shots, prompt = p.controls["shots"], p.controls["prompt"]
    p.add_shot.click(
        add_shot,
        [shots, prompt, *p.dialogue, p.shot_seconds],
        [shots, prompt, p.line_warning, p.scene_summary],
        **private,
    )
    p.clear_shots.click(lambda: ("", ""), outputs=[shots, p.scene_summary], **private)
    shots.blur(summary, shots, p.scene_summary, **private)
