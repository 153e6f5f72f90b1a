"""The only place that runs engine work for the UI: the GPU functions, and the engine they run on.

The studio runs in two settings with one code path:

- **A machine with its own GPU (or the CPU preview)**: `spaces.GPU` returns the functions unchanged; the engine
  loads on a background thread (`EngineSlot`) so the page is up at once.
- **A ZeroGPU Space**: each call of a `spaces.GPU` function runs in a forked worker that holds a GPU for the
  call, with its arguments and every yielded item pickled across. So the engine is loaded at
  import in the main thread on "cuda" (spaces packs whatever is on "cuda" at `launch()` and copies it into each
  worker), is a module global here (a fork inherits it, nothing pickles it), and the functions take only
  picklable values: a `GenerationRequest`, or a `Take` on the CPU and a resolution name.

The GPU functions are generators: they run the engine on a thread (inside the worker on ZeroGPU) and yield
`Progress` items, then the `Result` with every tensor on the CPU. `run_job` consumes one in the handler's
process: it reports progress there, asks `should_stop()` after every item and closes the job when it is
true; closing it (spaces forwards the close to the worker) cancels the engine within one denoising step. The
engine's own errors become `gr.Error` with its message inside the function, so they cross the process
boundary intact (spaces turns any other exception into "ZeroGPU worker error: <ClassName>").

1. Where we run: ZeroGPU detection, the memory plan and the GPU size
2. The engine slot (start-up)
3. The GPU functions and the job runner
4. Time budgets (ZeroGPU `duration`) and quotas
5. Ahead-of-time compile on ZeroGPU
"""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, fields, replace
from pathlib import Path

import gradio as gr
import spaces
import torch
from spaces.config import Config

from magihuman.build import DEFAULT_DITS
from magihuman.config import DEFAULT_SECONDS, MIN_SECONDS, REQUEST_LIMITS, RESOLUTIONS, SAMPLING
from magihuman.engine import Engine, GenerationRequest, Result, Take
from magihuman.errors import GenerationCancelled, MagiHumanError
from magihuman.memory import GB, GPU_MEMORY_ENV, TEXT_ENCODER_BYTES, VAE_BYTES, dit_bytes, plan_fp8
from magihuman.take_plan import MAX_TAKE_SECONDS
from magihuman.threads import worker_thread
from studio.runtime import EngineSlot, gpu_seconds

StatusFn = Callable[[str], None]

# ---------------------------------------------------------------------------------------------------------
# 1. Where we run
# ---------------------------------------------------------------------------------------------------------

ON_ZEROGPU: bool = bool(Config.zero_gpu)  # spaces' own reading of SPACES_ZERO_GPU ("1"/"t"/"true")

# GPU memory of a ZeroGPU call by size (hub docs, Blackwell era: half or all of an RTX Pro 6000; the earlier H200
# slices were 70 / 141 GB, so these are the smaller figures).
ZEROGPU_VRAM = {"large": 48 * GB, "xlarge": 96 * GB}
# Quota charged per requested second: xlarge counts twice; on the Blackwell card a large request is stretched
# by spaces' duration_factor (1.5).
QUOTA_FACTOR = {"large": 1.5, "xlarge": 2.0}


@dataclass(frozen=True)
class ZeroGpuPlan:
    """What the ZeroGPU engine holds and which GPU size it asks for."""

    size: str  # "large" or "xlarge"
    dits: tuple[str, ...]
    fp8: frozenset[str]  # DiTs with fp8 linears
    needed_bytes: int  # estimated peak (memory.peak_bytes: weights + activation headroom)
    weight_bytes: int  # what spaces copies into every fresh worker

    @property
    def vram_bytes(self) -> int:
        return int(ZEROGPU_VRAM[self.size])

    def describe(self) -> str:
        dtype = f"fp8 linears for {', '.join(sorted(self.fp8))}" if self.fp8 else "bf16"
        return (
            f"ZeroGPU {self.size} ({self.vram_bytes / GB:.0f} GB): {' + '.join(self.dits)} in {dtype}, "
            f"≈ {self.needed_bytes / GB:.0f} GB at peak"
        )


def zerogpu_plan(dits: tuple[str, ...] = DEFAULT_DITS) -> ZeroGpuPlan:
    """The smallest ZeroGPU size the full engine fits, with the fewest fp8 DiTs on it (`memory.plan_fp8` sized
    for that call's memory, not the emulated card's). Offload is not an option there: it pins CPU memory at
    load, which needs CUDA in the main process. Raises if even xlarge cannot hold the set."""
    from magihuman.config import dit_presets

    configs = {name: dit_presets("full")[name].dit for name in dits}
    for size, vram in ZEROGPU_VRAM.items():
        plan = plan_fp8(dits, None, "cuda", "full", offload=False, available_bytes=int(vram))
        if plan.needed_bytes <= vram:
            weights = (
                sum(dit_bytes(c, n in plan.quantised) for n, c in configs.items()) + TEXT_ENCODER_BYTES + VAE_BYTES
            )
            return ZeroGpuPlan(size, tuple(dits), plan.quantised, plan.needed_bytes, weights)
    raise RuntimeError(f"{' + '.join(dits)} does not fit a ZeroGPU xlarge call ({ZEROGPU_VRAM['xlarge'] / GB:.0f} GB)")


PLAN: ZeroGpuPlan | None = zerogpu_plan() if ON_ZEROGPU else None
GPU_SIZE: str | None = PLAN.size if PLAN else None  # None off ZeroGPU (spaces ignores it there)


# ---------------------------------------------------------------------------------------------------------
# 2. The engine slot
# ---------------------------------------------------------------------------------------------------------

_slot: EngineSlot | None = None


def bind_slot(slot: EngineSlot) -> None:
    """The slot the GPU functions read their engine from (a ZeroGPU worker inherits it with the fork)."""
    global _slot
    _slot = slot


def start_slot(load: Callable[[StatusFn], Engine]) -> EngineSlot:
    """Start loading the engine; returns its slot (also bound for the GPU functions).

    Off ZeroGPU: `load` runs on a background thread, as before. On ZeroGPU: `load` runs now, in the calling
    thread, which must be the main thread at import before `launch()` (spaces emulates CUDA only in the thread
    that imported it, and packs only what is on "cuda" when `launch()` runs); `load` must place the engine on
    "cuda" without compiling (the plan's GPU memory is exported as $MAGIHUMAN_GPU_MEMORY_GB for the fp8
    planner). Then the shared DiT layers are compiled ahead of time (section 5). A failure is kept as the
    slot's status, as on the background path, so the page still comes up and says what went wrong.
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


SPACE_TIERS = ("distill", "540p")  # the weights of magihuman.build.DEFAULT_DITS


def with_space_weights(load: Callable[[StatusFn], Engine]) -> Callable[[StatusFn], Engine]:
    """`load`, preceded on a Hugging Face Space with a GPU (ZeroGPU included) by fetching missing weights: a
    Space starts from its repository alone. `start_slot` applies it; a slot made otherwise should too. Into
    $MAGIHUMAN_WEIGHTS (persistent storage: /data/weights), with $HF_TOKEN for the gated text encoder.
    MAGIHUMAN_MODEL=tiny or MAGIHUMAN_DOWNLOAD=0 skip it."""
    env = os.environ
    if not env.get("SPACE_ID") or env.get("MAGIHUMAN_MODEL") == "tiny" or env.get("MAGIHUMAN_DOWNLOAD") == "0":
        return load
    if not torch.cuda.is_available():
        return load

    def load_with_weights(status: StatusFn) -> Engine:
        from magihuman.errors import CheckpointError
        from magihuman.weights import download, resolve_weights, weights_root

        try:
            resolve_weights(None, SPACE_TIERS)
        except CheckpointError:
            status(f"downloading the weights into {weights_root(None)} (first start: about 90 GB)")
            download(SPACE_TIERS, None, progress=False)
        return load(status)

    return load_with_weights


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


# ---------------------------------------------------------------------------------------------------------
# 3. The GPU functions and the job runner
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One progress item of a GPU job (picklable): `step` of `total` done in `phase` (the engine's phase names:
    text, image, audio, base, sr, decode, mux)."""

    phase: str
    step: int
    total: int


HEARTBEAT_S = 0.2  # while a step runs, how often the job repeats its last progress item
STOPPED = "Stopped ({}). Nothing was lost: change the settings and generate again."
OUT_OF_MEMORY = (
    "The GPU ran out of memory for this clip. Choose a smaller resolution (256p, or 540p instead of 1080p), a shorter "
    "clip or the distilled model, then generate again."
)

# Same-process runs only (off ZeroGPU): run_job's should_stop, read by the engine at every step boundary so that
# Stop acts as fast as it did before the GPU functions became generators. A ZeroGPU worker never sees it.
# A fork inherits the forking thread's context, so the probe is tagged with the process that set it.
_STOP_PROBE: ContextVar[tuple[int, Callable[[], bool]] | None] = ContextVar("stop_probe", default=None)


def _generate_seconds(request: GenerationRequest) -> int:
    return gpu_duration(request.resolution, request.seconds, request.steps, request.base_model, request.sr_steps)


def _upscale_seconds(take: Take, resolution: str) -> int:
    request = take.request
    return gpu_duration(resolution, request.seconds, 0, request.base_model, request.sr_steps)


@spaces.GPU(duration=_generate_seconds, size=GPU_SIZE)
def gpu_generate(request: GenerationRequest) -> Iterator[Progress | Result]:
    """Generate a clip: Progress items, then the Result (every tensor of its Take on the CPU)."""
    engine = _engine()
    yield from _stream(lambda report, cancel: engine.generate(request, on_progress=report, cancel=cancel))


@spaces.GPU(duration=_upscale_seconds, size=GPU_SIZE)
def gpu_upscale(take: Take, resolution: str) -> Iterator[Progress | Result]:
    """Super-resolve an earlier take (on the CPU, as a Result carries it): Progress items, then the Result."""
    engine = _engine()
    on_device = take_to(take, engine.device)
    yield from _stream(lambda report, cancel: engine.upscale(on_device, resolution, on_progress=report, cancel=cancel))


def run_job(
    job: Iterator[Progress | Result],
    on_progress: Callable[[str, int, int], None],
    should_stop: Callable[[], bool],
) -> Result:
    """Consume a GPU job in the handler's process: `on_progress(phase, step, total)` per new item. When
    `should_stop()` (asked at every item, so at least every HEARTBEAT_S) turns true (Stop pressed, client gone)
    the job is closed, which stops the engine within one denoising step, and the "Stopped" gr.Error is raised.
    Returns the Result."""
    token = _STOP_PROBE.set((os.getpid(), should_stop))
    last = None
    try:
        with closing(job):
            for item in job:
                if isinstance(item, Result):
                    return item
                if item != last:  # heartbeats repeat the last item
                    on_progress(item.phase, item.step, item.total)
                    last = item
                if should_stop():
                    raise gr.Error(STOPPED.format(GenerationCancelled(item.phase, item.step, item.total)))
    finally:
        _STOP_PROBE.reset(token)
    raise gr.Error("The GPU job ended without a result; generate again.")


class _Cancel:
    """The engine's cancel flag (it only asks `is_set()`): set when the job is closed, or when the same-process
    handler's should_stop() says so."""

    def __init__(self, probe: Callable[[], bool] | None) -> None:
        self._event, self._probe = threading.Event(), probe

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self._probe is not None and self._probe():
            self._event.set()
        return self._event.is_set()


def _stream(work: Callable[[Callable[[str, int, int], None], _Cancel], Result]) -> Iterator[Progress | Result]:
    """Run `work(report, cancel)` on the job thread and yield its progress, then its result moved to the CPU.

    Lockstep: after each progress report the engine waits until this generator is resumed past that item, and
    spaces checks its stop flag between the two, so once a close is asked for no further step
    starts. While a step runs, the last item is repeated every `HEARTBEAT_S`, so that the handler's Stop check
    and spaces' stop flag are looked at during long steps too. Closing this generator sets the cancel flag and
    waits for the engine to stop at its step boundary. Errors are re-raised as gr.Error with the user's message.
    """
    items: queue.SimpleQueue = queue.SimpleQueue()
    resumed: queue.SimpleQueue = queue.SimpleQueue()  # one token per item the consumer moved past
    probe = _STOP_PROBE.get()
    cancel = _Cancel(probe[1] if probe is not None and probe[0] == os.getpid() else None)
    outcome: list = []

    def report(phase: str, step: int, total: int) -> None:
        items.put(Progress(phase, step, total))
        if not cancel.is_set():
            resumed.get()

    def run() -> None:
        try:
            outcome.append(on_cpu(work(report, cancel)))
        except BaseException as exc:  # handed to the consuming thread below
            outcome.append(exc)
        finally:
            items.put(None)

    job = worker_thread("gpu-job").submit(copy_context().run, run)  # one long-lived thread (magihuman.threads)
    last = Progress("start", 0, 1)
    try:
        while True:
            try:
                item = items.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                yield last  # heartbeat
                continue
            if item is None:
                break
            last = item
            yield item
            resumed.put(True)
    finally:
        cancel.set()  # no-op after a normal end; after a close (Stop, client gone) the engine stops at its next step
        resumed.put(True)  # a report waiting for this generator goes on to the cancel check
        job.result()
    (value,) = outcome
    outcome.clear()
    if isinstance(value, Result):
        yield value
        return
    raise _user_error(value)


def _user_error(exc: BaseException) -> BaseException:
    """The gr.Error the user sees for an engine exception (made in the worker, so the message crosses)."""
    if isinstance(exc, gr.Error | GeneratorExit | KeyboardInterrupt | SystemExit):
        return exc
    if isinstance(exc, GenerationCancelled):
        return gr.Error(STOPPED.format(exc), print_exception=False)
    if isinstance(exc, MagiHumanError):
        return gr.Error(str(exc), print_exception=False)
    if isinstance(exc, torch.OutOfMemoryError):
        exc.__traceback__ = None  # its frames hold the failed job's tensors
        del exc
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return gr.Error(OUT_OF_MEMORY, print_exception=False)
    # A bug, not a user error: keep its class and message (spaces would show only the class name).
    error = gr.Error(f"Generation failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def take_to(take: Take, device: torch.device | str) -> Take:
    """The take with its tensors (text, video, audio) on `device`."""
    moved = {
        f.name: getattr(take, f.name).to(device)
        for f in fields(take)
        if isinstance(getattr(take, f.name), torch.Tensor)
    }
    return replace(take, **moved)


def on_cpu(result: Result) -> Result:
    """The result with its take's tensors on the CPU: a ZeroGPU worker may not hand CUDA tensors back."""
    return replace(result, take=take_to(result.take, "cpu"))


# ---------------------------------------------------------------------------------------------------------
# 4. Time budgets and quotas
# ---------------------------------------------------------------------------------------------------------

# A fresh worker first copies every packed weight onto its GPU, inside the granted duration.
# Estimate: the packed tensors stream from local disk at ≈ 4 GB/s (not measured on a Space).
TRANSFER_BYTES_PER_S = 4 * GB
# The daily ZeroGPU quota a request must fit (free account: 5 min); a Space owned by PRO users can raise it.
QUOTA_ENV = "MAGIHUMAN_ZEROGPU_QUOTA_S"
DEFAULT_QUOTA_S = 300


class QuotaError(gr.Error):
    """A request that cannot fit a visitor's ZeroGPU quota, refused before a GPU is asked for."""


def gpu_duration(resolution: str, seconds: int, steps: int | None, base_model: str, sr_steps: int) -> int:
    """Seconds of GPU to ask for: the job's estimate (`runtime.gpu_seconds`) plus the start-up weight transfer
    of a fresh worker. Raises QuotaError when the quota this costs (×2 on xlarge) exceeds the daily quota."""
    # Out-of-range values get a budget anyway: the engine's validation in the worker gives the user's message.
    limits = REQUEST_LIMITS
    seconds = min(max(_number(seconds, DEFAULT_SECONDS), MIN_SECONDS), MAX_TAKE_SECONDS)  # a long take: all of it
    steps = min(
        _number(steps, limits.default_steps.get(base_model, SAMPLING.distill_steps)), max(limits.max_steps.values())
    )
    sr_steps = min(_number(sr_steps, SAMPLING.sr_steps), limits.max_sr_steps)
    resolution = resolution if resolution in RESOLUTIONS else "256p"
    job = gpu_seconds(resolution, seconds, steps, base_model, sr_steps)
    if PLAN is None:
        return job
    total = job + int(PLAN.weight_bytes / TRANSFER_BYTES_PER_S)
    quota = int(os.environ.get(QUOTA_ENV) or DEFAULT_QUOTA_S)
    factor = QUOTA_FACTOR[PLAN.size]
    if total * factor > quota:
        raise QuotaError(
            f"A {seconds}-second {resolution} clip needs about {total} s of ZeroGPU time, which counts as "
            f"{total * factor:.0f} s on the {PLAN.size} GPU this model needs: more than the {quota} s a day a free "
            f"account gets. Choose a lower resolution or a shorter clip, or run the studio on a dedicated GPU.",
            title="Too long for ZeroGPU",
        )
    return total


def _number(value, default: int) -> int:
    try:
        return max(int(value), 1)
    except (TypeError, ValueError, OverflowError):
        return default


# ---------------------------------------------------------------------------------------------------------
# 5. Ahead-of-time compile on ZeroGPU
# ---------------------------------------------------------------------------------------------------------


def package_dir() -> Path:
    from magihuman.optimize import default_cache_dir

    return default_cache_dir() / "aoti"


@spaces.GPU(duration=1500)  # the longest a start-up call may ask for
def _compile_packages() -> dict[str, str]:
    """In a worker (which has the GPU): compile, or find in the cache folder, one package per DiT; returns
    their paths. The engine is this module's global: nothing but strings crosses."""
    from studio.zerogpu import build_package, example_inputs

    engine = _engine()
    folder = package_dir()
    with torch.no_grad():
        return {name: str(build_package(dit, *example_inputs(dit), folder)) for name, dit in engine.models.dits.items()}


def compile_ahead_of_time(engine: Engine) -> float:
    """Compile (in a GPU worker, unless every package is already in the cache folder) and give each shared
    layer, in this process, a forward that loads its package lazily in whichever process runs it. Seconds."""
    from studio.zerogpu import apply_package, package_path

    start = time.perf_counter()
    folder = package_dir()
    paths = {name: package_path(dit, folder) for name, dit in engine.models.dits.items()}
    if not all(path.exists() for path in paths.values()):
        paths = {name: Path(path) for name, path in _compile_packages().items()}
    for name, dit in engine.models.dits.items():
        apply_package(dit, paths[name])
    return time.perf_counter() - start
