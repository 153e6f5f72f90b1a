"""daVinci-MagiHuman Studio: a Gradio 6 front end for the in-process engine in `magihuman/`.

`build_demo(slot)` lays out the page and wires its events (the handlers are `studio/handlers.py`; the controls
come from the request fields of `magihuman/fields.py`). `demo` is the one app, built once at import with its
CSS: `gradio app.py`, Hugging Face Spaces and `main()` all serve it. `main()` parses flags and launches it
with explicit security options.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import SimpleNamespace

import gradio as gr

from magihuman.config import MEDIA_LIMITS, SR_RESOLUTIONS
from magihuman.enhance import MODEL_ENV as ENHANCER_MODEL_ENV
from magihuman.fields import FIELD, FIELDS
from magihuman.options import EngineOptions
from magihuman.prompts import LANGUAGE_NAMES
from studio import cards as cards_ui
from studio import enhance as enhance_ui
from studio import gpu, space, startup
from studio.controls import RANDOM_SEED_ID, control, empty_values_js
from studio.examples import example_labels, example_values
from studio.handlers import (
    Studio,
    audio_hint,
    code_for,
    dialogue_to_prompt,
    prompt_to_dialogue,
)
from studio.player import ComparePlayer
from studio.replicas import replica_options
from studio.runtime import EngineSlot
from studio.scorecard import (
    CARD_CSS,
    Scorer,
    best_of_controls,
    card_controls,
    gallery_listing,
    order_control,
    score_controls,
    wire_scoring,
)

AUTH_ENV = startup.AUTH_ENV
MAX_QUEUE = 16
MAX_UPLOAD = f"{MEDIA_LIMITS.max_image_bytes // 2**20}mb"
GPU_JOBS = "gpu"  # one concurrency group: one job on the GPU at a time
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
PREVIEW_BANNER = (
    "**Preview engine:** tiny random weights, no GPU. Clips have the right size, length and audio, but show "
    "noise. Run on a CUDA machine for real output."
)


class StudioBlocks(gr.Blocks):
    """The studio's Blocks: launched with its CSS unless the caller passes other CSS (Gradio 6 takes CSS at
    `launch()`, and every way of serving the app ends in this `launch`)."""

    def launch(self, *args, css: str | None = None, **kwargs):
        return super().launch(*args, css=CSS if css is None else css, **kwargs)


def build_demo(slot: EngineSlot, gpu_functions=gpu) -> StudioBlocks:
    """The studio UI for an engine slot (loading or ready). No side effects: nothing loads until the first page
    load asks the slot to start (main() starts it at once). `gpu_functions`: who runs the GPU work (studio.Studio)."""
    studio = Studio(slot, gpu_functions)
    scorer = Scorer(studio)
    gpu.bind_slot(slot)
    with StudioBlocks(title="daVinci-MagiHuman Studio", delete_cache=(3600, 3600)) as demo:
        page = _layout()
        _wire(demo, page, studio, scorer)
    demo.studio = studio  # for tests and main(): the takes to clean up at exit
    demo.scorer = scorer
    return demo


def _layout() -> SimpleNamespace:
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
            p.cards = cards_ui.layout()
            with gr.Accordion("Your own speech (optional)", open=False):
                place("audio")
                p.audio_note = gr.Markdown(elem_id="audio-hint")
            with gr.Accordion("Advanced", open=False):
                place(*(f.name for f in FIELDS if f.advanced and f.name not in p.controls))
        with gr.Column(scale=6):
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


def _wire(demo: gr.Blocks, p: SimpleNamespace, studio: Studio, scorer: Scorer) -> None:
    """The events. Public API: /generate (one parameter per request field), /upscale, /stop and /score; every
    other event is private."""
    inputs = [p.controls[f.name] for f in FIELDS]
    answer = [p.player, p.downloads, p.seed_used, p.details, p.take_id]
    private = {"api_visibility": "private"}
    listing = {
        "fn": gallery_listing(scorer),
        "inputs": [p.history, p.order],
        "outputs": [p.gallery, p.compare_a, p.compare_b, p.history],
    }
    remember = {"fn": studio.remember, "inputs": [p.take_id, p.history], "outputs": p.history}
    enable_upscale = {"fn": lambda: gr.update(interactive=True), "outputs": p.upscale}
    gpu_job = {"concurrency_limit": studio.jobs_at_once, "concurrency_id": GPU_JOBS}
    as_sent = {"js": empty_values_js(FIELDS)}  # the page sends None for an empty number box (not in the API)

    gen_event = p.generate.click(studio.generate, inputs, answer, api_name="generate", **as_sent, **gpu_job)
    gen_event.success(**remember, **private).then(**listing, **private)
    gen_event.success(studio.code_for_take, p.take_id, [p.python_code, p.cli_code], **private)
    gen_event.success(**enable_upscale, **private)
    up_event = p.upscale.click(studio.upscale, [p.take_id, p.upscale_to], answer, api_name="upscale", **gpu_job)
    up_event.success(**remember, **private).then(**listing, **private)
    p.stop.click(studio.stop, cancels=[gen_event, up_event], api_name="stop", queue=False)

    selected = p.gallery.select(studio.select, p.history, [*answer, *inputs, p.random_seed], **private)
    selected.success(**enable_upscale, **private)
    wire_scoring(p, scorer, [gen_event, up_event], [selected], listing, gpu_job)
    p.controls["seed"].input(lambda: False, outputs=p.random_seed, queue=False, **private)
    p.compare.click(studio.compare, [p.compare_a, p.compare_b], p.player, **private)
    removed = p.remove.click(studio.remove, [p.take_id, p.history], [p.history, p.player, p.take_id], **private)
    removed.success(**listing, **private)
    p.write_code.click(code_for, inputs, [p.python_code, p.cli_code], **as_sent, **private)

    prompt, seconds = p.controls["prompt"], p.controls["seconds"]
    p.build.click(dialogue_to_prompt, [*p.dialogue, seconds], [prompt, p.line_warning], **private)
    p.read.click(prompt_to_dialogue, prompt, p.dialogue, **private)
    enhance_ui.wire(p.enhancer, prompt, p.dialogue[2], seconds, p.dialogue[0])  # language, character and scene
    cards_ui.wire(
        demo,
        p.cards,
        portrait=p.controls["portrait"],
        audio=p.controls["audio"],
        dialogue=p.dialogue,
        seed=p.controls["seed"],
        random_seed=p.random_seed,
    )
    prompt.blur(studio.prompt_warning, prompt, p.prompt_warning, **private)
    p.controls["audio"].change(audio_hint, [p.controls["audio"], seconds], p.audio_note, **private)

    slot = studio.slot

    def refresh():
        state = slot.status.state
        preview = slot.engine is not None and slot.engine.preview
        return (
            studio.status_markdown(),
            gr.update(interactive=state == "ready"),
            gr.update(value=PREVIEW_BANNER if preview else "", visible=preview),
            gr.update(active=state == "loading"),
        )

    timer = gr.Timer(1.0, active=True)
    ticks = [p.status, p.generate, p.banner, timer]
    timer.tick(refresh, outputs=ticks, queue=False, **private)
    demo.load(lambda: slot.start() and None, queue=False, **private)
    demo.load(refresh, outputs=ticks, queue=False, **private)
    demo.load(**listing, queue=False, **private)


def main(argv: list[str] | None = None) -> None:
    args = startup.parse_args(argv)
    replicas = replica_options(args)  # None without --replicas / --ray: Ray is never imported
    auth = startup.parse_auth(args.auth or os.environ.get(AUTH_ENV))
    if args.enhancer_model:  # the enhancer reads its configuration from the environment at each call
        os.environ[ENHANCER_MODEL_ENV] = args.enhancer_model
    if args.share:
        warnings.warn(
            "--share makes a PUBLIC link: anyone with it can use this GPU" + ("" if auth else " (no --auth set)"),
            stacklevel=1,
        )
    # Ranks other than 0 served rank 0's DiT forwards (with replicas, --cp is each replica's group instead).
    if replicas is None and not startup.join(EngineOptions.from_args(args)):
        return
    app = demo
    if replicas is not None:  # the jobs run on engine replicas; this process loads no engine
        from studio.replicas import replica_demo

        app = replica_demo(build_demo, replicas, args)
        app.queue(max_size=MAX_QUEUE)  # events start at once (no concurrency limit): the replicas queue the jobs
    app.studio.slot.start()
    app.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        max_file_size=MAX_UPLOAD,
        show_error=True,
        mcp_server=True if args.mcp else None,  # None: Gradio reads $GRADIO_MCP_SERVER
    )


# On ZeroGPU the engine must load now, in the main thread (studio.gpu.start_slot); elsewhere it loads in the
# background once main() or the first page asks.
demo = build_demo(
    gpu.start_slot(startup.load_studio_engine)
    if space.ON_ZEROGPU
    else EngineSlot(space.with_space_weights(startup.load_studio_engine))
)
demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)

if __name__ == "__main__":
    main(sys.argv[1:])
