"""The studio (app.build_demo, its handlers and studio.gpu's GPU functions) on ZeroGPU's real call path: spaces'
wrappers fork a worker per call, pickle the arguments and every result, and forward a closed generator as their
stop flag; only the device is stubbed (tests/zerogpu_stub). Driven through gradio_client with the tiny engine,
once with a fresh fork per call and once with an idle worker reused.
"""

from __future__ import annotations

import importlib
import time
from datetime import timedelta
from pathlib import Path

import pytest
import spaces
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from magihuman.build import load_engine
from magihuman.errors import CheckpointError
from studio.runtime import EngineSlot
from tests.studio import api_arguments, launched, paths
from tests.zerogpu_stub import ZeroGpuStub, fork_context

PAUSE_STEP = 2
WAIT_S = 180  # bound for any wait on a condition (a 2-core CI machine shared with other jobs)


class StepLog:
    """Installed as the engine's fault hook before any worker is forked, so every worker inherits it: logs each
    base step (in shared memory, visible to the test) and can hold the worker at one step until released."""

    def __init__(self) -> None:
        ctx = fork_context()
        self.steps = ctx.Array("i", 256)
        self.count = ctx.Value("i", 0)
        self.pause_at = ctx.Value("i", 0)
        self.reached, self.gate = ctx.Event(), ctx.Event()
        self.fail = ctx.Value("i", 0)  # at the next base step: 1 an engine error, 2 a bug, 3 out of GPU memory

    def __call__(self, phase: str, step: int) -> None:
        if phase != "base":
            return
        if self.fail.value == 1:
            raise CheckpointError("injected: shard 3 of the distill DiT is corrupt")
        if self.fail.value == 2:
            raise ZeroDivisionError("injected")
        if self.fail.value == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        with self.count.get_lock():
            self.steps[self.count.value % 256] = step
            self.count.value += 1
        if step == self.pause_at.value:
            self.reached.set()
            self.gate.wait(WAIT_S)

    def arm(self, step: int) -> int:
        self.reached.clear()
        self.gate.clear()
        self.pause_at.value = step
        return self.count.value

    def job_steps(self, start: int) -> list[int]:
        """The base steps of the job logged from `start` (it ends where the next job's step 1 begins)."""
        logged = [self.steps[i % 256] for i in range(start, self.count.value)]
        return logged[: logged.index(1, 1)] if 1 in logged[1:] else logged


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = load_engine("tiny", output_root=tmp_path_factory.mktemp("outputs"))
    engine.fault_hook = StepLog()
    # As after the in-process app tests of a full run: this process has used the BLAS/OpenMP thread pool
    # before any worker forks (the stub keeps a fork's math on one thread, see tests/zerogpu_stub.py).
    torch.randn(512, 512) @ torch.randn(512, 512)
    return engine


@pytest.fixture(scope="module", params=[False, True], ids=["fresh-fork", "reused-worker"])
def zerogpu(request, engine, monkeypatch_module):
    """The studio with studio.gpu re-imported under spaces.GPU = the stub's real-wrapper decorator."""
    stub = ZeroGpuStub(reuse=request.param)
    monkeypatch_module.setattr(spaces, "GPU", stub.GPU)
    import studio.gpu

    importlib.reload(studio.gpu)  # the handlers call it through the module: they now get the wrapped functions
    import app as studio_app

    demo = studio_app.build_demo(EngineSlot.ready(engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    try:
        with launched(demo, show_error=True) as url:
            try:
                yield stub, Client(url, verbose=False, download_files=False), demo.studio, engine.fault_hook
            finally:
                stub.close()  # first: a handler still waiting on a worker gets "GPU task aborted" and ends
    finally:
        monkeypatch_module.undo()
        importlib.reload(studio.gpu)  # back to plain spaces.GPU (the identity off ZeroGPU)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _submit_and_watch(client, *args, api_name="/generate", **fields):
    """Submit a job and collect the progress the client sees until it ends; returns (result, progress)."""
    job = client.submit(*args, **(api_arguments(**fields) if api_name == "/generate" else {}), api_name=api_name)
    seen = []
    _wait(lambda: seen.extend(job.status().progress_data or []) or job.done(), "the job to end")
    return job.result(timeout=WAIT_S), seen


def test_a_clip_crosses_with_progress_and_cpu_tensors(zerogpu) -> None:
    stub, client, studio, _ = zerogpu
    (_, downloads, seed, _, take_id), seen = _submit_and_watch(client, seed=3)
    assert seed == 3 and [Path(p).name for p in paths(downloads)] == ["base_256p.mp4"]
    assert seen, "no progress reached the client"
    duration, _ = stub.schedules[-1]
    assert isinstance(duration, timedelta) and duration.total_seconds() > 0  # the request's own budget
    # The take goes back to a worker for an upscale: it pickles both ways.
    (_, downloads, _, _, _), _ = _submit_and_watch(client, take_id, "540p", api_name="/upscale")
    assert "sr_540p.mp4" in [Path(p).name for p in paths(downloads)]
    take = studio.takes.get(take_id).take
    assert all(t.device == torch.device("cpu") for t in (take.text, take.video, take.audio))
    assert stub.workers, "the calls did not go through spaces' workers"


@pytest.mark.parametrize("how", ["stop", "cancel"])
def test_stop_ends_the_worker_job_within_one_step_and_the_next_job_starts(zerogpu, how) -> None:
    stub, client, _, log = zerogpu
    start = log.arm(PAUSE_STEP)
    job = client.submit(**api_arguments(prompt="A long take.", seed=5), api_name="/generate")
    assert log.reached.wait(WAIT_S), "the worker never reached the pause step"
    stopped_before = {id(w) for w in stub.workers if w.stop_event.is_set()}
    if how == "stop":
        client.predict(api_name="/stop")
    else:
        job.cancel()
    # spaces' stop flag for the worker is raised by the handler's closing of the job (Stop or client gone)
    _wait(lambda: any(w.stop_event.is_set() and id(w) not in stopped_before for w in stub.workers), "the stop flag")
    log.gate.set()
    with pytest.raises(Exception):  # noqa: B017 (AppError "Stopped", or the cancellation Stop also sends)
        job.result(timeout=WAIT_S)
    log.arm(0)
    (_, downloads, _, _, _), _ = _submit_and_watch(client, seed=6)
    assert [Path(p).name for p in paths(downloads)] == ["base_256p.mp4"]
    steps = log.job_steps(start)
    assert steps[:PAUSE_STEP] == list(range(1, PAUSE_STEP + 1))
    assert max(steps) <= PAUSE_STEP + 1, f"the worker ran steps {steps} after a stop at step {PAUSE_STEP}"


def test_engine_errors_arrive_with_their_message(zerogpu) -> None:
    stub, client, _, log = zerogpu
    log.fail.value = 1  # an engine error, raised in the worker at the first base step
    try:
        with pytest.raises(AppError, match="shard 3 of the distill DiT is corrupt"):
            client.predict(**api_arguments(seed=7), api_name="/generate")
        log.fail.value = 2  # a bug: its class and message still arrive (spaces alone would give the class name)
        with pytest.raises(AppError, match="Generation failed: ZeroDivisionError: injected"):
            client.predict(**api_arguments(seed=8), api_name="/generate")
        log.fail.value = 3  # the same advice as on a local GPU
        with pytest.raises(AppError, match="ran out of memory for this clip. Choose a smaller resolution"):
            client.predict(**api_arguments(seed=9), api_name="/generate")
    finally:
        log.fail.value = 0
    # every call went to a worker: a fresh fork each, or (reuse) the idle one whenever spaces had it back
    assert (len(stub.workers) < len(stub.schedules)) if stub.reuse else (len(stub.workers) == len(stub.schedules))


def test_a_request_beyond_the_quota_is_refused_before_a_gpu_is_asked_for(zerogpu, monkeypatch) -> None:
    import studio.space

    stub, client, _, _ = zerogpu
    monkeypatch.setattr(studio.space, "PLAN", studio.space.zerogpu_plan())  # as on a Space: xlarge, weights to copy
    asked = len(stub.schedules)
    with pytest.raises(AppError, match=r"10-second 1080p clip needs about \d+ s of ZeroGPU time"):
        client.predict(**api_arguments(resolution="1080p", seconds=10), api_name="/generate")
    assert len(stub.schedules) == asked  # refused in the handler's process: no GPU was scheduled


def test_ahead_of_time_compile_returns_package_paths_and_the_main_process_applies_them(zerogpu, monkeypatch, tmp_path):
    """The start-up compile call takes no engine (the worker has it from the fork) and returns only paths; the
    main process then gives every shared layer a lazy forward for its package without loading anything. (The
    compile itself is tested in test_zerogpu.py; here the worker's build is replaced by a stand-in.)"""
    import magihuman.aot
    import studio.gpu
    from magihuman.engine import Engine
    from magihuman.random_models import tiny_models

    stub, _, handlers, _ = zerogpu
    engine = Engine(tiny_models(), "cpu", preview=True)
    built = {}

    def stand_in(dit, x, rope, folder):  # runs in the worker
        return Path(folder) / f"shared_layer-{dit.config.coords_style}.pt2"

    monkeypatch.setattr(magihuman.aot, "build_package", stand_in)
    monkeypatch.setattr(studio.gpu, "package_dir", lambda: tmp_path)
    studio.gpu.bind_slot(EngineSlot.ready(engine))
    try:
        asked = len(stub.schedules)
        studio.gpu.compile_ahead_of_time(engine)
        assert len(stub.schedules) == asked + 1 and stub.schedules[-1][0] == timedelta(seconds=1500)
    finally:
        studio.gpu.bind_slot(handlers.slot)
    for name, dit in engine.models.dits.items():
        built[name] = {layer.forward.package for layer in magihuman.aot.shared_layers(dit)}
        assert all(layer.forward._pid is None for layer in magihuman.aot.shared_layers(dit))  # nothing loaded
    assert built["distill"] == {str(tmp_path / "shared_layer-v2.pt2")}
    assert built["sr-540p"] == {str(tmp_path / "shared_layer-v1.pt2")}


ENDINGS = ["done", "stop", "client-cancel", "engine-error", "out-of-memory", "upscale", "removed-take"]


def _end_a_job(how: str, client, studio, log) -> str:
    """End one GPU job the way `how` says; returns what happened (for failure messages)."""
    if how in ("stop", "client-cancel"):
        log.arm(PAUSE_STEP)
        job = client.submit(**api_arguments(seed=21), api_name="/generate")
        assert log.reached.wait(WAIT_S), f"{how}: the worker never reached base step {PAUSE_STEP}"
        client.predict(api_name="/stop") if how == "stop" else job.cancel()
        log.gate.set()
        with pytest.raises(Exception):  # noqa: B017 (AppError "Stopped", or the cancellation itself)
            job.result(timeout=WAIT_S)
        log.arm(0)
        return f"stopped at base step {PAUSE_STEP}"
    if how in ("engine-error", "out-of-memory"):
        log.fail.value = 1 if how == "engine-error" else 3
        try:
            with pytest.raises(AppError):
                client.predict(**api_arguments(seed=22), api_name="/generate")
        finally:
            log.fail.value = 0
        return "failed in the worker"
    (_, _, _, _, take_id), _ = _submit_and_watch(client, seed=23)
    if how == "upscale":
        _submit_and_watch(client, take_id, "540p", api_name="/upscale")
    if how == "removed-take":
        studio.remove(take_id, [])
        assert studio.takes.get(take_id) is None
    return f"take {take_id} made"


@pytest.mark.parametrize("how", ENDINGS)
def test_after_every_ending_the_next_call_forks_a_fresh_worker_and_its_clip_arrives(zerogpu, how) -> None:
    """The hang this guards against: a worker forked after a job froze inside fork() (a PyAV scaler cached by
    a thread of this process, freed in the child), so every later call waited out its GPU duration."""
    stub, client, studio, log = zerogpu
    if stub.reuse:
        pytest.skip("needs a fresh fork per call")
    state = _end_a_job(how, client, studio, log)
    forked = len(stub.workers)
    job = client.submit(**api_arguments(seed=24), api_name="/generate")
    deadline = time.monotonic() + WAIT_S
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel()
            fresh = [w.process for w in stub.workers[forked:]]
            raise AssertionError(
                f"after a job ended by {how} ({state}), the next clip did not arrive in {WAIT_S} s: "
                f"fresh workers {[(p.pid, p.is_alive()) for p in fresh] or 'none forked'}, "
                f"base steps logged {log.job_steps(max(log.count.value - 8, 0))}"
            )
        time.sleep(0.05)
    _, downloads, seed, _, _ = job.result(timeout=WAIT_S)
    assert seed == 24 and [Path(p).name for p in paths(downloads)] == ["base_256p.mp4"]
    assert len(stub.workers) == forked + 1, f"after {how}: {len(stub.workers) - forked} workers forked, not 1"
    assert stub.workers[-1].process.pid not in {w.process.pid for w in stub.workers[:forked]}
