"""The studio's GPU functions on ZeroGPU's real call path (spaces' wrappers: a forked worker per call, pickled
arguments and results, the stop flag of a closed generator), with only the device stubbed (tests/zerogpu_stub),
driven through gradio_client against the tiny engine. Run once with a fresh fork per call, once with an idle
worker reused.
"""

from __future__ import annotations

import importlib
import threading
import time
from datetime import timedelta

import gradio as gr
import pytest
import spaces
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from magihuman.build import load_engine
from magihuman.engine import GenerationRequest, Take
from studio.runtime import EngineSlot
from tests.browser import free_port
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

    def __call__(self, phase: str, step: int) -> None:
        if phase != "base":
            return
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
    return engine


def _client_gone():
    """True once the running event's client has disconnected or cancelled it (as the studio's handlers ask)."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    events = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", None)
    if not isinstance(events, dict) or event_id not in events:
        return lambda: False
    event = events[event_id]
    return lambda: not getattr(event, "alive", True) or event_id not in events


def _blocks(gpu, results: list, takes: dict[str, Take]) -> gr.Blocks:
    """The smallest studio: handlers that call the GPU functions exactly as the contract says."""
    stops: dict[str, threading.Event] = {}

    def run(job, request: gr.Request, progress: gr.Progress):
        stop = stops[request.session_hash] = threading.Event()
        gone = _client_gone()
        result = gpu.run_job(
            job, lambda phase, s, t: progress((s, t), desc=f"{phase} {s}/{t}"), lambda: stop.is_set() or gone()
        )
        results.append(result)
        takes[str(len(takes))] = result.take
        return str(result.video_path), str(result.sr_video_path or ""), str(len(takes) - 1)

    def generate(prompt: str, resolution: str, seed: float, request: gr.Request, progress=gr.Progress()):
        job = gpu.gpu_generate(GenerationRequest(prompt=prompt, resolution=resolution, seconds=1, seed=int(seed)))
        return run(job, request, progress)

    def upscale(take_id: str, resolution: str, request: gr.Request, progress=gr.Progress()):
        return run(gpu.gpu_upscale(takes[take_id], resolution), request, progress)

    def stop(request: gr.Request) -> None:
        if request.session_hash in stops:
            stops[request.session_hash].set()

    with gr.Blocks() as demo:
        prompt, resolution, seed, take = gr.Textbox(), gr.Textbox(), gr.Number(), gr.Textbox()
        base, sr = gr.Textbox(), gr.Textbox()
        outputs = [base, sr, take]
        gr.Button().click(generate, [prompt, resolution, seed], outputs, api_name="generate", concurrency_id="gpu")
        gr.Button().click(upscale, [take, resolution], outputs, api_name="upscale", concurrency_id="gpu")
        gr.Button().click(stop, None, None, api_name="stop", queue=False)
    return demo


@pytest.fixture(scope="module", params=[False, True], ids=["fresh-fork", "reused-worker"])
def zerogpu(request, engine, monkeypatch_module):
    """studio.gpu re-imported with spaces.GPU = the stub's real-wrapper decorator, serving a launched app."""
    stub = ZeroGpuStub(reuse=request.param)
    monkeypatch_module.setattr(spaces, "GPU", stub.GPU)
    import studio.gpu

    gpu = importlib.reload(studio.gpu)
    gpu.bind_slot(EngineSlot.ready(engine))
    results, takes = [], {}
    demo = _blocks(gpu, results, takes)
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
    yield stub, client, results, engine.fault_hook
    demo.close()
    stub.close()
    monkeypatch_module.undo()
    importlib.reload(studio.gpu)  # back to plain spaces.GPU (the identity off ZeroGPU)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _submit_and_watch(client, *args, api_name="/generate"):
    """Submit a job and collect the progress the client sees until it ends; returns (result, progress)."""
    job = client.submit(*args, api_name=api_name)
    seen = []
    _wait(lambda: seen.extend(job.status().progress_data or []) or job.done(), "the job to end")
    return job.result(timeout=WAIT_S), seen


def test_a_clip_crosses_with_progress_and_cpu_tensors(zerogpu) -> None:
    stub, client, results, _ = zerogpu
    (base, sr, take_id), seen = _submit_and_watch(client, "A woman says hello.", "256p", 3)
    assert base.endswith(".mp4") and sr == ""
    assert seen, "no progress reached the client"
    duration, size = stub.schedules[-1]
    assert isinstance(duration, timedelta) and duration.total_seconds() > 0  # the request's own budget
    # The take went back to the worker for an upscale: it pickles, and its result too.
    (_, sr, _), _ = _submit_and_watch(client, take_id, "540p", api_name="/upscale")
    assert sr.endswith("sr_540p.mp4")
    for result in results[-2:]:
        tensors = [result.take.text, result.take.video, result.take.audio]
        assert all(t.device == torch.device("cpu") for t in tensors)
    assert stub.workers, "the calls did not go through spaces' workers"


@pytest.mark.parametrize("how", ["stop", "cancel"])
def test_stop_ends_the_worker_job_within_one_step_and_the_next_job_starts(zerogpu, how) -> None:
    stub, client, _, log = zerogpu
    start = log.arm(PAUSE_STEP)
    job = client.submit("A long take.", "256p", 5, api_name="/generate")
    assert log.reached.wait(WAIT_S), "the worker never reached the pause step"
    stopped_before = {id(w) for w in stub.workers if w.stop_event.is_set()}
    if how == "stop":
        client.predict(api_name="/stop")
    else:
        job.cancel()
    # spaces' stop flag for the worker is raised by the handler's closing of the job (Stop or client gone)
    _wait(lambda: any(w.stop_event.is_set() and id(w) not in stopped_before for w in stub.workers), "the stop flag")
    log.gate.set()
    if how == "stop":
        with pytest.raises(AppError, match="Stopped"):
            job.result(timeout=WAIT_S)
    log.arm(0)
    (base, _, _), _ = _submit_and_watch(client, "The next one.", "256p", 6)
    assert base.endswith(".mp4")
    steps = log.job_steps(start)
    assert steps[:PAUSE_STEP] == list(range(1, PAUSE_STEP + 1))
    assert max(steps) <= PAUSE_STEP + 1, f"the worker ran steps {steps} after a stop at step {PAUSE_STEP}"


def test_engine_errors_arrive_with_their_message(zerogpu) -> None:
    stub, client, _, _ = zerogpu
    with pytest.raises(AppError, match="the prompt is empty"):
        client.predict("   ", "256p", 1, api_name="/generate")
    with pytest.raises(AppError, match="unknown resolution"):
        client.predict("A woman says hello.", "720p", 1, api_name="/generate")
    # every call went to a worker: a fresh fork each, or (reuse) the idle one whenever spaces had it back
    assert (len(stub.workers) < len(stub.schedules)) if stub.reuse else (len(stub.workers) == len(stub.schedules))
