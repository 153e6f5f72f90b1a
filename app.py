"""daVinci-MagiHuman Studio: a Gradio 6 front end for the in-process engine in `magihuman/`.

`build_demo(slot)` builds the UI without side effects; `demo` is the module-level app for Hugging Face
Spaces and `gradio app.py`; `main()` parses flags and launches with explicit security options. Handlers
only validate, call the engine and map its exceptions to messages: no model logic lives here.
"""

from __future__ import annotations

import argparse
import gc
import html
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import gradio as gr
import spaces
import torch

from magihuman.__main__ import timing_table
from magihuman.build import default_model_size, load_engine
from magihuman.config import (
    DEFAULT_SECONDS,
    MAX_SECONDS,
    MEDIA_LIMITS,
    MIN_SECONDS,
    REQUEST_LIMITS,
    RESOLUTIONS,
    SAMPLING,
)
from magihuman.engine import GenerationRequest, Result
from magihuman.errors import GenerationCancelled, MagiHumanError
from magihuman.optimize import SpeedFlags, add_speed_arguments, warm_up
from magihuman.prompts import (
    EXAMPLES,
    LANGUAGE_NAMES,
    DialogueLine,
    PromptExample,
    build_prompt,
    line_length_warning,
    prompt_length_warning,
)
from studio.player import ComparePlayer
from studio.runtime import CancelFlags, EngineSlot, TakeStore, gpu_seconds
from studio.zerogpu import compile_shared_layers, example_inputs

ASSETS = Path(__file__).resolve().parent / "assets"
AUTH_ENV = "MAGIHUMAN_AUTH"
MAX_QUEUE = 16
MAX_UPLOAD = f"{MEDIA_LIMITS.max_image_bytes // 2**20}mb"
GPU_JOBS = "gpu"  # one concurrency group: one job on the GPU at a time
SR_TIERS = [name for name, res in RESOLUTIONS.items() if res.sr_model is not None]

PHASES = {
    "text": "Encoding the prompt",
    "image": "Encoding the portrait",
    "audio": "Encoding your audio",
    "base": "Base 256p",
    "sr": "Super-resolution",
    "decode": "Decoding video",
    "mux": "Writing mp4",
}

# The example with a portrait: its description matches the public-domain photograph in assets/portraits.
PORTRAIT_EXAMPLE = PromptExample(
    title="Astronaut (English, with portrait)",
    description=(
        "A woman in her late thirties with short light-brown hair and a calm, confident smile sits in an orange "
        "flight suit in front of an American flag and a model of the space shuttle. She looks straight into the "
        'camera and says, "Liftoff is the loudest quiet moment of your life." Her lips part and round with each '
        "word, her jaw moves in small even steps, and her eyebrows lift slightly on the last words; her voice is "
        "clear, mid-pitched and measured. Static medium close-up at eye level, even studio lighting, the "
        "background softly in focus."
    ),
    speaker="An astronaut in an orange suit",
    language="English",
    line="Liftoff is the loudest quiet moment of your life.",
    background=None,
)
EXAMPLE_ROWS = [(ASSETS / "portraits" / "eileen_collins.jpg", PORTRAIT_EXAMPLE)] + [(None, ex) for ex in EXAMPLES]

CSS = """
#status-line { font-size: 0.9em; opacity: 0.85; }
#preview-banner { border: 1px solid #d97706; background: #fef3c7; color: #78350f; border-radius: 8px;
                  padding: 8px 12px; }
#timings pre { font-size: 0.85em; }
"""


# ---------------------------------------------------------------------------------------------------------
# 1. Handlers: validate, call the engine, map exceptions to messages
# ---------------------------------------------------------------------------------------------------------


class Studio:
    """The state the handlers share: the engine slot, the recent takes and the per-session cancel flags."""

    def __init__(self, slot: EngineSlot) -> None:
        self.slot = slot
        self.takes = TakeStore()
        self.cancels = CancelFlags()

    def engine(self):
        status = self.slot.status
        if status.state == "failed":
            raise gr.Error(f"The engine failed to load: {status.message}", print_exception=False)
        engine = self.slot.engine
        if engine is None:
            raise gr.Error(f"The engine is still loading ({status.message}); try again in a moment.")
        return engine

    def status_markdown(self) -> str:
        status = self.slot.status
        text = html.escape(status.message)
        if status.state == "loading":
            text += f" ({status.seconds:.0f} s)"
        return f"**Engine {status.state}:** {text}"

    def generate(
        self,
        portrait: str | None,
        prompt: str,
        audio: str | None,
        resolution: str,
        aspect: str,
        seconds: float,
        base_model: str,
        steps: float,
        sr_steps: float,
        guidance: float,
        seed: float | None,
        randomize_seed: bool,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ):
        engine = self.engine()
        gen_request = GenerationRequest(
            prompt=prompt or "",
            image=portrait or None,
            audio=audio or None,
            resolution=resolution,
            aspect=aspect,
            seconds=_whole(seconds, "duration"),
            seed=None if randomize_seed else _whole(seed, "seed"),
            base_model=base_model,
            steps=_whole(steps, "steps"),
            guidance=float(guidance) if base_model == "base" and guidance is not None else None,
            sr_steps=_whole(sr_steps, "super-resolution steps"),
        )
        result = self._run(request, progress, lambda cancel, report: run_on_gpu(engine, gen_request, report, cancel))
        take_id = self.takes.add(result.take)
        return self._outputs(result, take_id)

    def upscale(self, take_id: str, resolution: str, request: gr.Request, progress: gr.Progress = gr.Progress()):
        engine = self.engine()
        take = self.takes.get(take_id or "")
        if take is None:
            raise gr.Error("No take to upscale: generate a clip first (takes are kept for the latest 32 clips).")
        result = self._run(
            request, progress, lambda cancel, report: upscale_on_gpu(engine, take, resolution, report, cancel)
        )
        return self._outputs(result, take_id)

    def prompt_warning(self, prompt: str) -> str:
        """The prompt's length against the request limit and the text encoder's 640-token cap (when loaded)."""
        engine = self.slot.engine
        warning = prompt_length_warning(prompt or "", engine.models.text.count_tokens if engine else None)
        return f"⚠️ {warning}" if warning else ""

    def stop(self, request: gr.Request) -> None:
        self.cancels.cancel(_session(request))

    def _run(self, request: gr.Request, progress: gr.Progress, job) -> Result:
        session = _session(request)
        cancel = self.cancels.fresh(session)
        client_gone = _client_gone()

        def report(phase: str, step: int, total: int) -> None:
            if client_gone():
                cancel.set()  # nobody is waiting for this clip any more: stop at the next step
            progress((step, total), desc=f"{PHASES.get(phase, phase)} {step}/{total}")

        try:
            return job(cancel, report)
        except GenerationCancelled as exc:
            raise gr.Error(f"Stopped ({exc}). Nothing was lost: change the settings and generate again.") from exc
        except MagiHumanError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        except torch.OutOfMemoryError:
            pass  # handled below, once the traceback (and the tensors its frames hold) is gone
        finally:
            self.cancels.done(session, cancel)
        _free_gpu_memory()
        raise gr.Error(
            "The GPU ran out of memory for this clip. Choose a smaller tier (256p, or 540p instead of 1080p), a "
            "shorter clip or the distilled model, then generate again.",
            print_exception=False,
        )

    def _outputs(self, result: Result, take_id: str):
        sr_label = None
        if result.sr_video_path is not None:
            sr_label = next(n for n in RESOLUTIONS if result.sr_video_path.name.endswith(f"{n}.mp4"))
        files = [str(result.video_path)] + ([str(result.sr_video_path)] if result.sr_video_path else [])
        return (
            ComparePlayer.value_for(result.video_path, result.sr_video_path, sr_label),
            files,
            result.seed,
            f"```\n{timing_table(result.timings, result.peak_memory_gb)}\n```",
            take_id,
        )


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def _client_gone() -> Callable[[], bool]:
    """Whether the browser tab or API client that started the running event has gone, or has cancelled it.

    Gradio 6.31 marks a running event `alive = False` when its event stream closes (tab closed, script
    killed), and forgets it when a client cancels it (gradio_client's `job.cancel()`), but in neither case
    stops a function that is already running: the progress callback asks this after every step and cancels.
    Always False outside a queued event.
    """
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    events = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", None)
    event = events.get(event_id) if isinstance(events, dict) else None
    if event is None:
        return lambda: False
    return lambda: not getattr(event, "alive", True) or event_id not in events


def _upload_as_is(image: gr.Image) -> gr.Image:
    """Hand the handler the uploaded file itself, for `magihuman.media.load_portrait` to check and convert.

    Gradio's own image preprocessing opens every upload with Pillow and converts it to RGB first: a text file,
    an empty file or a 20000×20000 header then fails there with a technical message naming the server path, a
    16-bit PNG is clipped to white and transparency turns black. (An instance attribute, not a subclass: Gradio
    writes a `.pyi` stub next to any module that defines a component class.)
    """
    convert = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return payload.path  # Gradio has already checked that this is one of its own uploads
        return convert(payload)

    image.preprocess = preprocess
    return image


def _free_gpu_memory() -> None:
    """After an out-of-memory error: drop the failed job's tensors and hand the cached blocks back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _whole(value, name: str) -> int:
    """Sliders and number boxes send floats; the engine wants whole numbers and says so if they are not."""
    if value is None or isinstance(value, bool):
        raise gr.Error(f"{name} is missing")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, not {str(value)[:40]!r}") from None
    except OverflowError:
        raise gr.Error(f"{name} is far out of range") from None
    if not number.is_integer():
        raise gr.Error(f"{name} must be a whole number, not {number}")
    return int(number)


# The GPU functions: on a ZeroGPU Space `spaces.GPU` attaches a GPU for the call with a time budget computed
# from the request; elsewhere it returns the function unchanged.
@spaces.GPU(
    duration=lambda engine, request, report, cancel: gpu_seconds(
        request.resolution,
        request.seconds,
        request.steps or SAMPLING.distill_steps,
        request.base_model,
        request.sr_steps,
    )
)
def run_on_gpu(engine, request: GenerationRequest, report, cancel) -> Result:
    return engine.generate(request, on_progress=report, cancel=cancel)


@spaces.GPU(
    duration=lambda engine, take, resolution, report, cancel: gpu_seconds(
        resolution, take.request.seconds, 0, take.request.base_model, take.request.sr_steps
    )
)
def upscale_on_gpu(engine, take, resolution: str, report, cancel) -> Result:
    return engine.upscale(take, resolution, on_progress=report, cancel=cancel)


def dialogue_to_prompt(description: str, speaker: str, language: str, line: str, background: str, seconds: float):
    """The dialogue builder: the official prompt format, plus a warning when the line is long for the clip."""
    if not (line or "").strip():
        raise gr.Error("Write the line the person says first.")
    try:
        lines = [DialogueLine(speaker or "The speaker", language, line)]
        prompt = build_prompt(description or "", lines, background or None)
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc
    warning = line_length_warning(lines, int(seconds))
    return prompt, (f"⚠️ {warning}" if warning else "")


# ---------------------------------------------------------------------------------------------------------
# 2. The page
# ---------------------------------------------------------------------------------------------------------


def build_demo(slot: EngineSlot) -> gr.Blocks:
    """The studio UI for an engine slot (loading or ready). No side effects: nothing loads until `load`."""
    studio = Studio(slot)
    limits = REQUEST_LIMITS
    with gr.Blocks(title="daVinci-MagiHuman Studio", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# daVinci-MagiHuman Studio\n"
            "Talking-human video with lip-synced speech from a prompt, a portrait and (optionally) your own "
            "voice. Generate a fast 256p take, then upscale the take you like."
        )
        preview_banner = gr.Markdown(visible=False, elem_id="preview-banner")
        status = gr.Markdown(studio.status_markdown(), elem_id="status-line")

        with gr.Row():
            with gr.Column(scale=5):
                portrait = _upload_as_is(
                    gr.Image(
                        label="Portrait (optional: without one, text-to-video)",
                        type="filepath",
                        sources=["upload", "clipboard"],
                        elem_id="portrait",
                        height=260,
                    )
                )
                prompt = gr.Textbox(
                    label="Prompt",
                    lines=8,
                    max_length=limits.max_prompt_chars,
                    elem_id="prompt",
                    placeholder="English description of the person and scene, then a Dialogue: block and a "
                    "Background Sound: block. Use the dialogue builder below to write one.",
                )
                prompt_warning = gr.Markdown(elem_id="prompt-warning")
                with gr.Row():
                    resolution = gr.Radio(list(RESOLUTIONS), value="256p", label="Resolution", elem_id="resolution")
                    aspect = gr.Radio(["landscape", "portrait"], value="landscape", label="Aspect", elem_id="aspect")
                seconds = gr.Slider(
                    MIN_SECONDS, MAX_SECONDS, value=DEFAULT_SECONDS, step=1, label="Duration (s)", elem_id="seconds"
                )
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", interactive=False, elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")

                with gr.Accordion("Dialogue builder", open=True, elem_id="dialogue-builder"):
                    description = gr.Textbox(
                        label="Character and scene",
                        lines=3,
                        elem_id="db-description",
                        placeholder="A woman in her thirties with short dark hair, in a sunlit kitchen, speaks warmly "
                        "to the camera. Static medium close-up, soft daylight.",
                    )
                    with gr.Row():
                        speaker = gr.Textbox(label="Speaker tag", value="A young woman", elem_id="db-speaker")
                        language = gr.Dropdown(
                            list(LANGUAGE_NAMES), value="English", label="Language", elem_id="db-language"
                        )
                    line = gr.Textbox(label="What they say", lines=2, elem_id="db-line")
                    background = gr.Textbox(
                        label="Background sound", placeholder="No prominent background sound", elem_id="db-background"
                    )
                    build = gr.Button("Write the prompt", elem_id="db-build")
                    line_warning = gr.Markdown(elem_id="db-warning")
                with gr.Accordion("Your own speech (optional)", open=False):
                    own_audio = gr.Audio(
                        label="The video is lip-synced to this recording",
                        type="filepath",
                        sources=["upload", "microphone"],
                        elem_id="own-audio",
                    )
                with gr.Accordion("Advanced", open=False):
                    base_model = gr.Radio(
                        [("Distilled, 8 steps", "distill"), ("Base with guidance, 32 steps", "base")],
                        value="distill",
                        label="Base model",
                        elem_id="base-model",
                    )
                    steps = gr.Slider(
                        1, limits.max_steps["base"], value=limits.default_steps["distill"], step=1, label="Steps"
                    )
                    sr_steps = gr.Slider(1, limits.max_sr_steps, value=SAMPLING.sr_steps, step=1, label="SR steps")
                    guidance = gr.Slider(
                        limits.min_guidance,
                        limits.max_guidance,
                        value=SAMPLING.video_guidance_high,
                        step=0.5,
                        label="Guidance (base model only)",
                    )
                    with gr.Row():
                        seed = gr.Number(value=42, precision=0, label="Seed", minimum=0, maximum=limits.max_seed)
                        randomize = gr.Checkbox(value=True, label="Randomize seed")

            with gr.Column(scale=6):
                player = ComparePlayer(elem_id="compare-player")
                with gr.Row():
                    upscale_to = gr.Radio(SR_TIERS, value=SR_TIERS[0], label="Upscale this take to")
                    upscale_btn = gr.Button("Upscale this take", interactive=False, elem_id="upscale")
                seed_used = gr.Number(label="Seed used", interactive=False, precision=0, elem_id="seed-used")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
                timings = gr.Markdown(elem_id="timings")
                take_id = gr.Textbox(visible=False, elem_id="take-id")

        gr.Examples(
            examples=[
                [
                    str(path) if path else None,
                    ex.prompt(),
                    ex.description,
                    ex.speaker,
                    ex.language,
                    ex.line,
                    ex.background or "",
                ]
                for path, ex in EXAMPLE_ROWS
            ],
            example_labels=[ex.title for _, ex in EXAMPLE_ROWS],
            inputs=[portrait, prompt, description, speaker, language, line, background],
            label="Examples (the portrait is public domain: see assets/LICENSE.md)",
            cache_examples=False,
        )

        # --- events -------------------------------------------------------------------------------------
        outputs = [player, downloads, seed_used, timings, take_id]
        gen_event = generate_btn.click(
            studio.generate,
            inputs=[
                portrait,
                prompt,
                own_audio,
                resolution,
                aspect,
                seconds,
                base_model,
                steps,
                sr_steps,
                guidance,
                seed,
                randomize,
            ],
            outputs=outputs,
            api_name="generate",
            concurrency_limit=1,
            concurrency_id=GPU_JOBS,
        ).success(lambda: gr.update(interactive=True), outputs=upscale_btn, api_visibility="private")
        up_event = upscale_btn.click(
            studio.upscale,
            inputs=[take_id, upscale_to],
            outputs=outputs,
            api_name="upscale",
            concurrency_limit=1,
            concurrency_id=GPU_JOBS,
        )
        stop_btn.click(studio.stop, cancels=[gen_event, up_event], api_name="stop", queue=False)
        build.click(
            dialogue_to_prompt,
            inputs=[description, speaker, language, line, background, seconds],
            outputs=[prompt, line_warning],
            api_visibility="private",
        )
        prompt.blur(studio.prompt_warning, inputs=prompt, outputs=prompt_warning, api_visibility="private")
        base_model.change(
            lambda m: gr.update(value=limits.default_steps[m], maximum=limits.max_steps[m]),
            inputs=base_model,
            outputs=steps,
            api_visibility="private",
        )

        def refresh():
            state = slot.status.state
            banner = ""
            if slot.engine is not None and slot.engine.preview:
                banner = (
                    "**Preview engine:** tiny random weights, no GPU. Clips have the right size, length "
                    "and audio, but show noise. Run on a CUDA machine for real output."
                )
            return (
                studio.status_markdown(),
                gr.update(interactive=state == "ready"),
                gr.update(value=banner, visible=bool(banner)),
                gr.update(active=state == "loading"),
            )

        timer = gr.Timer(1.0, active=True)
        ticks = [status, generate_btn, preview_banner, timer]
        timer.tick(refresh, outputs=ticks, api_visibility="private", queue=False)
        demo.load(lambda: slot.start() and None, api_visibility="private", queue=False)
        demo.load(refresh, outputs=ticks, api_visibility="private", queue=False)
    demo.studio = studio  # for tests and main(): the takes to clean up at exit
    return demo


# ---------------------------------------------------------------------------------------------------------
# 3. Entry point
# ---------------------------------------------------------------------------------------------------------


ON_ZEROGPU = bool(os.environ.get("SPACES_ZERO_GPU"))


def engine_slot(
    model: str | None = None, weights_dir: str | None = None, speed: SpeedFlags | None = None
) -> EngineSlot:
    """The engine to load in the background: weights, the speed steps, then compilation and warm-up on a GPU."""
    size = model or os.environ.get("MAGIHUMAN_MODEL") or default_model_size()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    speed = speed or SpeedFlags.from_env(device)
    if ON_ZEROGPU:
        speed = replace(speed, compile=False)  # torch.compile cannot run in ZeroGPU workers: AoT instead

    def load(status):
        engine = load_engine(size, weights_dir=weights_dir, speed=speed, on_status=status)
        if ON_ZEROGPU and size == "full":
            status("ahead-of-time compiling the shared DiT layers")
            status(f"ahead-of-time compiled in {aot_compile(engine, speed.cache_dir):.0f} s")
        elif speed.compile:
            status("compiling and warming up the DiT for each resolution")
            status(f"compiled and warmed up in {warm_up(engine):.0f} s")
        return engine

    return EngineSlot(load)


@spaces.GPU(duration=1500)
def aot_compile(engine, cache_dir: Path | None) -> float:
    """ZeroGPU start-up: an AOTInductor package for the shared layers of each DiT configuration (see
    studio/zerogpu.py), kept in the cache folder so that a restart only loads it."""
    packages = (cache_dir or Path(tempfile.gettempdir())) / "aoti"
    return sum(compile_shared_layers(dit, *example_inputs(dit), packages) for dit in engine.models.dits.values())


def _parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth (or $MAGIHUMAN_AUTH) must look like user:password")
    return user, password


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="daVinci-MagiHuman Studio")
    parser.add_argument("--model", choices=["full", "tiny"], help="default: full on a CUDA machine, tiny elsewhere")
    # Hugging Face Spaces run `python app.py` with GRADIO_SERVER_NAME=0.0.0.0; elsewhere this machine only.
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
        help="interface to bind (default: $GRADIO_SERVER_NAME, else 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT") or 7860))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (anyone can use it)")
    parser.add_argument("--auth", help=f"user:password required for the UI and API (or ${AUTH_ENV})")
    parser.add_argument("--weights-dir", help="local weights folder (see `python -m magihuman download`)")
    add_speed_arguments(parser)
    args = parser.parse_args(argv)

    auth = _parse_auth(args.auth or os.environ.get(AUTH_ENV))
    if args.share:
        warnings.warn(
            "--share makes a PUBLIC link: anyone with it can use this GPU" + ("" if auth else " (no --auth set)"),
            stacklevel=1,
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    slot = engine_slot(args.model, args.weights_dir, SpeedFlags.from_args(args, device)).start()
    app = build_demo(slot)
    app.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)
    app.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        max_file_size=MAX_UPLOAD,
        css=CSS,
        show_error=True,
    )


demo = build_demo(engine_slot())
demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)

if __name__ == "__main__":
    main(sys.argv[1:])
