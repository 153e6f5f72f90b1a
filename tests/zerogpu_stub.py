"""ZeroGPU on a CPU: spaces' own call path with only the device side stubbed (research/zerogpu.md §4).

`ZeroGpuStub.GPU` is a drop-in for `spaces.GPU` that builds spaces' real `regular_function_wrapper` /
`generator_function_wrapper` (spaces 0.51): every call forks a worker (or reuses an idle one), sends its
arguments and every result through the same multiprocessing queues (so anything unpicklable fails as it would
on a Space), maps exceptions the same way, and forwards a closed generator to the worker as spaces' stop flag.
What is stubbed: the device API (`client.schedule/allow/release`: no HTTP, no quota) and the worker's CUDA
set-up (`spaces.zero.torch.init/unpatch/move`: nothing to select or copy on a CPU; init keeps the fork's CPU
math on one thread, see `_worker_init`).

`cpu_torch_shims()` is for the other kind of test: importing spaces *with* SPACES_ZERO_GPU=true on a CPU-only
torch, so that its CUDA emulation is really active (run it in a subprocess, before `import spaces`).
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import os
from dataclasses import dataclass, field
from typing import TypeVar

import torch

_Result = TypeVar("_Result")


def _no_cuda_init() -> None:
    raise RuntimeError("a real CUDA initialisation was reached (there is no GPU here)")


def _not_in_bad_fork() -> bool:
    return False


def cpu_torch_shims() -> None:
    """What `import spaces` needs from a CUDA build of torch that a CPU build lacks: spaces reads
    `torch.version.cuda` and `torch._C._cuda_init` at import, and pickles `torch.cuda._is_in_bad_fork` by
    reference for its bad-fork probe (so it must be a module-level function)."""
    torch.version.cuda = torch.version.cuda or "12.8"
    if not hasattr(torch._C, "_cuda_init"):
        torch._C._cuda_init = _no_cuda_init
    torch.cuda._is_in_bad_fork = _not_in_bad_fork


@contextlib.contextmanager
def _importable_spaces_zero():
    """Let spaces.zero.torch import on a CPU torch without patching anything (SPACES_ZERO_GPU unset)."""
    assert not os.environ.get("SPACES_ZERO_GPU"), "the stub runs with SPACES_ZERO_GPU unset"
    saved_cuda, had_init = torch.version.cuda, hasattr(torch._C, "_cuda_init")
    torch.version.cuda = saved_cuda or "12.8"
    if not had_init:
        torch._C._cuda_init = _no_cuda_init
    try:
        yield
    finally:
        torch.version.cuda = saved_cuda
        if not had_init:
            del torch._C._cuda_init


def _worker_init(nvidia_uuid: str) -> None:
    """In each fresh worker, where spaces would select the GPU: keep torch's CPU math on one thread. GNU
    OpenMP's thread pool does not survive a fork, so a worker forked from a test process that has computed
    on several threads (an earlier in-process app test) would wait forever in its first parallel region."""
    torch.set_num_threads(1)


@dataclass
class ZeroGpuStub:
    """One stubbed ZeroGPU device. `reuse=False`: every call forks a fresh worker (ZeroGPU promises no reuse);
    True: an idle worker is handed the next call, as spaces does when the device API says so."""

    reuse: bool = False
    schedules: list[tuple[object, object]] = field(default_factory=list)  # (duration, size) per call
    workers: list = field(default_factory=list)  # every spaces Worker started (its stop_event, process)

    def __post_init__(self) -> None:
        with _importable_spaces_zero():
            from spaces.zero import client, wrappers
            from spaces.zero import torch as zero_torch
            from spaces.zero.api import ScheduleResponse
        self._wrappers = wrappers
        stub = self

        def schedule(task_id, request=None, duration=None, gpu_size=None, **_):
            stub.schedules.append((duration, gpu_size))
            return ScheduleResponse(idle=stub.reuse, nvidiaIndex=0, nvidiaUUID="cpu", allowToken="stub")

        class RecordedWorker(wrappers.Worker[_Result]):  # generic: spaces subscripts it in annotations
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                stub.workers.append(self)

        client.schedule = schedule
        client.allow = lambda token: None
        client.release = lambda token, fail=False, allow_404=False: None
        zero_torch.init = _worker_init
        zero_torch.unpatch = lambda: None
        zero_torch.move = lambda callback=None: None
        wrappers.Worker = RecordedWorker

    def GPU(self, task=None, *, duration=None, size=None):  # noqa: N802 (spaces' name)
        if task is None or not callable(task):
            return lambda t: self.GPU(t, duration=duration, size=size)
        if inspect.isgeneratorfunction(task):
            return self._wrappers.generator_function_wrapper(task, duration, size)
        return self._wrappers.regular_function_wrapper(task, duration, size)

    def live_workers(self) -> list:
        return [w for w in self.workers if w.process.is_alive()]

    def close(self) -> None:
        """End every worker this stub started (daemon processes; their sentinels clean up)."""
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.terminate()
            worker.process.join(10)


def fork_context():
    """The start method spaces uses for its workers: primitives made with it before a fork are shared."""
    return multiprocessing.get_context("fork")
