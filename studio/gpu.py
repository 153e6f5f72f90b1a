"""The only place that runs engine work for the UI: the GPU functions, and the engine they run on.

Off ZeroGPU `spaces.GPU` returns the functions unchanged and the engine loads on a background thread. On a
ZeroGPU Space each call runs in a forked worker holding a GPU, its arguments and yielded items pickled across.
So the engine loads at import on "cuda" (spaces packs what is on "cuda" at `launch()` into each worker), is a
module global (a fork inherits it, nothing pickles it), and the functions take only picklable values.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import gradio as gr
import spaces
import torch

from magihuman.config import FPS
from magihuman.engine import Engine, GenerationRequest, Result, Take
from magihuman.errors import MagiHumanError
from magihuman.memory import GB, GPU_MEMORY_ENV
from magihuman.take_plan import WINDOW_FRAMES, Shot, extend_plan
from magihuman.take_state import TakeState
from studio.jobs import Piece, Progress, stream, take_to, user_error
from studio.runtime import EngineSlot
from studio.space import (
    GPU_SIZE,
    ON_ZEROGPU,
    PLAN,
    StatusFn,
    gpu_duration,
    take_call_seconds,
    take_calls,
    with_space_weights,
)

# --- 1. The engine slot (start-up) ---

_slot: EngineSlot | None = None


def bind_slot(slot: EngineSlot) -> None:
    """The slot the GPU functions read their engine from (a ZeroGPU worker inherits it with the fork)."""
    global _slot
    _slot = slot


def start_slot(load: Callable[[StatusFn], Engine]) -> EngineSlot:
    """Start loading the engine; returns its slot (also bound for the GPU functions).

    On ZeroGPU `load` runs now, in the main thread at import before `launch()` (spaces emulates CUDA only in the
    thread that imported it), placing the engine on "cuda" without compiling; a failure becomes the slot's status.
    """
    load = with_space_weights(load)
    if not ON_ZEROGPU:
        slot = EngineSlot(load).start()
        bind_slot(slot)
        return slot
    assert PLAN is not None
    os.environ.setdefault(GPU_MEMORY_ENV, f"{PLAN.vram_bytes / GB:g}")

    def load_for_zerogpu(status: StatusFn) -> Engine:
        status(PLAN.describe())
        engine = load(status)
        bind_slot(EngineSlot.ready(engine))  # the compile worker below forks with the engine in place
        compiled = "no ahead-of-time compile"
        if not engine.preview and os.environ.get("MAGIHUMAN_AOT", "1") != "0":
            status("ahead-of-time compiling the shared DiT layers (reused from the cache folder after a restart)")
            compiled = f"shared DiT layers compiled ahead of time in {compile_ahead_of_time(engine):.0f} s"
        status(f"{PLAN.describe()}; {compiled}")  # the page's status line keeps the last message
        return engine

    slot = EngineSlot(load_for_zerogpu).load_now()
    bind_slot(slot)
    return slot


def ready_engine(slot: EngineSlot) -> Engine:
    """The slot's engine, or a `gr.Error` saying that it failed to load (with the cause) or is still loading."""
    status = slot.status
    if status.state == "failed":
        raise gr.Error(f"The engine failed to load: {status.message}", print_exception=False)
    if slot.engine is None:
        raise gr.Error(f"The engine is still loading ({status.message}); try again in a moment.")
    return slot.engine


def _engine() -> Engine:
    if _slot is None:
        raise gr.Error("No engine is bound to the GPU functions (studio.gpu.bind_slot).")
    return ready_engine(_slot)


# --- 2. The GPU functions ---


def _generate_seconds(request: GenerationRequest) -> int:
    return gpu_duration(request.resolution, request.seconds, request.steps, request.base_model, request.sr_steps)


def _upscale_seconds(take: Take, resolution: str) -> int:
    request = take.request
    return gpu_duration(resolution, request.seconds, 0, request.base_model, request.sr_steps)


SPLIT_LONG_TAKES = ON_ZEROGPU


def gpu_generate(request: GenerationRequest) -> Iterator[Progress | Piece | Result]:
    """Generate a clip: Progress items (and a long take's finished windows as Piece items), then the Result
    (every tensor of its Take on the CPU). On ZeroGPU a long take is planned here (no GPU) and made over several
    GPU calls, its windows kept on disk between them."""
    if SPLIT_LONG_TAKES:
        try:
            state = _engine().plan_take(request)
        except MagiHumanError as exc:
            raise user_error(exc) from None
        if state is not None:
            yield from _take_in_calls(state)
            return
    yield from _gpu_generate(request)


def _take_in_calls(state: TakeState) -> Iterator[Progress | Result]:
    calls = take_calls(state.plan, state.request)  # the quota counts the whole take, before any call
    for count in calls[:-1]:
        with closing(_gpu_advance_take(state, count)) as call:  # a Stop closes the running call too
            for item in call:
                if isinstance(item, TakeState):
                    state = item
                else:
                    yield item
    yield from _gpu_finish_take(state)


def _advance_seconds(state: TakeState, count: int) -> int:
    return take_call_seconds(state.plan, state.request, state.todo[:count], False)


def _finish_seconds(state: TakeState) -> int:
    return take_call_seconds(state.plan, state.request, state.todo, True)


@spaces.GPU(duration=_generate_seconds, size=GPU_SIZE)
def _gpu_generate(request: GenerationRequest) -> Iterator[Progress | Result]:
    engine = _engine()
    yield from stream(lambda report, cancel: engine.generate(request, on_progress=report, cancel=cancel))


@spaces.GPU(duration=_advance_seconds, size=GPU_SIZE)
def _gpu_advance_take(state: TakeState, count: int) -> Iterator[Progress | TakeState]:
    """One call of a long take: `count` more windows, stored beside it; Progress items, then the new state."""
    engine = _engine()
    yield from stream(lambda report, cancel: engine.advance_take(state, count, on_progress=report, cancel=cancel))


@spaces.GPU(duration=_finish_seconds, size=GPU_SIZE)
def _gpu_finish_take(state: TakeState) -> Iterator[Progress | Result]:
    """The last call of a long take: its last windows, the mp4 and SR; Progress items, then the Result."""
    engine = _engine()
    yield from stream(lambda report, cancel: engine.finish_take(state, on_progress=report, cancel=cancel))


# Resume, continue and re-roll (studio.take_actions) run in one GPU call each, not split like a new long take:
# on ZeroGPU a resume of many windows, or a continue by many seconds, can ask for more than MAX_CALL_S and is
# then refused by the platform (make the take shorter, or on a dedicated GPU).


def gpu_resume(state: TakeState) -> Iterator[Progress | Piece | Result]:
    """Finish a stopped long take (its kept windows stay): Progress and Piece items, then the Result."""
    yield from _gpu_finish_take(state)


def _continue_seconds(take: Take, seconds: int, prompt: str | None, new_shot: bool) -> int:
    longer = extend_plan(
        take.plan, Shot(seconds * FPS, prompt), seed=take.seed, new_shot=new_shot, window_frames=WINDOW_FRAMES
    )
    return take_call_seconds(longer, take.request, range(len(take.plan.windows), len(longer.windows)), True)


def _reroll_seconds(take: Take, window: int, seed: int | None) -> int:
    return take_call_seconds(take.plan, take.request, (window,), True)


@spaces.GPU(duration=_continue_seconds, size=GPU_SIZE)
def gpu_continue_take(take: Take, seconds: int, prompt: str | None, new_shot: bool) -> Iterator[Progress | Result]:
    """A long take continued by `seconds` (a new take beside it, its windows linked): Progress, then the Result."""
    engine = _engine()
    yield from stream(
        lambda report, cancel: engine.continue_take(take, seconds, prompt, new_shot, on_progress=report, cancel=cancel)
    )


@spaces.GPU(duration=_reroll_seconds, size=GPU_SIZE)
def gpu_reroll_window(take: Take, window: int, seed: int | None) -> Iterator[Progress | Result]:
    """A long take with window `window` (0-based) made again from `seed`: Progress, then the Result."""
    engine = _engine()
    yield from stream(lambda report, cancel: engine.reroll(take, window, seed, on_progress=report, cancel=cancel))


@spaces.GPU(duration=_upscale_seconds, size=GPU_SIZE)
def gpu_upscale(take: Take, resolution: str) -> Iterator[Progress | Result]:
    """Super-resolve an earlier take (on the CPU, as a Result carries it): Progress items, then the Result."""
    engine = _engine()
    on_device = take_to(take, engine.device)
    yield from stream(lambda report, cancel: engine.upscale(on_device, resolution, on_progress=report, cancel=cancel))


# --- 3. Ahead-of-time compile on ZeroGPU ---


def package_dir() -> Path:
    from magihuman.cache import default_cache_dir

    return default_cache_dir() / "aoti"


@spaces.GPU(duration=1500)  # the longest a start-up call may ask for
def _compile_packages() -> dict[str, str]:
    """In a GPU worker: one compiled (or cached) package per DiT; only their paths cross back."""
    from magihuman.aot import build_package, example_inputs

    engine = _engine()
    folder = package_dir()
    with torch.no_grad():
        return {name: str(build_package(dit, *example_inputs(dit), folder)) for name, dit in engine.models.dits.items()}


def compile_ahead_of_time(engine: Engine) -> float:
    """Compile (unless cached) and give each shared layer a forward that loads its package lazily; seconds."""
    from magihuman.aot import apply_package, package_path

    start = time.perf_counter()
    folder = package_dir()
    paths = {name: package_path(dit, folder) for name, dit in engine.models.dits.items()}
    if not all(path.exists() for path in paths.values()):
        paths = {name: Path(path) for name, path in _compile_packages().items()}
    for name, dit in engine.models.dits.items():
        apply_package(dit, paths[name])
    return time.perf_counter() - start
