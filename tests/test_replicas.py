"""Engine replicas on Ray Serve (studio.replicas, magihuman.serve_ray): two tiny CPU replicas in one local Ray
instance for the whole module (started and stopped by the `pool` fixture, with bounded waits); one test adds a
replica of two processes (context parallel) beside them.

What ran where is read from the replicas' own job records in the shared store, not from wall time. Every
replica computes in the dtype this process measures (MAGIHUMAN_CPU_DTYPE, inherited by Ray's processes), so
clips of different replicas can be compared.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client

from magihuman.engine import GenerationRequest
from magihuman.options import EngineOptions
from magihuman.precision import CPU_DTYPE_ENV, compute_dtype
from studio import jobs
from studio.handlers import Studio
from studio.replicas import (
    ReplicaOptions,
    ReplicaPool,
    ReplicaSlot,
    SharedTakes,
    _per_replica,
    add_replica_arguments,
    replica_options,
)
from tests.studio import generate, launched, paths
from tests.test_distributed import _assert_same_clip

ROOT = Path(__file__).resolve().parent.parent
START_S = 300  # Ray, Serve and two engines on a shared 2-core machine
JOB_S = 120


def _request(seed: int, seconds: int = 1) -> GenerationRequest:
    return GenerationRequest("A woman says hello.", seconds=seconds, seed=seed)


@pytest.fixture(scope="module")
def pool():
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")
    dtype = os.environ.get(CPU_DTYPE_ENV)
    os.environ[CPU_DTYPE_ENV] = str(compute_dtype("cpu")).removeprefix("torch.")
    # 6 CPUs: the two replicas, the context-parallel replica's two processes, two replacements.
    pool = ReplicaPool(ReplicaOptions(min_replicas=2, max_replicas=2, max_queue=8, cpus=6))
    slot = ReplicaSlot(pool).start()
    try:
        assert slot.wait(START_S), f"the replica pool did not start within {START_S} s: {slot.status.message}"
        assert slot.status.state == "ready", slot.status.message
        pool.slot = slot
        yield pool
    finally:
        pool.close()
        if dtype is None:
            os.environ.pop(CPU_DTYPE_ENV, None)
        else:
            os.environ[CPU_DTYPE_ENV] = dtype


def _joining_pool() -> ReplicaPool:
    """Another front-end on the module's Ray instance (as `--ray auto`): joins the running replicas."""
    pool = ReplicaPool(ReplicaOptions(address="auto", min_replicas=2, max_replicas=2, max_queue=8))
    slot = ReplicaSlot(pool).start()
    assert slot.wait(START_S), f"the joining front-end did not start within {START_S} s: {slot.status.message}"
    assert slot.status.state == "ready", slot.status.message
    pool.slot = slot
    return pool


def _records(pool, **match) -> list[dict]:
    import ray

    records = ray.get(pool._store.records.remote(), timeout=30)
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _wait_for(what: str, probe, timeout: float = JOB_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _run(pool, job, should_stop=lambda: False):
    return jobs.run_job(job, lambda *a: None, should_stop)


def _in_threads(*calls, timeout: float = JOB_S) -> list:
    """Run the calls at once; their results (or exceptions), in order. Every thread is joined (bounded)."""
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except Exception as exc:  # noqa: BLE001  (handed to the test)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a job did not finish within {timeout:.0f} s"
    return results


def _running(count: int) -> bool:
    """Whether Ray Serve reports `count` replicas of the pool's deployment running."""
    from ray import serve

    app = serve.status().applications.get("magihuman")
    return app is not None and app.deployments["EngineReplica"].replica_states.get("RUNNING", 0) == count


def _overlapping_on_two_replicas(records: list[dict]) -> bool:
    return any(
        a["replica"] != b["replica"] and a["started"] < b["ended"] and b["started"] < a["ended"]
        for a in records
        for b in records
    )


# ---------------------------------------------------------------------------------------------------------


def test_default_studio_never_imports_ray():
    """First in this module, before the pool starts Ray; in a fresh interpreter if something imported it."""
    code = "import sys, app; assert not [m for m in sys.modules if m.split('.')[0] == 'ray'], 'ray imported'"
    if "ray" in sys.modules:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        return
    import app  # noqa: F401  (the studio with its flags, handlers and studio.replicas)

    assert not [m for m in sys.modules if m.split(".")[0] == "ray"], "the default studio imported ray"


def test_four_keyword_clients_on_two_replicas(pool, tmp_path):
    import app

    demo = app.build_demo(pool.slot, gpu_functions=pool)
    demo.queue(max_size=app.MAX_QUEUE)
    since = time.time()
    with launched(demo) as url:
        clients = [Client(url, verbose=False, download_files=False) for i in range(4)]
        answers = _in_threads(*(lambda c=c, i=i: generate(c, seed=100 + i) for i, c in enumerate(clients)))
        for answer in answers:
            assert not isinstance(answer, Exception), answer
            (mp4,) = paths(answer[1])
            assert Path(mp4).stat().st_size > 1000  # while served: closing the demo deletes its files
    assert sorted(a[2] for a in answers) == [100, 101, 102, 103]  # each client got its own clip
    done = [r for r in _records(pool, kind="generate", outcome="done") if r["started"] >= since]
    assert len(done) == 4
    assert len({r["replica"] for r in done}) == 2
    assert _overlapping_on_two_replicas(done), done


def test_upscale_on_another_replica_is_bit_identical(pool, tmp_path):
    since = time.time()
    base = _run(pool, pool.gpu_generate(_request(7)))
    (maker,) = [r["replica"] for r in _records(pool, kind="generate", outcome="done") if r["started"] >= since]
    # Two upscales at once: one replica cannot take both (one job each), so one runs on the other replica.
    copies = []
    for name in ("a", "b"):
        folder = tmp_path / name / base.take.folder.name  # the same store key, separate output folders
        folder.mkdir(parents=True)
        copies.append(replace(base.take, folder=folder))
    since = time.time()
    results = _in_threads(*(lambda t=t: _run(pool, pool.gpu_upscale(t, "540p")) for t in copies))
    for result in results:
        assert not isinstance(result, Exception), result
    ups = [r for r in _records(pool, kind="upscale", outcome="done") if r["started"] >= since]
    replicas = {r["replica"] for r in ups}
    assert len(replicas) == 2 and maker in replicas, (maker, ups)  # one upscale ran where the take was not made
    first, second = (r.sr_video_path.read_bytes() for r in results)
    assert first == second


def test_context_parallel_replica_gives_the_one_process_clip(pool, tmp_path):
    """A replica of CP 2 (Serve's placement group of two bundles: the replica is rank 0, a rank actor it starts
    is rank 1) makes the clip a one-process replica makes, within the tolerance of tests/test_distributed.py:
    latents to 1e-4 and the mp4 above 35 dB PSNR in fp32, bitwise in bf16."""
    import torch
    from ray import serve

    from magihuman.serve_ray import Finished, ReplicaSpec, Scaling, engine_app

    request = _request(31)
    alone = _run(pool, pool.gpu_generate(request))
    try:
        (handle,) = _in_threads(
            lambda: serve.run(engine_app(ReplicaSpec(cp=2), Scaling(1, 1)), name="magihuman-cp2", route_prefix=None),
            timeout=START_S,
        )
        assert not isinstance(handle, Exception), handle
        (items,) = _in_threads(lambda: list(handle.options(stream=True).generate.remote("cp2-job.1", request)))
        assert not isinstance(items, Exception), items
    finally:
        serve.delete("magihuman-cp2")
    finished = items[-1]
    assert isinstance(finished, Finished), finished
    assert finished.result.layout == "2 CPU processes: CP 2 (base model: CFG 2 × CP 1)"
    fp32 = os.environ[CPU_DTYPE_ENV] == "float32"
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if fp32 else {}
    torch.testing.assert_close(finished.result.take.video, alone.take.video, **tolerance)
    torch.testing.assert_close(finished.result.take.audio, alone.take.audio, **tolerance)
    split = tmp_path / finished.result.video_path.name
    split.write_bytes(finished.files[split.name])
    _assert_same_clip(split, alone.video_path, fp32)
    (record,) = _records(pool, job="cp2-job.1")
    assert record["outcome"] == "done", record


def test_takes_survive_a_front_end_restart(pool):
    """Front-end 1 makes a take and is shut down (Ray, the replicas and the store stay); front-end 2, started
    afterwards, finds the take by the id the browser kept in its history and upscales it."""
    first = _joining_pool()
    try:
        studio = Studio(first.slot, gpu_functions=first)
        assert isinstance(studio.takes, SharedTakes)
        result = _run(first, first.gpu_generate(_request(41)))
        take_id = studio.takes.add(result)
        base = result.video_path.read_bytes()
    finally:
        first.close()
    assert not result.video_path.exists()  # front-end 1's files went with it
    second = _joining_pool()
    try:
        studio = Studio(second.slot, gpu_functions=second)
        *_, answered_id = studio.upscale(take_id, "540p", None, progress=lambda *a, **k: None)
        stored = studio.takes.get(take_id)
        assert answered_id == take_id
        assert stored.base_video.read_bytes() == base  # the take as front-end 1 showed it
        assert stored.take.seed == 41
        assert stored.sr_videos["540p"].stat().st_size > 1000
        studio.takes.remove(take_id)  # removed from the history: gone from the shared store as well
        assert second.take_store().get(take_id) is None
    finally:
        second.close()


def test_stop_and_closed_client_halt_within_one_step(pool):
    seen: list = []

    def stop_after_second_step() -> bool:
        return any(p.phase == "base" and p.step >= 2 for p in seen)

    def watching(job):
        for item in job:
            if isinstance(item, jobs.Progress):
                seen.append(item)
            yield item

    since = time.time()
    with pytest.raises(gr.Error, match="Stopped"):
        _run(pool, watching(pool.gpu_generate(_request(11, seconds=2))), stop_after_second_step)

    # A closed client: the handler's generator is dropped mid-job, without a Stop.
    job = pool.gpu_generate(_request(12, seconds=2))
    for item in job:
        if isinstance(item, jobs.Progress) and item.phase == "base" and item.step >= 2:
            break
    job.close()

    def cancelled():
        records = [r for r in _records(pool, outcome="cancelled") if r["started"] >= since and "ended" in r]
        return records if len(records) == 2 else None

    for record in _wait_for("two cancelled jobs in the records", cancelled):
        (phase, asked), (stopped_phase, stopped) = record["cancel_at"], record["stopped_at"]
        assert phase == stopped_phase == "base", record
        assert stopped - asked <= 1, record


def test_full_queue_is_refused_with_a_clear_message(pool):
    import ray

    fillers = [f"filler-{i}" for i in range(pool.options.max_queue)]
    try:
        for job in fillers:
            assert ray.get(pool._store.admit.remote(job, pool.options.max_queue), timeout=30) is not None
        with pytest.raises(gr.Error, match="queue is full"):
            _run(pool, pool.gpu_generate(_request(13)))
    finally:
        for job in fillers:
            pool._store.release.remote(job)


def test_replica_whose_engine_fails_to_load_is_reported_by_name(pool):
    from magihuman.serve_ray import EngineReplica, ReplicaSpec

    with pytest.raises(ValueError, match="unknown model"):
        EngineReplica(ReplicaSpec(model="huge"))  # outside Serve, the replica is named after its process
    assert pool.layout == "2 replicas on local Ray, 1 CPU process per replica"
    pool._described = (0.0, "")  # the status line's cache
    assert f"replica pid-{os.getpid()} failed to load: ValueError: unknown model 'huge'" in pool.describe()


def test_retried_once_when_nothing_streamed_and_not_after(pool):
    """Fault drills (the replica process exits at an exact point): before its first progress item, the job runs
    again on another replica and the client gets the clip; after it, a clear error and no second attempt."""
    import ray

    ray.get(pool._store.arm_fault.remote("before_stream"), timeout=30)
    since = time.time()
    result = _run(pool, pool.gpu_generate(_request(51)))
    assert result.video_path.is_file()
    first, second = sorted(
        (r for r in _records(pool, kind="generate") if r["started"] >= since), key=lambda r: r["job"]
    )
    ticket = first["job"].partition(".")[0]
    assert (first["job"], second["job"]) == (f"{ticket}.1", f"{ticket}.2")
    assert first["fault"] == "before_stream" and "ended" not in first, first  # its process exited mid-job
    assert second["outcome"] == "done" and second["replica"] != first["replica"], (first, second)

    ray.get(pool._store.arm_fault.remote("after_stream"), timeout=30)
    since = time.time()
    with pytest.raises(gr.Error, match="replica running this clip stopped"):
        _run(pool, pool.gpu_generate(_request(52)))
    (only,) = [r for r in _records(pool, kind="generate") if r["started"] >= since]
    assert only["fault"] == "after_stream" and only["job"].endswith(".1"), only
    # Ray Serve replaces both replicas meanwhile; the next test waits for that (and checks it).


def test_killed_replica_mid_job(pool):
    since = time.time()
    outcome: list = []

    def client() -> None:
        try:
            outcome.append(_run(pool, pool.gpu_generate(_request(21, seconds=5))))
        except Exception as exc:  # noqa: BLE001  (handed to the test)
            outcome.append(exc)

    victim = threading.Thread(target=client)
    victim.start()
    running = _wait_for(
        "the job to start on a replica",
        lambda: [r for r in _records(pool, kind="generate", outcome="running") if r["started"] >= since],
    )
    killed = running[0]["pid"]
    time.sleep(0.5)  # mid-job: past its first progress items
    os.kill(killed, signal.SIGKILL)
    victim.join(JOB_S)
    (result,) = outcome
    if isinstance(result, Exception):
        assert isinstance(result, gr.Error) and "replica running this clip stopped" in str(result), result
    else:
        assert result.video_path.is_file()  # retried on the other replica before anything streamed

    served = _run(pool, pool.gpu_generate(_request(22)))  # the next client: the surviving replica
    assert served.video_path.is_file()

    _wait_for("Ray Serve to replace the killed replica", lambda: _running(2), timeout=180)

    def served_by_two_replicas():  # the handle learns of the new replica shortly after it runs
        since = time.time()
        results = _in_threads(*(lambda s=s: _run(pool, pool.gpu_generate(_request(s))) for s in (23, 24)))
        assert all(not isinstance(r, Exception) for r in results), results
        after = [r for r in _records(pool, kind="generate", outcome="done") if r["started"] >= since]
        return len({r["pid"] for r in after}) == 2 and killed not in {r["pid"] for r in after}

    _wait_for("two jobs at once on the surviving and the new replica", served_by_two_replicas, timeout=JOB_S)


# ---------------------------------------------------------------------------------------------------------
# Without Ray: the flags, and the default studio never importing it
# ---------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    EngineOptions.add_arguments(parser)
    add_replica_arguments(parser)
    return parser


def _options(argv: list[str]):
    return replica_options(_parser().parse_args(argv))


def test_replica_flags_and_config_file(tmp_path):
    assert _options([]) is None
    assert _options(["--replicas", "3"]) == ReplicaOptions(min_replicas=3, max_replicas=3)
    auto = _options(["--ray", "auto", "--min-replicas", "1", "--max-replicas", "4"])
    assert (auto.address, auto.min_replicas, auto.max_replicas) == ("auto", 1, 4)
    config = tmp_path / "replicas.yaml"
    config.write_text("min_replicas: 2\nmax_replicas: 8\nmax_queue: 40\ntarget_ongoing_requests: 1.5\n")
    scaled = _options(["--replica-config", str(config), "--max-replicas", "6"])
    assert (scaled.min_replicas, scaled.max_replicas, scaled.max_queue, scaled.target_ongoing_requests) == (
        2,
        6,
        40,
        1.5,
    )
    config.write_text("max_replica: 8\n")
    with pytest.raises(SystemExit, match="unknown keys"):
        _options(["--replica-config", str(config)])
    with pytest.raises(SystemExit, match="min"):
        _options(["--min-replicas", "4", "--max-replicas", "2"])
    groups = _options(["--replicas", "4", "--cp", "2"])
    assert groups.cp == 2 and groups.describe() == "4 replicas × CP 2 on local Ray"
    assert groups.local_cpus() >= 4 * 2 + 2  # every process of every replica, and a replacement
    with pytest.raises(SystemExit, match="--cp 0"):
        _options(["--replicas", "2", "--cp", "0"])


def test_replicas_load_with_the_studio_engine_flags():
    """--cp, --cfg-parallel and the speed steps reach every replica; device defaults follow the replicas'."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")
    argv = ["--replicas", "2", "--cp", "2", "--no-cfg-parallel", "--attention", "math", "--fp8", "--no-cache"]
    args = _parser().parse_args(argv)
    pool = ReplicaPool(replica_options(args), args)
    try:
        on_cpu, on_gpus = pool._spec(0.0), pool._spec(1.0)
    finally:
        pool.close()
    assert (on_cpu.model, on_cpu.cp, on_cpu.cfg_parallel, on_cpu.gpus) == ("tiny", 2, False, 0.0)
    assert (on_cpu.speed.attention, on_cpu.speed.fp8, on_cpu.speed.cache_dir) == ("math", True, None)
    assert not on_cpu.speed.compile and on_gpus.speed.compile  # compile: on by default on CUDA only
    assert on_gpus.model == "full"
    assert (_per_replica(2, 1.0), _per_replica(1, 1.0), _per_replica(2, 0.0)) == ("2 GPUs", "1 GPU", "2 CPU processes")
    too_many = ReplicaPool(ReplicaOptions(cp=4))
    try:
        with pytest.raises(ValueError, match="context-parallel size 4"):  # the tiny model has 2 KV heads
            too_many._spec(0.0)
    finally:
        too_many.close()


def test_shared_queue_counts_waiting_jobs_only():
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")
    from magihuman.serve_ray import SharedStore

    store = SharedStore()  # the actor's class, called directly
    assert (store.admit("a", 2), store.admit("b", 2), store.admit("c", 2)) == (0, 1, None)
    store.record("a.1", {"outcome": "running"})  # a replica took job a (attempt 1): it no longer waits
    assert store.position("a") is None and store.position("b") == 0
    assert store.admit("c", 2) == 1
    store.release("b")
    assert store.position("c") == 0
