"""The engine's one start-up, for every entry point (CLI, benchmark, studio), on one GPU or several:

    engine = start(EngineOptions.from_args(args))   # None on the worker ranks, once rank 0 has stopped
    if engine is None:
        return

Ranks other than 0 load the DiTs and serve rank 0's forwards; rank 0 loads the engine and `attach`es it.
Without torchrun the engine runs in this process.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from magihuman.config import ModelSize, dit_presets
from magihuman.parallel.runtime import ParallelContext, init_from_env, requested_world
from magihuman.parallel.serve import Driver, serve_forever

if TYPE_CHECKING:  # the engine pulls in the media stack, which worker ranks do not need
    from magihuman.engine import Engine
    from magihuman.optimize import SpeedFlags
    from magihuman.options import EngineOptions


def start(
    options: EngineOptions,
    on_status: Callable[[str], None] | None = None,
    output_root: str | Path | None = None,
    ctx: ParallelContext | None = None,
) -> Engine | None:
    """The engine on rank 0; on other ranks, serve its forwards until it stops and return None. `ctx`: the job,
    if the caller joined it already. ValueError, before anything loads, for a refused layout."""
    from magihuman.build import load_engine  # the loaders pull in the weight stack; keep this module light

    if ctx is None and (requested_world() > 1 or (options.cp or 1) > 1):
        ctx = init_parallel(options.cp, options.size, cfg_parallel=options.cfg_parallel, speed=options.speed)
    if ctx is not None and not ctx.is_driver:
        run_worker(ctx, options.size, options.weights_dir, options.dits, options.speed)
        return None
    device = ctx.device if ctx is not None and ctx.world > 1 else options.device
    engine = load_engine(
        options.size, options.weights_dir, device, options.dits, options.speed, output_root, on_status=on_status
    )
    if ctx is not None:
        attach(engine, ctx)
    return engine


def init_parallel(
    cp: int | None, model: ModelSize, *, cfg_parallel: bool = True, speed: SpeedFlags | None = None
) -> ParallelContext:
    """Join the torchrun job (or none). Offload is refused with several GPUs: each rank would stream the whole
    model over PCIe every step."""
    if speed is not None and speed.offload and (cp or 1) > 1:
        raise ValueError("--offload cannot be combined with --cp > 1; fp8 linears make the DiTs fit instead")
    return init_from_env(cp, dit_presets(model)["distill"].dit.num_heads_kv, cfg_parallel=cfg_parallel)


def attach(engine: Engine, ctx: ParallelContext) -> Driver:
    """Rank 0: route the engine's DiT forwards through all ranks; the workers are stopped at exit."""
    driver = Driver(ctx, engine.models.dits)
    if ctx.world > 1:
        engine.parallel = driver
        atexit.register(shutdown, driver)
    return driver


def run_worker(
    ctx: ParallelContext,
    model: ModelSize,
    weights_dir: str | Path | None,
    dits: Iterable[str],
    speed: SpeedFlags | None = None,
) -> None:
    """Ranks ≠ 0: load the DiTs rank 0 loads, serve its forwards until it stops, leave the group."""
    from magihuman.build import load_dits  # the loaders pull in the weight stack; keep this module light

    serve_forever(ctx, load_dits(model, weights_dir, ctx.device, dits, speed))
    dist.destroy_process_group()


def shutdown(driver: Driver) -> None:
    driver.shutdown()
    if dist.is_initialized():
        dist.destroy_process_group()
