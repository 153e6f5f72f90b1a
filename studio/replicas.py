"""The studio's jobs on engine replicas (`magihuman.serve_ray`; README: Deploying): `ReplicaPool` stands in for
`studio.gpu`'s GPU functions. Ray is imported only when a pool starts, so the default studio never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import concurrent.futures
import importlib.util
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr

from magihuman.config import dit_presets
from magihuman.engine import GenerationRequest, Result, Take
from magihuman.optimize import SpeedFlags
from magihuman.parallel.ulysses import check_cp_size
from studio import jobs
from studio.history import StoredTake, TakeStore
from studio.jobs import Progress
from studio.runtime import EngineSlot, EngineStatus

DEFAULT_MAX_QUEUE = 16  # waiting jobs over all front-ends (the one-process studio's queue holds 16 too)
STORE_TIMEOUT_S = 30
START_TIMEOUT_S = 600  # replicas loading the full model from disk, compiling and warming up
QUEUE_FULL = "The queue is full ({} clips are waiting for a GPU). Try again in a minute."
REPLICA_LOST = (
    "The GPU replica running this clip stopped ({}). Generate again: the other replicas keep serving, and Ray "
    "is starting a replacement."
)
TAKE_PREFIX = "take-"  # a take's front-end folder is take-<key of the take in the shared store>
TAKE_KEY = re.compile(r"[0-9a-f]{32}")  # the store's keys (uuid4 hex): also the studio's take ids


@dataclass(frozen=True)
class ReplicaOptions:
    """Where the replicas run (`address` None: a local Ray instance), how many, and the global queue's bound."""

    address: str | None = None
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 1.0
    max_queue: int = DEFAULT_MAX_QUEUE
    gpus_per_replica: float | None = None  # per process; None: 1 where the cluster has GPUs, else 0 (CPU)
    cp: int = 1  # processes (GPUs) per replica, a context-parallel group on one host (`--cp`)
    cpus: int | None = None  # a local instance's logical CPUs; None: enough for every process, plus a spare

    def describe(self) -> str:
        """e.g. "4 replicas × CP 2 on local Ray" (8 GPUs as 4 groups of 2)."""
        where = f"Ray cluster at {self.address}" if self.address else "local Ray"
        if self.min_replicas == self.max_replicas:
            count = f"{self.max_replicas} replica{'s' if self.max_replicas > 1 else ''}"
        else:
            count = f"{self.min_replicas}–{self.max_replicas} replicas"
        group = f" × CP {self.cp}" if self.cp > 1 else ""
        scaling = " (autoscaling on queue length)" if self.min_replicas != self.max_replicas else ""
        return f"{count}{group}{scaling} on {where}"

    def local_cpus(self) -> int:
        """One CPU per process, plus one replica's worth so a replacement schedules before the old one frees its."""
        if self.cpus is not None:
            return self.cpus
        return max(os.cpu_count() or 1, self.max_replicas * self.cp) + self.cp


def add_replica_arguments(parser: argparse.ArgumentParser) -> None:
    """--replicas / --ray and the autoscaling and queue settings (README: Deploying)."""
    group = parser.add_argument_group("engine replicas on Ray Serve (pip install -r requirements-ray.txt)")
    group.add_argument("--replicas", type=int, help="start a local Ray instance with N engine replicas")
    group.add_argument("--ray", metavar="ADDRESS", help="join a Ray cluster (`auto`, or host:port of its head)")
    group.add_argument("--min-replicas", type=int, help="autoscaling: fewest replicas (default: --replicas)")
    group.add_argument("--max-replicas", type=int, help="autoscaling: most replicas (default: --replicas)")
    group.add_argument("--max-queue", type=int, help=f"jobs waiting, all front-ends (default {DEFAULT_MAX_QUEUE})")
    group.add_argument("--replica-config", metavar="YAML", help="these settings from a YAML file (flags win)")


def replica_options(args: argparse.Namespace) -> ReplicaOptions | None:
    """The options the flags (and --replica-config) ask for; None without --replicas, --ray or a config."""
    config = _read_config(args.replica_config) if getattr(args, "replica_config", None) else {}
    flags = {
        "address": args.ray,
        "replicas": args.replicas,
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "max_queue": args.max_queue,
    }
    values = {**config, **{k: v for k, v in flags.items() if v is not None}}
    if not values:
        return None
    count = values.pop("replicas", None) or 1
    options = ReplicaOptions(
        address=values.get("address"),
        min_replicas=int(values.get("min_replicas", count)),
        max_replicas=int(values.get("max_replicas", max(count, values.get("min_replicas", 1)))),
        target_ongoing_requests=float(values.get("target_ongoing_requests", 1.0)),
        max_queue=int(values.get("max_queue", DEFAULT_MAX_QUEUE)),
        gpus_per_replica=values.get("gpus_per_replica"),
        cp=1 if getattr(args, "cp", None) is None else args.cp,
    )
    if not 0 <= options.min_replicas <= options.max_replicas or options.max_replicas < 1:
        raise SystemExit(f"replicas: need 0 ≤ min ({options.min_replicas}) ≤ max ({options.max_replicas}) and max ≥ 1")
    if options.max_queue < 1:
        raise SystemExit("--max-queue must be at least 1")
    if options.cp < 1:
        raise SystemExit(f"--cp {options.cp}: each replica needs at least one process")
    return options


CONFIG_KEYS = {"address", "replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "max_queue"}


def _read_config(path: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"--replica-config {path}: {exc}") from None
    unknown = set(data) - CONFIG_KEYS - {"gpus_per_replica"} if isinstance(data, dict) else {"(not a mapping)"}
    if unknown:
        raise SystemExit(f"--replica-config {path}: unknown keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    return data


def replica_demo(build_demo, options: ReplicaOptions, flags: argparse.Namespace):
    """The studio with its jobs on a replica pool; every replica loads with the studio's engine `flags`."""
    if importlib.util.find_spec("ray") is None:
        raise SystemExit("--replicas / --ray need Ray: pip install -c constraints.txt -r requirements-ray.txt")
    pool = ReplicaPool(options, flags)
    return build_demo(ReplicaSlot(pool), gpu_functions=pool)


@dataclass(frozen=True)
class PoolEngine:
    """What the page reads of `slot.engine` when replicas run the jobs (the front-end loads no models)."""

    preview: bool
    layout: str
    models: None = None


class ReplicaPool:
    """Engine replicas behind the studio; `gpu_generate` / `gpu_upscale` stand in for studio.gpu's."""

    jobs_at_once = None  # the studio's events do not queue jobs themselves: the shared store's queue does

    def __init__(self, options: ReplicaOptions, flags: argparse.Namespace | None = None) -> None:
        self.options, self.flags = options, flags or argparse.Namespace()
        self.output_root = Path(tempfile.mkdtemp(prefix="magihuman-frontend-"))
        self.layout = options.describe()
        self._handle = self._store = None
        self._started_ray = False
        self._loop = asyncio.new_event_loop()  # one thread waits on every job's stream, with timeouts
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="replica-streams", daemon=True)
        self._described: tuple[float, str] = (0.0, "")

    # --- start and stop ---------------------------------------------------------------------------------

    def start(self, status: Callable[[str], None]) -> PoolEngine:
        """Start or join Ray, then deploy the replicas and wait until they serve (EngineSlot's load)."""
        import ray
        from ray import serve

        from magihuman import serve_ray

        options = self.options
        if not self._loop_thread.is_alive():
            self._loop_thread.start()
        if not ray.is_initialized():
            status(f"starting {'a local Ray instance' if options.address is None else 'Ray: ' + options.address}")
            local = {"num_cpus": options.local_cpus()} if options.address is None else {}
            # The replicas import this checkout's engine package, shipped by Ray, on every node.
            code = {"py_modules": [str(Path(serve_ray.__file__).parent)]}
            # Ray's local processes die with the *thread* that started them (Linux parent-death signal), and
            # this runs on the slot's short-lived loader thread: start them on the pool's long-lived one.
            self._on_loop_thread(
                lambda: ray.init(
                    address=options.address,
                    namespace=serve_ray.NAMESPACE,
                    runtime_env=code,
                    include_dashboard=False,
                    **local,
                )
            )
            self._started_ray = options.address is None
            atexit.register(self.close)  # after ray.init: runs before Ray's own exit hook shuts it down
            serve.start(proxy_location="Disabled")  # jobs come through handles; no HTTP proxy
        gpus = options.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        spec = self._spec(gpus)
        scaling = serve_ray.Scaling(
            options.min_replicas, options.max_replicas, options.target_ongoing_requests, health_check_period_s=5.0
        )
        self._store = serve_ray.shared_store()
        per_replica = _per_replica(options.cp, gpus)
        status(f"starting {options.describe()} ({spec.model} engine, {per_replica} per replica)")
        handle = _running_app(serve_ray.APP_NAME) if options.address is not None else None
        if handle is not None:  # another front-end or a RayService deployed it: redeploying would restart it
            status("joining the replicas already serving on the cluster")
        else:
            try:
                handle = serve.run(serve_ray.engine_app(spec, scaling), name=serve_ray.APP_NAME, route_prefix=None)
            except RuntimeError as exc:  # the deployment failed: name the replicas that could not load
                raise RuntimeError(f"{exc}. {self._failures()}") from None
        self._handle = handle.options(stream=True)
        self.layout = f"{options.describe()}, {per_replica} per replica"
        status(self.layout)
        return PoolEngine(preview=spec.model == "tiny", layout=self.layout)

    def _spec(self, gpus: float):
        """What every replica loads: the flags, with the defaults of the replicas' device (known only now)."""
        from magihuman import serve_ray

        flags, device = self.flags, "cuda" if gpus else "cpu"
        model = getattr(flags, "model", None) or ("full" if gpus else "tiny")
        check_cp_size(self.options.cp, dit_presets(model)["distill"].dit.num_heads_kv)
        speed = SpeedFlags.from_args(flags, device) if vars(flags) else None
        weights = getattr(flags, "weights_dir", None)
        return serve_ray.ReplicaSpec(
            model=model,
            weights_dir=str(weights) if weights else None,
            speed=speed,
            gpus=gpus,
            cp=self.options.cp,
            cfg_parallel=getattr(flags, "cfg_parallel", True),
        )

    def _on_loop_thread(self, call):
        """`call()` run on the pool's thread (which lives until `close`); its result or exception."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(call())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(timeout=START_TIMEOUT_S)

    def close(self) -> None:
        """Stop the local Ray instance this pool started (a cluster's replicas stay for the other front-ends)."""
        self._handle = None
        if self._started_ray:
            import ray
            from ray import serve

            from magihuman import serve_ray

            self._started_ray = False
            if ray.is_initialized():  # a Serve call after Ray's own exit hook would start a new instance
                serve.delete(serve_ray.APP_NAME)
                self._on_loop_thread(ray.shutdown)
        if self._loop_thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=10)
        shutil.rmtree(self.output_root, ignore_errors=True)

    def describe(self) -> str:
        """The status line: the layout, the replicas running now and any that failed to load (by name)."""
        at, text = self._described
        if time.monotonic() - at < 2.0:
            return text
        from ray import serve

        from magihuman import serve_ray

        try:
            app = serve.status().applications.get(serve_ray.APP_NAME)
            states = app.deployments[serve_ray.DEPLOYMENT].replica_states if app else {}
            running = states.get("RUNNING", 0)
            text = f"{self.layout}; {running} running now"
            failures = self._failures()
            text = f"{text}. {failures}" if failures else text
        except Exception as exc:  # noqa: BLE001  (a status line must not fail the page)
            text = f"{self.layout}; replica status unavailable ({type(exc).__name__})"
        self._described = (time.monotonic(), text)
        return text

    def _failures(self) -> str:
        import ray

        if self._store is None:
            return ""
        failures = ray.get(self._store.failures.remote(), timeout=5)
        return "; ".join(f"replica {name} failed to load: {message}" for name, message in failures.items())

    # --- the GPU functions ------------------------------------------------------------------------------

    def gpu_generate(self, request: GenerationRequest) -> Iterator[Progress | Result]:
        """Generate on a free replica: Progress items (the queue position while waiting), then the Result."""
        return self._job("generate", (request,), None)

    def gpu_upscale(self, take: Take, resolution: str) -> Iterator[Progress | Result]:
        """Upscale a take on any replica: by its key in the shared store, or sent along if the store lost it."""
        folder = Path(take.folder)
        key = folder.name[len(TAKE_PREFIX) :] if folder.name.startswith(TAKE_PREFIX) else None
        return self._job("upscale", (key, None, resolution), take, fallback=(None, take, resolution))

    # --- takes ------------------------------------------------------------------------------------------

    def take_store(self) -> SharedTakes:
        """The studio's take store (studio.handlers.Studio asks its GPU functions for one)."""
        return SharedTakes(self)

    def restore(self, key: str) -> Result | None:
        """A take the shared store still keeps, its base mp4 written into a new take folder here (else None)."""
        import ray

        if self._store is None:
            return None
        finished = ray.get(self._store.get_finished.remote(key), timeout=STORE_TIMEOUT_S)
        return self._local_result(finished, None) if finished is not None else None

    def forget(self, key: str) -> None:
        if self._store is not None:
            self._store.drop_take.remote(key)

    def _job(self, method: str, args: tuple, take: Take | None, fallback: tuple | None = None):
        import ray

        job = uuid.uuid4().hex
        ahead = ray.get(self._store.admit.remote(job, self.options.max_queue), timeout=STORE_TIMEOUT_S)
        if ahead is None:
            raise gr.Error(QUEUE_FULL.format(self.options.max_queue), title="Queue full", print_exception=False)
        try:
            attempt = 0
            while True:
                attempt += 1
                try:
                    yield from self._stream(method, job, attempt, args, take, ahead)
                    return
                except _MissingTake:
                    if fallback is None:
                        raise gr.Error("That take is no longer on the GPU servers; generate it again.") from None
                    args, fallback = fallback, None
                except _ReplicaLost as lost:
                    if lost.streamed or attempt >= 2:  # retried once, and only if the user saw nothing yet
                        raise gr.Error(REPLICA_LOST.format(lost.reason), print_exception=False) from None
        finally:
            self._store.release.remote(job)

    def _stream(self, method: str, job: str, attempt: int, args: tuple, take: Take | None, ahead: int):
        import ray

        from magihuman.serve_ray import Failed, Finished, first_line

        response = getattr(self._handle, method).remote(f"{job}.{attempt}", *args)
        last, streamed, done = Progress("queued", ahead, self.options.max_queue), False, False
        pending = asked = None
        try:
            while True:
                pending = asyncio.run_coroutine_threadsafe(_next_item(response), self._loop)
                while True:
                    try:
                        item = pending.result(timeout=jobs.HEARTBEAT_S)
                        break
                    except TimeoutError:
                        if not streamed:  # still waiting for a replica: keep the queue position current
                            if asked is not None and ray.wait([asked], timeout=0)[0]:
                                ahead = ray.get(asked)
                                last = Progress("queued", ahead, self.options.max_queue) if ahead is not None else last
                                asked = None
                            if asked is None:
                                asked = self._store.position.remote(job)
                        yield last  # heartbeat: run_job asks should_stop() at every item
                pending = None
                if isinstance(item, tuple):
                    if not streamed:  # from now on a lost replica is not retried (and a drill may fire)
                        self._store.record.remote(f"{job}.{attempt}", {"seen": True})
                    last, streamed = Progress(*item), True
                    yield last
                elif isinstance(item, Finished):
                    done = True
                    yield self._local_result(item, take)
                    return
                elif isinstance(item, Failed):
                    done = True
                    if item.kind == "missing_take":
                        raise _MissingTake
                    raise _user_error(item)
                else:
                    done = True
                    raise gr.Error("The GPU replica ended the job without a result; generate again.")
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            done = True
            raise _ReplicaLost(streamed, first_line(exc)) from None
        finally:
            if not done:  # closed (Stop, client gone) or failed here: end the job on its replica
                response.cancel()
                if pending is not None:
                    pending.cancel()

    def _local_result(self, finished, take: Take | None) -> Result:
        """The replica's result with its files written here: a new take folder, or the upscaled take's."""
        result = finished.result
        if take is None:
            folder = self.output_root / f"{TAKE_PREFIX}{finished.take_key}"
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(take.folder)
        for name, data in finished.files.items():
            (folder / name).write_bytes(data)
        sr_path = folder / result.sr_video_path.name if result.sr_video_path else None
        if take is None:
            take = replace(result.take, base_video_path=folder / result.video_path.name, folder=folder)
        return replace(result, video_path=take.base_video_path, sr_video_path=sr_path, take=take)


def _per_replica(cp: int, gpus: float) -> str:
    """What one replica holds: "2 GPUs", "1 GPU", "2 CPU processes"."""
    if gpus:
        return f"{cp * gpus:g} GPU{'' if cp * gpus == 1 else 's'}"
    return f"{cp} CPU process{'es' if cp > 1 else ''}"


def _running_app(name: str):
    """A handle to the Serve application `name` if it is running on the cluster, else None."""
    from ray import serve

    try:
        app = serve.status().applications.get(name)
    except Exception:  # noqa: BLE001  (Serve not started on the cluster yet)
        return None
    return serve.get_app_handle(name) if app is not None and app.status == "RUNNING" else None


class _ReplicaLost(Exception):
    def __init__(self, streamed: bool, reason: str) -> None:
        super().__init__(reason)
        self.streamed, self.reason = streamed, reason


class _MissingTake(Exception):
    pass


_END = object()


async def _next_item(response):
    try:
        return await response.__anext__()
    except StopAsyncIteration:
        return _END


def _user_error(failed) -> gr.Error:
    """The message the user sees for a replica's Failed item (worded as studio.gpu words local errors)."""
    if failed.kind == "cancelled":
        return gr.Error(jobs.STOPPED.format(failed.message), print_exception=False)
    if failed.kind == "input":
        return gr.Error(failed.message, print_exception=False)
    if failed.kind == "out_of_memory":
        return gr.Error(jobs.OUT_OF_MEMORY, print_exception=False)
    return gr.Error(f"Generation failed: {failed.message}")


class SharedTakes(TakeStore):
    """The studio's takes on a replica pool: a take id this front-end does not know (it restarted, or another
    front-end made it) is its key in the shared store, and is restored from there."""

    def __init__(self, pool: ReplicaPool) -> None:
        super().__init__()
        self.pool = pool
        self._restoring = threading.Lock()  # one restore at a time: two would write the same take folder

    def add(self, result: Result, take_id: str | None = None) -> str:
        folder = Path(result.take.folder).name
        return super().add(result, take_id or folder.removeprefix(TAKE_PREFIX))

    def get(self, take_id: str | None) -> StoredTake | None:
        stored = super().get(take_id)
        if stored is not None or not isinstance(take_id, str) or not TAKE_KEY.fullmatch(take_id):
            return stored
        with self._restoring:
            stored = super().get(take_id)  # restored meanwhile by another request
            if stored is None and (restored := self.pool.restore(take_id)) is not None:
                super().add(restored, take_id)
                stored = super().get(take_id)
        return stored

    def remove(self, take_id: str) -> None:
        super().remove(take_id)
        self.pool.forget(take_id)


class ReplicaSlot(EngineSlot):
    """The studio's engine slot for a pool: loading starts it; once ready the status is its live description."""

    def __init__(self, pool: ReplicaPool) -> None:
        super().__init__(pool.start)
        self.pool = pool

    @property
    def status(self) -> EngineStatus:
        status = super().status
        if status.state != "ready":
            return status
        return EngineStatus("ready", self.pool.describe(), status.seconds)
