"""The studio's prompt enhancer: an "Enhance" button and a review panel (the rewrite, its changes, the duration
warning). The prompt box keeps the user's text until "Use this prompt", so an error or a slow endpoint never
touches it.
"""

from __future__ import annotations

import difflib
import json
import re
from types import SimpleNamespace

import gradio as gr

from magihuman.enhance import Enhanced, EnhancerError, enhance, max_lines, parse_scene

DIFF_COLOURS = {"added": "#16a34a", "removed": "#dc2626"}
ENHANCE_JOBS = {"concurrency_limit": 4, "concurrency_id": "enhance"}  # network waits, not GPU work
_TOKEN = re.compile(r"\s+|[^\s]+")
MIN_KEPT_WORDS = 3


def layout() -> SimpleNamespace:
    ui = SimpleNamespace()
    with gr.Row():
        ui.button = gr.Button("Enhance the prompt with your LLM", size="sm", elem_id="enhance", scale=0)
    with gr.Group(visible=False, elem_id="enhance-panel") as ui.panel:
        ui.rewrite = gr.Textbox(
            label="Enhanced prompt: edit it if you like, then use it (your own text stays in the prompt until then)",
            lines=8,
            elem_id="enhanced-prompt",
        )
        ui.diff = gr.HighlightedText(
            label="Changes against your text",
            combine_adjacent=True,
            show_legend=True,
            color_map=DIFF_COLOURS,
            elem_id="enhance-diff",
        )
        ui.warning = gr.Markdown(elem_id="enhance-warning")
        ui.structure = gr.JSON(label="Structure the LLM wrote", visible=False)
        with gr.Row():
            ui.use = gr.Button("Use this prompt", variant="primary", elem_id="enhance-use")
            ui.shorten = gr.Button("Ask for shorter lines", elem_id="enhance-shorten")
            ui.discard = gr.Button("Discard", elem_id="enhance-discard")
    return ui


def wire(ui: SimpleNamespace, prompt, language, seconds, description) -> None:
    """Events: /enhance is public (API and MCP tool); the rest is the page's own."""
    private = {"api_visibility": "private"}
    inputs = [prompt, language, seconds, description]
    answer = [ui.rewrite, ui.structure, ui.warning]
    review = {"fn": review_panel, "inputs": [prompt, ui.rewrite], "outputs": [ui.diff, ui.panel], **private}
    ui.button.click(enhance_prompt, inputs, answer, api_name="enhance", **ENHANCE_JOBS).success(**review)
    shortened = ui.shorten.click(shorten_lines, [*inputs, ui.structure, ui.warning], answer, **ENHANCE_JOBS, **private)
    shortened.success(**review)
    ui.rewrite.blur(**review)
    ui.use.click(lambda text: (text, gr.update(visible=False)), ui.rewrite, [prompt, ui.panel], **private)
    ui.discard.click(lambda: gr.update(visible=False), outputs=ui.panel, **private)


def enhance_prompt(
    idea: str,
    language: str | None = None,
    seconds: float | None = None,
    portrait_description: str | None = None,
) -> tuple[str, dict, str]:
    """Rewrite a rough idea into a prompt in the model's official format with the LLM the studio is configured
    with (an OpenAI-compatible endpoint), ready for /generate. Returns the prompt, the structure it was written
    from (appearance, setting, performance, camera, the spoken lines with language and emotion, background
    sound) and a warning when the lines are long for the duration ("" when they fit).

    Args:
        idea: who is on camera and what they say, in a sentence or two
        language: the spoken language: Mandarin, Cantonese, English, Japanese, Korean, German or French
        seconds: the clip duration the spoken lines must fit, up to 120 (a long take); empty: none asked for
        portrait_description: what the portrait shows, so that the description matches it (optional)
    """
    return _answer(lambda: _enhance(idea, language, seconds, portrait_description))


def shorten_lines(idea: str, language: str | None, seconds: float, description: str, structure, warning: str):
    """Ask again for the same scene with shorter lines (after a duration warning)."""
    try:
        most = max_lines(float(seconds) if seconds else None)
        earlier = Enhanced("", parse_scene(json.dumps(structure), most), warning.removeprefix("⚠️ "))
    except (TypeError, ValueError):
        raise gr.Error("Enhance the prompt first; then its lines can be shortened.") from None
    return _answer(lambda: _enhance(idea, language, seconds, description, shorten=earlier))


def _enhance(idea, language, seconds, description, shorten: Enhanced | None = None) -> Enhanced:
    return enhance(
        idea or "",
        portrait_description=description or "",
        language=language or None,
        seconds=float(seconds) if seconds else None,
        shorten=shorten,
    )


def _answer(run) -> tuple[str, dict, str]:
    try:
        result = run()
    except (EnhancerError, ValueError) as exc:
        raise gr.Error(str(exc), duration=None) from None
    return result.prompt, result.scene.as_dict(), f"⚠️ {result.warning}" if result.warning else ""


def review_panel(idea: str, rewrite: str):
    """The word-level changes from the idea to the rewrite, and the panel shown."""
    return diff_tokens(idea or "", rewrite or ""), gr.update(visible=True)


def diff_tokens(before: str, after: str) -> list[tuple[str, str | None]]:
    """(text, "added" | "removed" | None) pieces reading as `after`. Unchanged runs shorter than MIN_KEPT_WORDS
    count as changed: a rewrite shares "a" and "the" with any idea, which would chop the diff into confetti."""
    old, new = _TOKEN.findall(before), _TOKEN.findall(after)
    opcodes = difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes()
    pieces: list[tuple[str, str | None]] = []
    removed, added = [], []

    def flush() -> None:
        if removed:
            pieces.append(("".join(removed), "removed"))
        if added:
            pieces.append(("".join(added), "added"))
        removed.clear()
        added.clear()

    for index, (op, i1, i2, j1, j2) in enumerate(opcodes):
        inside = 0 < index < len(opcodes) - 1
        if op == "equal" and not (inside and sum(not t.isspace() for t in new[j1:j2]) < MIN_KEPT_WORDS):
            flush()
            pieces.append(("".join(new[j1:j2]), None))
        else:
            removed.extend(old[i1:i2])
            added.extend(new[j1:j2])
    flush()
    return pieces
