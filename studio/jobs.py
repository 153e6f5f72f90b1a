"""Running one engine job for the UI: progress, streaming, cancellation and the errors a user sees.

Everything a job yields is picklable (a ZeroGPU worker hands it back), and engine errors become `gr.Error`
inside the job so their message crosses the process boundary (spaces shows only the class name otherwise).
"""

from __future__ import annotations

import gc
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, fields, replace

import gradio as gr
import torch

from magihuman.engine import Result, Take
from magihuman.errors import GenerationCancelled, MagiHumanError
from magihuman.threads import worker_thread


@dataclass(frozen=True)
class Progress:
    """`step` of `total` done in the engine's `phase`."""

    phase: str
    step: int
    total: int


@dataclass(frozen=True)
class Piece:
    """A long take's finished window as its own mp4, to play while the next windows render."""

    path: str
    index: int
    count: int


class JobReport:
    """`report(phase, step, total)` for progress (lockstep), `report.piece(path, index, count)` for a window."""

    def __init__(self, progress: Callable[[str, int, int], None], piece: Callable[[str, int, int], None]) -> None:
        self._progress, self._piece = progress, piece

    def __call__(self, phase: str, step: int, total: int) -> None:
        self._progress(phase, step, total)

    def piece(self, path, index: int, count: int) -> None:
        self._piece(str(path), index, count)


HEARTBEAT_S = 0.2  # while a step runs, how often the job repeats its last progress item
CONSUMER_WAIT_S = 300.0  # a consumer that neither resumes nor closes the job this long has gone: cancel
ENGINE_STOP_WAIT_S = 600.0  # after a cancel, the longest step (1080p SR on a slow GPU) plus the mp4 flush
STOPPED = "Stopped ({}). Nothing was lost: change the settings and generate again."
STOPPED_TAKE = "Stopped ({}) with {} of {} windows made: Resume finishes the take, or change the settings."
OUT_OF_MEMORY = (
    "The GPU ran out of memory for this clip. Choose a smaller resolution (256p, or 540p instead of 1080p), a shorter "
    "clip or the distilled model, then generate again."
)

# Same-process runs only (off ZeroGPU): run_job's should_stop, read by the engine at every step boundary so that
# Stop acts as fast as it did before the GPU functions became generators. A ZeroGPU worker never sees it.
# A fork inherits the forking thread's context, so the probe is tagged with the process that set it.
_STOP_PROBE: ContextVar[tuple[int, Callable[[], bool]] | None] = ContextVar("stop_probe", default=None)


def run_job(
    job: Iterator[Progress | Result],
    on_progress: Callable[[str, int, int], None],
    should_stop: Callable[[], bool],
    on_piece: Callable[[Piece], None] | None = None,
) -> Result:
    """Consume a GPU job in the handler's process. `should_stop()` is asked at every item (so at least every
    HEARTBEAT_S); when true the job is closed, stopping the engine within one denoising step."""
    token = _STOP_PROBE.set((os.getpid(), should_stop))
    last = None
    try:
        with closing(job):
            for item in job:
                if isinstance(item, Result):
                    return item
                if isinstance(item, Piece):
                    if on_piece is not None:
                        on_piece(item)
                    continue
                if item != last:  # heartbeats repeat the last item
                    on_progress(item.phase, item.step, item.total)
                    last = item
                if should_stop():
                    raise gr.Error(STOPPED.format(GenerationCancelled(item.phase, item.step, item.total)))
    finally:
        _STOP_PROBE.reset(token)
    raise gr.Error("The GPU job ended without a result; generate again.")


class StopFlag:
    """The engine's cancel flag (a `magihuman.errors.Cancel`), also set by a same-process should_stop()."""

    def __init__(self, probe: Callable[[], bool] | None) -> None:
        self._event, self._probe = threading.Event(), probe

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self._probe is not None and self._probe():
            self._event.set()
        return self._event.is_set()


def stream(work: Callable[[JobReport, StopFlag], Result]) -> Iterator[Progress | Piece | Result]:
    """Run `work(report, cancel)` on the job thread; yield its progress, then its result on the CPU.

    Lockstep: after each report the engine waits until this generator is resumed past the item, and spaces
    checks its stop flag between the two, so no step starts once a close is asked for. Heartbeats repeat the
    last item so the Stop checks also run during long steps.
    """
    items: queue.SimpleQueue = queue.SimpleQueue()
    resumed: queue.SimpleQueue = queue.SimpleQueue()  # one token per item the consumer moved past
    probe = _STOP_PROBE.get()
    cancel = StopFlag(probe[1] if probe is not None and probe[0] == os.getpid() else None)
    outcome: list = []

    def report(phase: str, step: int, total: int) -> None:
        items.put(Progress(phase, step, total))
        if not cancel.is_set():
            try:
                resumed.get(timeout=CONSUMER_WAIT_S)
            except queue.Empty:
                cancel.set()  # nobody is reading this job any more

    def piece(path: str, index: int, count: int) -> None:
        items.put(Piece(path, index, count))

    def run() -> None:
        try:
            outcome.append(on_cpu(work(JobReport(report, piece), cancel)))
        except BaseException as exc:  # handed to the consuming thread below
            outcome.append(exc)
        finally:
            items.put(None)

    job = worker_thread("gpu-job").submit(copy_context().run, run)
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
            if isinstance(item, Piece):
                yield item  # no lockstep token: the engine did not wait for it
                continue
            last = item
            yield item
            resumed.put(True)
    finally:
        cancel.set()  # no-op after a normal end; after a close (Stop, client gone) the engine stops at its next step
        resumed.put(True)  # a report waiting for this generator goes on to the cancel check
        try:
            job.result(timeout=ENGINE_STOP_WAIT_S)
        except TimeoutError:
            raise gr.Error(
                f"The engine did not stop within {ENGINE_STOP_WAIT_S:.0f} s of being asked to (last progress: "
                f"{last.phase} {last.step}/{last.total}); restart the studio if the next job does not start."
            ) from None
        if getattr(outcome[0] if outcome else None, "take_state", None) is not None:
            raise user_error(outcome.pop())  # closed by Stop: the stopped take's state goes up with the error
    (value,) = outcome
    outcome.clear()
    if not isinstance(value, BaseException):  # a Result (or the TakeState of one call of a long take)
        yield value
        return
    raise user_error(value)


def user_error(exc: BaseException) -> BaseException:
    """The gr.Error the user sees for an engine exception."""
    if isinstance(exc, gr.Error | GeneratorExit | KeyboardInterrupt | SystemExit):
        return exc
    if isinstance(exc, GenerationCancelled):
        state = exc.take_state
        message = STOPPED_TAKE.format(exc, state.done, len(state.plan.windows)) if state else STOPPED.format(exc)
        error = gr.Error(message, print_exception=False)
        # A long take stopped after some windows: its state rides on the error (pickled with it from a ZeroGPU
        # worker) for the studio to keep for Resume (studio.take_actions), which owns its folder from then on.
        error.take_state = state
        return error
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
    moved = {
        f.name: getattr(take, f.name).to(device)
        for f in fields(take)
        if isinstance(getattr(take, f.name), torch.Tensor)
    }
    return replace(take, **moved)


def on_cpu(result: Result) -> Result:
    """The result on the CPU: a ZeroGPU worker may not hand CUDA tensors back (a TakeState holds none)."""
    if not isinstance(result, Result):
        return result
    return replace(result, take=take_to(result.take, "cpu"))
