"""daVinci-MagiHuman Studio: a Gradio 6 front end for the in-process engine in `magihuman/`. `demo`, built once
at import, is what `gradio app.py`, Spaces and `main()` serve; the page's components are `studio/layout.py`.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import SimpleNamespace

import gradio as gr

from magihuman.config import MEDIA_LIMITS
from magihuman.enhance import MODEL_ENV as ENHANCER_MODEL_ENV
from magihuman.fields import FIELDS
from magihuman.options import EngineOptions
from studio import cards as cards_ui
from studio import enhance as enhance_ui
from studio import gpu, live, scene, space, startup, take_actions
from studio.controls import empty_values_js
from studio.handlers import Studio, audio_hint, code_for, dialogue_to_prompt, prompt_to_dialogue
from studio.layout import CSS, layout
from studio.replicas import replica_options
from studio.runtime import EngineSlot
from studio.scorecard import Scorer, gallery_listing, wire_scoring

AUTH_ENV = startup.AUTH_ENV
MAX_QUEUE = 16
MAX_UPLOAD = f"{MEDIA_LIMITS.max_image_bytes // 2**20}mb"
GPU_JOBS = "gpu"  # one concurrency group: one job on the GPU at a time
PREVIEW_BANNER = (
    "**Preview engine:** tiny random weights, no GPU. Clips have the right size, length and audio, but show "
    "noise. Run on a CUDA machine for real output."
)


class StudioBlocks(gr.Blocks):
    """Launched with the studio's CSS: Gradio 6 takes CSS at `launch()`, where every way of serving ends."""

    def launch(self, *args, css: str | None = None, **kwargs):
        return super().launch(*args, css=CSS if css is None else css, **kwargs)


def build_demo(slot: EngineSlot, gpu_functions=gpu) -> StudioBlocks:
    """The studio for an engine slot, without side effects: nothing loads until a page load (or main()) starts
    the slot."""
    studio = Studio(slot, gpu_functions)
    scorer = Scorer(studio)
    gpu.bind_slot(slot)
    with StudioBlocks(title="daVinci-MagiHuman Studio", delete_cache=(3600, 3600)) as demo:
        page = layout()
        _wire(demo, page, studio, scorer)
    demo.studio = studio
    demo.scorer = scorer
    return demo


def _wire(demo: gr.Blocks, p: SimpleNamespace, studio: Studio, scorer: Scorer) -> None:
    """The events. Public API: /generate (one parameter per request field), /upscale, /stop, /score, and /resume,
    /continue_take, /reroll_window (studio.take_actions); every other event is private."""
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

    live.wire(p, studio)  # before Generate's own event: the live view of a long take
    gen_event = p.generate.click(studio.generate, inputs, answer, api_name="generate", **as_sent, **gpu_job)
    gen_event.success(**remember, **private).then(**listing, **private)
    gen_event.success(studio.code_for_take, p.take_id, [p.python_code, p.cli_code], **private)
    gen_event.success(**enable_upscale, **private)
    up_event = p.upscale.click(studio.upscale, [p.take_id, p.upscale_to], answer, api_name="upscale", **gpu_job)
    up_event.success(**remember, **private).then(**listing, **private)
    actions = take_actions.wire(p, studio, gen_event, answer, remember, listing, gpu_job)  # resume, continue, re-roll
    p.stop.click(studio.stop, cancels=[gen_event, up_event, *actions], api_name="stop", queue=False)

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
    scene.wire(p)
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
