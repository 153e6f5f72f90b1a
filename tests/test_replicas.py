"""Engine replicas on Ray Serve (studio.replicas, magihuman.serve_ray): two tiny CPU replicas in one local Ray
instance for the whole module (started and stopped by the `pool` fixture, with bounded waits).

What ran where is read from the replicas' own job records in the shared store, not from wall time.
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
from studio import jobs
from studio.replicas import ReplicaOptions, ReplicaPool, ReplicaSlot, add_replica_arguments, replica_options
from tests.studio import generate, launched, paths

ROOT = Path(__file__).resolve().parent.parent
START_S = 300  # Ray, Serve and two engines on a shared 2-core machine
JOB_S = 120


def _request(seed: int, seconds: int = 1) -> GenerationRequest:
    return GenerationRequest("A woman says hello.", seconds=seconds, seed=seed)


@pytest.fixture(scope="module")
def pool():
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")
    pool = ReplicaPool(ReplicaOptions(min_replicas=2, max_replicas=2, max_queue=8))
    slot = ReplicaSlot(pool).start()
    try:
        assert slot.wait(START_S), f"the replica pool did not start within {START_S} s: {slot.status.message}"
        assert slot.status.state == "ready", slot.status.message
        pool.slot = slot
        yield pool
    finally:
        pool.close()


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


def _in_threads(*calls) -> list:
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
        t.join(JOB_S)
    assert not any(t.is_alive() for t in threads), "a job did not finish"
    return results


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
    pool._described = (0.0, "")  # the status line's cache
    assert f"replica pid-{os.getpid()} failed to load: ValueError: unknown model 'huge'" in pool.describe()


def test_killed_replica_mid_job(pool):
    from ray import serve

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

    def two_running():
        app = serve.status().applications.get("magihuman")
        return app is not None and app.deployments["EngineReplica"].replica_states.get("RUNNING", 0) == 2

    _wait_for("Ray Serve to replace the killed replica", two_running, timeout=180)

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


def _options(argv: list[str]):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cp", type=int)
    add_replica_arguments(parser)
    return replica_options(parser.parse_args(argv))


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
    with pytest.raises(SystemExit, match="--cp"):
        _options(["--replicas", "2", "--cp", "2"])


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
