"""The studio page: the components and where they sit. `layout()` builds them inside the caller's Blocks and
returns the ones that app.py's events connect."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from magihuman.config import SR_RESOLUTIONS
from magihuman.fields import FIELD, FIELDS
from magihuman.prompts import LANGUAGE_NAMES
from studio import cards as cards_ui
from studio import enhance as enhance_ui
from studio import live, scene, take_actions
from studio.controls import RANDOM_SEED_ID, control
from studio.examples import example_labels, example_values
from studio.player import ComparePlayer
from studio.scorecard import CARD_CSS, best_of_controls, card_controls, order_control, score_controls

HISTORY_KEY = "magihuman-studio-takes"
CSS = (
    """
#status-line { font-size: 0.9em; opacity: 0.85; }
#preview-banner { border: 1px solid #d97706; background: #fef3c7; color: #78350f; border-radius: 8px;
                  padding: 8px 12px; }
#details pre { font-size: 0.85em; }
"""
    + CARD_CSS
)


def layout() -> SimpleNamespace:
    """The page: inputs on the left (one control per request field, the dialogue builder), the player, the
    takes and copy-as-code on the right. Returns the components the events connect."""
    p = SimpleNamespace(controls={})

    def place(*names: str) -> None:
        for name in names:
            p.controls[name] = control(FIELD[name])

    gr.Markdown(
        "# daVinci-MagiHuman Studio\nTalking-human video with lip-synced speech from a prompt, a portrait and "
        "(optionally) your own voice. Generate fast 256p takes, compare them, then upscale the one you like."
    )
    p.banner = gr.Markdown(visible=False, elem_id="preview-banner")
    p.status = gr.Markdown(elem_id="status-line")
    p.history = gr.BrowserState([], storage_key=HISTORY_KEY)
    with gr.Row():
        with gr.Column(scale=5):
            place("portrait", "prompt")
            p.enhancer = enhance_ui.layout()
            p.prompt_warning = gr.Markdown(elem_id="prompt-warning")
            with gr.Row():
                place("resolution", "aspect")
            with gr.Row():
                place("seconds", "seed")
                p.random_seed = gr.Checkbox(True, label="Random seed", elem_id=RANDOM_SEED_ID, scale=0)
            with gr.Row():
                p.generate = gr.Button("Generate", variant="primary", interactive=False, elem_id="generate")
                p.stop = gr.Button("Stop", variant="stop", elem_id="stop")
            best_of_controls(p)
            with gr.Accordion("Dialogue builder", open=True, elem_id="dialogue-builder"):
                description = gr.Textbox(label="Character and scene", lines=3, elem_id="db-description")
                with gr.Row():
                    speaker = gr.Textbox(label="Speaker tag", value="A young woman", elem_id="db-speaker")
                    language = gr.Dropdown(
                        list(LANGUAGE_NAMES), value="English", label="Language", elem_id="db-language"
                    )
                line = gr.Textbox(label="What they say", lines=2, elem_id="db-line")
                background = gr.Textbox(label="Background sound", elem_id="db-background")
                p.dialogue = [description, speaker, language, line, background]
                with gr.Row():
                    p.build = gr.Button("Write the prompt", elem_id="db-build")
                    p.read = gr.Button("Fill from the prompt", elem_id="db-read")
                p.line_warning = gr.Markdown(elem_id="db-warning")
                scene.layout(p)  # "Add shot": a scene of several shots into the Shots field
            p.cards = cards_ui.layout()
            with gr.Accordion("Your own speech (optional)", open=False):
                place("audio")
                p.audio_note = gr.Markdown(elem_id="audio-hint")
            with gr.Accordion("Advanced", open=False):
                place(*(f.name for f in FIELDS if f.advanced and f.name not in p.controls))
        with gr.Column(scale=6):
            live.layout(p)  # a long take's windows, playing while it renders
            p.player = ComparePlayer(label="Player", elem_id="compare-player")
            with gr.Row():
                p.upscale_to = gr.Radio(SR_RESOLUTIONS, value=SR_RESOLUTIONS[0], label="Upscale this take to")
                p.upscale = gr.Button("Upscale this take", interactive=False, elem_id="upscale")
            p.seed_used = gr.Number(label="Seed used", interactive=False, precision=0, elem_id="seed-used")
            p.downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
            p.details = gr.Markdown(label="Details", elem_id="details")
            card_controls(p)
            p.take_id = gr.Textbox(label="Take id", visible=False, elem_id="take-id")
            with gr.Accordion("Takes of this browser", open=True, elem_id="history"):
                p.gallery = gr.Gallery(
                    label="Select a take: it plays, and its settings fill the inputs",
                    columns=4,
                    height="auto",
                    allow_preview=False,
                    elem_id="takes",
                )
                order_control(p)
                with gr.Row():
                    p.compare_a = gr.Dropdown(label="Compare take", elem_id="compare-a")
                    p.compare_b = gr.Dropdown(label="with take", elem_id="compare-b")
                with gr.Row():
                    p.compare = gr.Button("Compare side by side", elem_id="compare")
                    p.remove = gr.Button("Remove the selected take", variant="secondary", elem_id="remove")
                take_actions.layout(p)  # Resume, Continue this take, Re-roll window N
            with gr.Accordion("Copy as code", open=False, elem_id="copy-as-code"):
                p.write_code = gr.Button("Write the code for these settings", elem_id="write-code")
                p.python_code = gr.Code(language="python", label="gradio_client", elem_id="python-code")
                p.cli_code = gr.Code(language="shell", label="Command line", elem_id="cli-code")
            score_controls(p)
    gr.Examples(
        examples=example_values(),
        example_labels=example_labels(),
        inputs=[p.controls["portrait"], p.controls["prompt"], *p.dialogue],
        label="Examples (the portrait is public domain: see assets/LICENSE.md)",
        cache_examples=False,
    )
    return p
