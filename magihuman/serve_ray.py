"""Engine replicas on Ray Serve and the store actor they share (README: Deploying, "How a job runs").

A job streams `(phase, step, total)` tuples, then one `Finished` (mp4s as bytes: the front-end may be on another
host) or one `Failed` (exceptions do not always survive pickling). Only imported with `--replicas` / `--ray`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import ray
import torch
from ray import serve

from magihuman.engine import Engine, GenerationRequest, Result, Take
from magihuman.errors import GenerationCancelled, MagiHumanError
from magihuman.optimize import SpeedFlags, warm_up
from magihuman.options import DEFAULT_DITS, EngineOptions
from magihuman.parallel import start
from magihuman.threads import worker_thread

NAMESPACE = "magihuman"
APP_NAME = "magihuman"
DEPLOYMENT = "EngineReplica"
STORE_NAME = "magihuman-store"
TAKE_TTL_S = 3600  # takes stay upscalable this long after they were made
TAKE_CAPACITY = 256  # and at most this many (a full-size take holds ≈ 20 MB of latents and embedding)
TICKET_TTL_S = 1800  # a ticket whose front-end died without releasing it stops counting after this
RECORD_CAPACITY = 1000
STOP_WAIT_S = 120  # how long a cancelled job may take to reach its next step boundary (a 1080p SR step: ~7 s)
GROUP_START_S = 900  # a context-parallel group: its ranks start, rendezvous and load (the full model: minutes)
STORE_LOOKUP_S = 30  # finding (or creating) the store actor and its first answer
DRILL_ACK_S = 30.0  # the "after_stream" drill's wait for the front-end to have the first item
FAULTS = ("before_stream", "after_stream")  # fault drills: where an armed replica exits (SharedStore.arm_fault)


@dataclass(frozen=True)
class ReplicaSpec:
    """What each replica loads: the model size, weights folder, DiTs and speed steps (one engine per replica)."""

    model: str = "tiny"
    weights_dir: str | None = None
    dits: tuple[str, ...] = DEFAULT_DITS
    speed: SpeedFlags | None = None  # None: the defaults of the replica's device (compile on CUDA)
    gpus: float = 0.0  # per process: 1 on a CUDA cluster, 0 for CPU preview replicas
    cp: int = 1  # processes (GPUs) per replica: a context-parallel group of `cp` on one host
    cfg_parallel: bool = True  # with cp ≥ 2: the base model's two CFG forwards on two halves of the group


@dataclass(frozen=True)
class Finished:
    """A job's result, its take on the CPU and its paths reduced to names; `files` maps those names to bytes."""

    result: Result
    files: dict[str, bytes]
    take_key: str | None
    replica: str


@dataclass(frozen=True)
class Failed:
    """A job that ended without a result. kind: "cancelled", "input" (the user's request), "out_of_memory",
    "missing_take" (the store no longer has it) or "error" (a bug: the message has the class name)."""

    kind: str
    message: str


# --- 1. The shared store (one named actor per cluster) ---


class SharedStore:
    """Takes, the global queue, job records and load failures, shared by every replica and front-end."""

    def __init__(self) -> None:
        self._takes: OrderedDict[str, tuple[float, Finished]] = OrderedDict()
        self._tickets: OrderedDict[str, list] = OrderedDict()  # job id -> [admitted at, started]
        self._records: OrderedDict[str, dict] = OrderedDict()
        self._failures: dict[str, str] = {}
        self._fault: str | None = None

    def ping(self) -> bool:
        return True

    # --- takes ---
    def put_take(self, key: str, finished: Finished) -> None:
        """Keep a take with its base mp4's bytes, so a restarted front-end can show it and have it upscaled."""
        self._expire_takes()
        self._takes[key] = (time.time(), finished)
        while len(self._takes) > TAKE_CAPACITY:
            self._takes.popitem(last=False)

    def get_take(self, key: str) -> Take | None:
        entry = self.get_finished(key)
        return entry.result.take if entry is not None else None

    def drop_take(self, key: str) -> None:
        self._takes.pop(key, None)

    def get_finished(self, key: str) -> Finished | None:
        self._expire_takes()
        entry = self._takes.get(key)
        return entry[1] if entry is not None else None

    def _expire_takes(self) -> None:
        now = time.time()
        while self._takes and now - next(iter(self._takes.values()))[0] > TAKE_TTL_S:
            self._takes.popitem(last=False)

    # --- the global queue ---
    def admit(self, job: str, limit: int) -> int | None:
        """Admit a job if fewer than `limit` are waiting; returns how many admitted jobs wait before it (None:
        the queue is full). Running jobs do not count: they hold a replica, not a queue place."""
        now = time.time()
        for stale in [j for j, (at, _) in self._tickets.items() if now - at > TICKET_TTL_S]:
            del self._tickets[stale]
        waiting = sum(1 for _, started in self._tickets.values() if not started)
        if waiting >= limit:
            return None
        self._tickets[job] = [now, False]
        return waiting

    def position(self, job: str) -> int | None:
        """Jobs admitted before this one that have not started yet (None: unknown or started)."""
        ahead = 0
        for other, (_, started) in self._tickets.items():
            if other == job:
                return None if started else ahead
            ahead += not started
        return None

    def release(self, job: str) -> None:
        self._tickets.pop(job, None)

    # --- records and failures ---
    def record(self, job: str, fields: dict) -> None:
        """Create or update the record of `job` (written by the replica that runs it). Job ids are
        "<ticket>.<attempt>": a recorded job's ticket no longer waits."""
        self._records.setdefault(job, {"job": job}).update(fields)
        ticket = self._tickets.get(job.partition(".")[0])
        if ticket is not None:
            ticket[1] = True
        while len(self._records) > RECORD_CAPACITY:
            self._records.popitem(last=False)

    def records(self) -> list[dict]:
        return list(self._records.values())

    def report_failure(self, replica: str, message: str) -> None:
        self._failures[replica] = message

    def failures(self) -> dict[str, str]:
        return dict(self._failures)

    # --- fault drills ---
    def arm_fault(self, point: str) -> None:
        """The next job on any replica exits its process at `point`: drills the front-end's retry (and the tests')."""
        if point not in FAULTS:
            raise ValueError(f"unknown fault point {point!r}; choose from {', '.join(FAULTS)}")
        self._fault = point

    def claim_fault(self) -> str | None:
        fault, self._fault = self._fault, None
        return fault

    def seen(self, job: str) -> bool:
        """Whether the front-end has received a progress item of `job` (it records that with its first one)."""
        return bool(self._records.get(job, {}).get("seen"))


def shared_store(timeout_s: float = STORE_LOOKUP_S):
    """The cluster's store actor, running or new; detached, so it outlives the front-end that created it."""
    store = (
        ray.remote(SharedStore)
        .options(name=STORE_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0)
        .remote()
    )
    try:
        ray.get(store.ping.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"the shared store actor {STORE_NAME!r} did not answer within {timeout_s:.0f} s") from None
    return store


# --- 2. The replica ---


class EngineReplica:
    """One engine behind Ray Serve, one job at a time (max_ongoing_requests=1): the engine holds the whole GPU."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.name = _replica_name()
        self.store = shared_store()
        self.root = Path(tempfile.mkdtemp(prefix=f"magihuman-replica-{os.getpid()}-"))
        self.ranks: list = []  # the other ranks' `serve` calls (a context-parallel replica): done = ended
        try:
            self.engine, self.ranks = _load(spec, self.root)
        except Exception as exc:  # reported by name; Ray Serve then stops this replica and tries a new one
            traceback.print_exc()
            shutil.rmtree(self.root, ignore_errors=True)
            ray.get(self.store.report_failure.remote(self.name, f"{type(exc).__name__}: {exc}"), timeout=30)
            raise

    def check_health(self) -> None:
        """Ray Serve's periodic health check: a replica whose engine went away is replaced."""
        if self.engine is None:
            raise RuntimeError(f"replica {self.name} has no engine")
        ended, _ = ray.wait(self.ranks, timeout=0) if self.ranks else ([], [])
        broken = getattr(self.engine.parallel, "broken", None)
        if ended or broken:  # a rank of its context-parallel group is gone: the group cannot serve
            raise RuntimeError(f"replica {self.name}: {broken or 'a rank of its context-parallel group ended'}")

    async def generate(self, job: str, request: GenerationRequest) -> AsyncIterator:
        def work(report, cancel) -> Result:
            return self.engine.generate(request, on_progress=report, cancel=cancel)

        async for item in self._run(job, "generate", work):
            yield item

    async def upscale(self, job: str, take_key: str | None, take: Take | None, resolution: str) -> AsyncIterator:
        """Upscale the take stored under `take_key` (or `take` itself, sent when the store has lost it)."""
        if take is None:
            take = await self.store.get_take.remote(take_key)
            if take is None:
                yield Failed("missing_take", "this take is no longer in the shared store")
                return
        folder = Path(tempfile.mkdtemp(prefix="upscale-", dir=self.root))  # the take's own folder is elsewhere
        local = _take_to(replace(take, folder=folder), self.engine.device)

        def work(report, cancel) -> Result:
            return self.engine.upscale(local, resolution, on_progress=report, cancel=cancel)

        async for item in self._run(job, "upscale", work):
            yield item

    async def _run(self, job: str, kind: str, work: Callable) -> AsyncIterator:
        """Run `work(report, cancel)` on the engine thread; yield its progress, then Finished or Failed."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        last: list = [("start", 0, 1)]

        def report(phase: str, step: int, total: int) -> None:
            last[0] = (phase, step, total)
            loop.call_soon_threadsafe(items.put_nowait, (phase, step, total))

        def run() -> Result:
            try:
                return work(report, cancel)
            finally:
                loop.call_soon_threadsafe(items.put_nowait, None)

        fault = await self.store.claim_fault.remote()
        self._record(job, kind=kind, replica=self.name, pid=os.getpid(), started=time.time(), outcome="running")
        if fault == "before_stream":
            await self._exit_for_drill(job, fault)
        future = loop.run_in_executor(worker_thread("replica-job"), run)
        outcome: dict = {"outcome": "failed"}
        try:
            while (item := await items.get()) is not None:
                yield item
                if fault == "after_stream":
                    await self._exit_once_seen(job, fault)
            try:
                result = await future
            except BaseException as exc:  # the engine's error, for the front-end to word
                failed = _failed(exc)
                outcome = {"outcome": failed.kind, "stopped_at": last[0][:2], "error": failed.message}
                yield failed
                return
            finished = self._finished(result, kind)
            outcome = {"outcome": "done"}
            yield finished
        except (asyncio.CancelledError, GeneratorExit):
            outcome = {"outcome": "cancelled", "cancel_at": last[0][:2]}
            raise
        finally:
            cancel.set()
            if not future.done():
                await asyncio.wait([future], timeout=STOP_WAIT_S)  # the engine stops at its next step
            if future.done():
                future.exception()  # a cancelled job's GenerationCancelled: expected, and retrieved
            if outcome["outcome"] == "cancelled":
                outcome["stopped_at"] = last[0][:2]
            self._record(job, ended=time.time(), **outcome)

    async def _exit_once_seen(self, job: str, fault: str) -> None:
        """The "after_stream" drill: exit once the front-end has the item (a yielded item may still be in
        Serve's send buffer, and dying then would look like "nothing streamed")."""
        deadline = time.monotonic() + DRILL_ACK_S
        while not await self.store.seen.remote(job) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._exit_for_drill(job, fault)

    async def _exit_for_drill(self, job: str, fault: str) -> None:
        """An armed fault drill: end this process as a crash would (its record written first)."""
        await self.store.record.remote(job, {"fault": fault})
        os._exit(1)

    def _finished(self, result: Result, kind: str) -> Finished:
        """The result with its files as bytes; a generated take is also kept in the store under a new key."""
        take = _take_to(result.take, "cpu")
        paths = [p for p in (result.video_path, result.sr_video_path) if p is not None]
        if kind == "upscale":
            paths = [result.sr_video_path]
        files = {p.name: p.read_bytes() for p in paths}
        shutil.rmtree(take.folder, ignore_errors=True)
        named = replace(
            result,
            video_path=Path(result.video_path.name),
            sr_video_path=Path(result.sr_video_path.name) if result.sr_video_path else None,
            take=replace(take, base_video_path=Path(take.base_video_path.name), folder=Path(".")),
        )
        take_key = None
        if kind == "generate":
            take_key = uuid.uuid4().hex
            base = replace(named, sr_video_path=None, sr_resolution=None)
            base_files = {named.video_path.name: files[named.video_path.name]}
            self.store.put_take.remote(take_key, Finished(base, base_files, take_key, self.name))
        return Finished(named, files, take_key, self.name)

    def _record(self, job: str, **fields) -> None:
        self.store.record.remote(job, fields)  # fire and forget: records are for tests and the log


def _replica_name() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001  (outside Serve, e.g. a direct construction)
        return f"pid-{os.getpid()}"


def _load(spec: ReplicaSpec, root: Path) -> tuple[Engine, list]:
    """The replica's engine through the one start-up path (`magihuman.parallel.start`), and its other ranks."""
    device = "cuda" if spec.gpus and torch.cuda.is_available() else "cpu"
    speed = spec.speed or SpeedFlags.default(torch.device(device))
    weights = Path(spec.weights_dir) if spec.weights_dir else None
    options = EngineOptions(
        size=spec.model,
        weights_dir=weights,
        device=device,
        dits=spec.dits,
        speed=speed,
        cp=spec.cp,
        cfg_parallel=spec.cfg_parallel,
    )
    ranks: list = []
    if spec.cp > 1:
        engine, ranks = _start_group(options, spec.gpus, root)
    else:
        engine = start(options, output_root=root)
    if speed.compile:
        warm_up(engine)
    return engine, ranks


@ray.remote
class ContextParallelRank:
    """Rank 1 … P − 1 of a replica's context-parallel group; owned by its replica, so it dies with it."""

    def serve(self, rank: int, address: str, port: int, options: EngineOptions) -> int:
        _join_group(rank, options.cp, address, port)
        start(options)  # a worker rank: serve_forever, then leave the group
        return rank


def _start_group(options: EngineOptions, gpus: float, root: Path) -> tuple[Engine, list]:
    """Rank 0 of a `options.cp`-process group: start the other ranks (bundle r for rank r), rendezvous, load."""
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = get_current_placement_group()  # None outside Serve: the ranks go wherever Ray puts them
    address, port = ray.util.get_node_ip_address(), _free_port()
    serving = []
    for rank in range(1, options.cp):
        placement = {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, rank)} if group else {}
        actor = ContextParallelRank.options(num_cpus=1, num_gpus=gpus, **placement).remote()
        serving.append(actor.serve.remote(rank, address, port, options))
    _join_group(0, options.cp, address, port)
    loading = worker_thread("replica-group-start").submit(start, options, output_root=root)
    deadline = time.monotonic() + GROUP_START_S
    while not loading.done():
        ended, _ = ray.wait(serving, timeout=1.0)
        if ended:  # a rank ended before the group started: it failed (its error says why)
            rank = serving.index(ended[0]) + 1
            try:
                ray.get(ended[0])
            except Exception as exc:  # noqa: BLE001  (named and re-raised)
                raise RuntimeError(f"rank {rank} of the CP {options.cp} group failed: {first_line(exc)}") from exc
            raise RuntimeError(f"rank {rank} of the CP {options.cp} group ended before the group started")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the CP {options.cp} group did not start within {GROUP_START_S} s (rendezvous at "
                f"{address}:{port}, then loading the DiTs on every rank)"
            )
    return loading.result(), serving


def _join_group(rank: int, world: int, address: str, port: int) -> None:
    """torchrun's environment for `magihuman.parallel` (each rank is its own Ray worker process)."""
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world, "MASTER_ADDR": address, "MASTER_PORT": port}
    os.environ.update({name: str(value) for name, value in env.items()})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def first_line(exc: BaseException) -> str:
    """The exception's class and first line (Ray's errors carry the whole remote traceback after it)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _take_to(take: Take, device) -> Take:
    return replace(take, text=take.text.to(device), video=take.video.to(device), audio=take.audio.to(device))


def _failed(exc: BaseException) -> Failed:
    if isinstance(exc, GenerationCancelled):
        return Failed("cancelled", str(exc))
    if isinstance(exc, MagiHumanError):
        return Failed("input", str(exc))
    if isinstance(exc, torch.OutOfMemoryError):
        return Failed("out_of_memory", str(exc))
    return Failed("error", f"{type(exc).__name__}: {exc}")


# --- 3. The application ---


@dataclass(frozen=True)
class Scaling:
    """Fixed replicas (`min_replicas == max_replicas`) or autoscaling between them on jobs per replica."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing: float = 1.0
    health_check_period_s: float = 10.0

    def deployment_options(self) -> dict:
        options: dict = {"max_ongoing_requests": 1, "health_check_period_s": self.health_check_period_s}
        if self.min_replicas == self.max_replicas:
            options["num_replicas"] = self.max_replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "target_ongoing_requests": self.target_ongoing,
            }
        return options


def engine_app(spec: ReplicaSpec, scaling: Scaling):
    """The Serve application; a replica of `spec.cp` processes gets that many bundles on one host."""
    actor = {"num_cpus": 1, "num_gpus": spec.gpus}
    options = scaling.deployment_options()
    if spec.cp > 1:
        bundle = {"CPU": 1, "GPU": spec.gpus} if spec.gpus else {"CPU": 1}
        options.update(placement_group_bundles=[bundle] * spec.cp, placement_group_strategy="STRICT_PACK")
    deployment = serve.deployment(EngineReplica, name=DEPLOYMENT, ray_actor_options=actor, **options)
    return deployment.bind(spec)


def app_builder(args: dict):
    """Serve's import-path entry (`serve run magihuman.serve_ray:app_builder`, a RayService's serveConfigV2); args
    model, weights_dir, gpus, cp, min_replicas, max_replicas, target_ongoing_requests."""
    spec = ReplicaSpec(
        model=args.get("model", "full"),
        weights_dir=args.get("weights_dir"),
        gpus=float(args.get("gpus", 1)),
        cp=int(args.get("cp", 1)),
    )
    low = int(args.get("min_replicas", 1))
    scaling = Scaling(low, int(args.get("max_replicas", low)), float(args.get("target_ongoing_requests", 1.0)))
    return engine_app(spec, scaling)
