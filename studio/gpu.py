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
from pathlib import Path

import spaces
import torch

from magihuman.engine import Engine, GenerationRequest, Result, Take
from magihuman.errors import MagiHumanError
from magihuman.memory import GB, GPU_MEMORY_ENV
from studio.gpu_takes import gpu_continue_take as gpu_continue_take  # re-exported: Studio.gpu_functions is
from studio.gpu_takes import gpu_reroll_window as gpu_reroll_window  # this module, and resume, continue and
from studio.gpu_takes import gpu_resume as gpu_resume  # re-roll are GPU functions too
from studio.gpu_takes import take_in_calls
from studio.jobs import Piece, Progress, stream, take_to, user_error
from studio.runtime import EngineSlot
from studio.slot import bind_slot, bound_engine
from studio.space import GPU_SIZE, ON_ZEROGPU, PLAN, StatusFn, gpu_duration, with_space_weights

# --- 1. The engine slot (start-up) ---


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
            state = bound_engine().plan_take(request)
        except MagiHumanError as exc:
            raise user_error(exc) from None
        if state is not None:
            yield from take_in_calls(state)
            return
    yield from _gpu_generate(request)


@spaces.GPU(duration=_generate_seconds, size=GPU_SIZE)
def _gpu_generate(request: GenerationRequest) -> Iterator[Progress | Result]:
    engine = bound_engine()
    yield from stream(lambda report, cancel: engine.generate(request, on_progress=report, cancel=cancel))


@spaces.GPU(duration=_upscale_seconds, size=GPU_SIZE)
def gpu_upscale(take: Take, resolution: str) -> Iterator[Progress | Result]:
    """Super-resolve an earlier take (on the CPU, as a Result carries it): Progress items, then the Result."""
    engine = bound_engine()
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

    engine = bound_engine()
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
