"""What the studio's events do: validate, call `studio.gpu` and shape the answer (no model logic here).

`Studio.generate` takes one argument per request field (magihuman.fields), named and defaulted as declared
there, so the `/generate` API and the MCP tool take any subset of them by keyword.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from magihuman.config import DEFAULT_SECONDS, RESOLUTIONS, SR_RESOLUTIONS
from magihuman.engine import GenerationRequest, Result
from magihuman.fields import FIELDS, FILE_FIELDS, Field
from magihuman.long_take import LONG_TAKE_AUDIO, plan_table
from magihuman.media import usable_audio_seconds
from magihuman.prompts import DialogueLine, build_prompt, line_length_warning, parse_prompt, prompt_length_warning
from magihuman.take_plan import MAX_TAKE_SECONDS
from magihuman.timing import timing_table
from studio import gpu, jobs
from studio.history import StoredTake, TakeStore, caption, clean_history, with_take
from studio.live import LivePieces
from studio.player import ComparePlayer
from studio.runtime import EngineSlot
from studio.slot import bind_slot, ready_engine
from studio.snippets import cli_line, python_call
from studio.take_actions import StoppedTakes, TakeActions

PHASES = {
    "text": "Encoding the prompt",
    "image": "Encoding the portrait",
    "audio": "Encoding your audio",
    "base": "Base 256p",
    "sr": "Super-resolution",
    "decode": "Decoding video",
    "mux": "Writing mp4",
    "queued": "Waiting for a free GPU: jobs ahead / queue size",
}
# Python types of the field kinds, for the API's parameter types (files arrive as local paths).
ANNOTATIONS = {
    "text": str,
    "image": str | None,
    "audio": str | None,
    "choice": str,
    "int": int | None,
    "float": float | None,
}


class Studio:
    """The state the handlers share. `gpu_functions`: studio.gpu (in-process engine) or a
    studio.replicas.ReplicaPool (engine replicas on Ray Serve)."""

    def __init__(self, slot: EngineSlot, gpu_functions=gpu) -> None:
        self.slot = slot
        self.gpu_functions = gpu_functions
        self.jobs_at_once: int | None = getattr(gpu_functions, "jobs_at_once", 1)  # the events' concurrency limit
        self.takes = gpu_functions.take_store() if hasattr(gpu_functions, "take_store") else TakeStore()
        self.stops: dict[str, bool] = {}
        self.live = LivePieces(_session)  # long takes' finished windows, per session (studio.live)
        self.stopped = StoppedTakes(_session)  # stopped long takes to resume, per session (studio.take_actions)
        self.actions = TakeActions(self)
        self.generate = _field_function(self._generate, "generate", GENERATE_DOC)

    def status_markdown(self) -> str:
        status = self.slot.status
        text = html.escape(status.message)
        if status.state == "loading":
            text += f" ({status.seconds:.0f} s)"
        return f"**Engine {status.state}:** {text}"

    def _require_engine(self) -> None:
        ready_engine(self.slot)

    def _generate(self, values: dict[str, Any], request: gr.Request, progress: gr.Progress):
        self.live.begin(request)
        try:
            self._require_engine()
            gen_request = request_from_values(values)
            result = self._run(request, progress, self.gpu_functions.gpu_generate(gen_request))
        finally:
            self.live.finish(request)
        take_id = self.takes.add(result)
        return self._answer(take_id, self.takes.get(take_id), result.sr_resolution)

    def upscale(
        self,
        take_id: str,
        resolution: str = SR_RESOLUTIONS[0],
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Super-resolve an earlier take of /generate to 540p or 1080p without re-running its base stage (the
        same seed gives the same SR clip as generating at that resolution).

        Args:
            take_id: the take_id that /generate returned (the latest 32 takes are kept)
            resolution: 540p or 1080p
        """
        self._require_engine()
        stored = self.takes.get(take_id or "")
        if stored is None:
            raise gr.Error("No take to upscale: generate a clip first (the latest 32 takes are kept).")
        if resolution not in SR_RESOLUTIONS:
            raise gr.Error(f"Upscale to one of {', '.join(SR_RESOLUTIONS)}, not {str(resolution)[:20]!r}.")
        result = self._run(request, progress, self.gpu_functions.gpu_upscale(stored.take, resolution))
        stored = self.takes.add_upscale(take_id, result) or stored
        return self._answer(take_id, stored, resolution)

    def stop(self, request: gr.Request) -> None:
        """Stop the generate or upscale job this client started: it ends within one denoising step."""
        self.stops[_session(request)] = True
        self.live.finish(request)  # a job cancelled while queued never ends by itself: the live view stops here

    def _run(self, request: gr.Request | None, progress: gr.Progress, job) -> Result:
        session = _session(request)
        self.stops[session] = False
        client_gone = _client_gone()

        def report(phase: str, step: int, total: int) -> None:
            progress((step, total), desc=f"{phase_label(phase)} {step}/{total}")

        def stop_requested() -> bool:
            return self.stops.get(session, False) or client_gone()

        bind_slot(self.slot)  # this studio's engine (a process may hold several demos, e.g. in tests)
        try:
            return jobs.run_job(job, report, stop_requested, lambda piece: self.live.add(request, piece))
        except gr.Error as exc:
            self.stopped.keep(request, getattr(exc, "take_state", None))  # a stopped long take, for Resume
            raise
        finally:
            self.stops.pop(session, None)

    def _answer(self, take_id: str, stored: StoredTake, sr_resolution: str | None):
        """(player, downloads, seed used, details, take id): what /generate and /upscale return."""
        sr = stored.sr_videos.get(sr_resolution) if sr_resolution else None
        player = ComparePlayer.value_for(stored.base_video, sr, f"Super-resolution {sr_resolution}" if sr else None)
        return player, [str(p) for p in stored.files()], stored.take.seed, self._details(stored), take_id

    def _details(self, stored: StoredTake) -> str:
        engine = self.slot.engine
        table = timing_table(stored.timings, None, engine.layout if engine is not None else None)
        if stored.take.plan is not None:
            table += "\n\n" + plan_table(stored.take)
        return f"**{stored.label()}**, {stored.take.request.mode}\n```\n{table}\n```"

    def remember(self, take_id: str, history) -> list[dict]:
        stored = self.takes.get(take_id)
        return with_take(history, take_id, stored) if stored is not None else clean_history(history)

    def gallery(self, history):
        """Runs on page load, so a reloaded page shows the takes it made (and drops those the server lost)."""
        kept = [rec for rec in clean_history(history) if self.takes.get(rec["id"]) is not None]
        items = [(str(self.takes.get(rec["id"]).poster), caption(rec)) for rec in kept]
        choices = [(caption(rec)[:70], rec["id"]) for rec in kept]
        first = choices[0][1] if choices else None
        second = choices[1][1] if len(choices) > 1 else None
        return (
            items,
            gr.update(choices=choices, value=first),
            gr.update(choices=choices, value=second),
            kept,
        )

    def select(self, history, event: gr.SelectData):
        """A gallery click: the take into the player, its settings (seed included) into the inputs."""
        kept = clean_history(history)
        index = event.index if isinstance(event.index, int) else -1
        if not 0 <= index < len(kept):
            raise gr.Error("That take is not in this page's history any more.")
        take_id = kept[index]["id"]
        stored = self.takes.get(take_id)
        if stored is None:
            raise gr.Error("That take is no longer on the server (the latest 32 are kept).")
        best = next(iter(sorted(stored.sr_videos, key=lambda n: RESOLUTIONS[n].height, reverse=True)), None)
        settings = request_to_values(stored.take.request)
        return (*self._answer(take_id, stored, best), *settings.values(), False)  # False: keep the take's seed

    def compare(self, first: str | None, second: str | None):
        a, b = self.takes.get(first), self.takes.get(second)
        if a is None or b is None:
            raise gr.Error("Pick two takes from the history to compare.")
        (a_video, a_res), (b_video, b_res) = a.best_video(), b.best_video()
        return ComparePlayer.value_for(a_video, b_video, f"{b.label()} · {b_res}", left_label=f"{a.label()} · {a_res}")

    def remove(self, take_id: str | None, history):
        if not take_id or self.takes.get(take_id) is None:
            raise gr.Error("Select a take in the history first.")
        self.takes.remove(take_id)
        return [rec for rec in clean_history(history) if rec["id"] != take_id], ComparePlayer.value_for(None), ""

    def code_for_take(self, take_id: str) -> tuple[str, str]:
        stored = self.takes.get(take_id)
        if stored is None:
            return "", ""
        return code_for(*request_to_values(stored.take.request).values())

    def prompt_warning(self, prompt: str) -> str:
        """The prompt's length against the request limit and the text encoder's token cap (when loaded)."""
        engine = self.slot.engine
        counter = engine.models.text.count_tokens if getattr(engine, "models", None) else None  # none: replicas
        warning = prompt_length_warning(prompt or "", counter)
        return f"⚠️ {warning}" if warning else ""


GENERATE_DOC = "\n".join(
    [
        "Generate a talking-human clip with lip-synced speech from a prompt, optionally a portrait and your own "
        "speech. Returns the player value (base and super-resolution mp4), the files, the seed used, the "
        "timings and a take_id for /upscale.",
        "",
        "Args:",
        *(f"    {f.name}: {f.help}" for f in FIELDS),
    ]
)


def _field_function(body: Callable, name: str, doc: str) -> Callable:
    """A function taking one argument per request field, then gr.Request and gr.Progress, that calls
    `body(values, request, progress)`. Gradio reads its signature and docstring for the API page and MCP tool."""
    parameters = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if f.required else f.default,
            annotation=ANNOTATIONS[f.kind],
        )
        for f in FIELDS
    ]
    parameters += [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request),
        inspect.Parameter(
            "progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress(), annotation=gr.Progress
        ),
    ]
    signature = inspect.Signature(parameters)

    def function(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        values = {f.name: arguments.pop(f.name) for f in FIELDS}
        return body(values, arguments["request"], arguments["progress"])

    function.__signature__ = signature
    function.__annotations__ = {p.name: p.annotation for p in parameters if p.annotation is not inspect._empty}
    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc
    return function


def request_from_values(values: dict[str, Any]) -> GenerationRequest:
    """The request for what the controls (or an API client) sent: sliders send floats, empty boxes None or
    "", files a path. Whole-number fields must be whole; ranges are the engine's to check."""
    clean = {}
    for f in FIELDS:
        value = values.get(f.name, f.default)
        if f.is_file or (f.kind == "text" and not f.required):
            value = value or None
        elif f.kind == "int":
            value = _whole(value, f)
        elif f.kind == "float" and value is not None:
            value = _number(value, f)
        elif f.required:
            value = value if isinstance(value, str) else ""
        clean[f.name] = value
    return GenerationRequest(**clean)


def request_to_values(request: GenerationRequest) -> dict[str, Any]:
    values = {f.name: getattr(request, f.name) for f in FIELDS}
    for name in FILE_FIELDS:
        path = values[name]
        values[name] = str(path) if path and Path(path).is_file() else None
    values["negative_prompt"] = values["negative_prompt"] or ""
    return values


def _whole(value, f: Field) -> int | None:
    if value is None or value == "":
        if f.default is None:
            return None
        raise gr.Error(f"{f.what} is missing")
    number = _number(value, f)
    if not number.is_integer():
        raise gr.Error(f"{f.what} must be a whole number, not {number}")
    return int(number)


def _number(value, f: Field) -> float:
    if isinstance(value, bool):
        raise gr.Error(f"{f.what} must be a number, not {value}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{f.what} must be a number, not {str(value)[:40]!r}") from None
    except OverflowError:
        raise gr.Error(f"{f.what} is far out of range") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise gr.Error(f"{f.what} must be a whole number" if f.kind == "int" else f"{f.what} must be a number")
    return number


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def _client_gone() -> Callable[[], bool]:
    """Whether the browser tab or API client that started the running event has gone, or has cancelled it.

    Gradio 6.31 marks a running event `alive = False` when its stream closes, and forgets it when a client
    cancels it, but in neither case stops a function that is already running: the job asks this every step.
    """
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    events = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", None)
    event = events.get(event_id) if isinstance(events, dict) else None
    if event is None:
        return lambda: False
    return lambda: not getattr(event, "alive", True) or event_id not in events


def dialogue_to_prompt(description: str, speaker: str, language: str, line: str, background: str, seconds: float):
    """The dialogue builder: the official prompt format, plus a warning when the line is long for the clip."""
    if not (line or "").strip():
        raise gr.Error("Write the line the person says first.")
    try:
        lines = [DialogueLine(speaker or "The speaker", language, line)]
        prompt = build_prompt(description or "", lines, background or None)
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc
    warning = line_length_warning(lines, int(seconds or DEFAULT_SECONDS))
    return prompt, (f"⚠️ {warning}" if warning else "")


def prompt_to_dialogue(prompt: str):
    description, lines, background = parse_prompt(prompt or "")
    if not lines:
        raise gr.Error('The prompt has no Dialogue: block with a <speaker, Language>: "line" row to read.')
    first = lines[0]
    return description, first.speaker, first.language, first.text, background or ""


def audio_hint(audio: str | None, seconds: float | None) -> str:
    """How much of an uploaded recording a take can follow (it is shortened to it when it is shorter)."""
    if not audio:
        return ""
    try:
        usable = usable_audio_seconds(audio, limits=LONG_TAKE_AUDIO)
    except Exception as exc:  # noqa: BLE001  (the generate call gives the full error; here a hint is enough)
        return f"⚠️ {exc}"
    if not seconds:
        if usable > MAX_TAKE_SECONDS:
            return f"⚠️ The recording is longer than {MAX_TAKE_SECONDS} s: trim it, or set a duration to use its start."
        return f"The recording gives {usable:.2f} s of speech; the take follows all of it."
    if usable < float(seconds):
        return f"The recording gives {usable:.2f} s of speech: the clip will be {usable:.2f} s, not {seconds:g} s."
    return f"The recording gives {usable:.2f} s of speech; the clip uses the first {float(seconds):g} s."


def phase_label(phase: str) -> str:
    """The progress text of an engine phase; a long take's are per window ("window 3/12 base")."""
    window, _, inner = phase.rpartition(" ")
    if window.startswith("window "):
        return f"Window {window.removeprefix('window ')} · {PHASES.get(inner, inner)}"
    return PHASES.get(phase, phase)


def code_for(*values) -> tuple[str, str]:
    settings = dict(zip([f.name for f in FIELDS], values, strict=True))
    return python_call(settings), cli_line(settings)
