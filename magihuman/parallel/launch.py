"""The few calls an entry point (CLI, benchmark, studio) makes to run one clip on several GPUs.

    ctx = init_parallel(args.cp, "full")            # reads torchrun's environment; refuses bad layouts
    if not ctx.is_driver:
        run_worker(ctx, "full", weights_dir, dits, speed)   # serves DiT forwards until rank 0 stops
        return
    engine = load_engine("full", device=ctx.device, ...)
    attach(engine, ctx)                              # rank 0: the engine's DiTs now run on all ranks

Launched as `torchrun --standalone --nproc-per-node N <entry point> --cp N`; without torchrun (or with
`--cp 1`) `init_parallel` returns a single-process context and `attach` changes nothing.
"""

from __future__ import annotations

import argparse
import atexit
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from magihuman.config import ModelSize, dit_presets
from magihuman.parallel.runtime import ParallelContext, init_from_env
from magihuman.parallel.serve import Driver, serve_forever

if TYPE_CHECKING:  # the engine pulls in the media stack, which worker ranks do not need
    from magihuman.engine import Engine
    from magihuman.optimize import SpeedFlags


def add_parallel_argument(parser: argparse.ArgumentParser) -> None:
    """`--cp N`: spread each clip over the N processes torchrun started (shared by the CLI, bench and app)."""
    parser.add_argument(
        "--cp",
        type=int,
        help="GPUs per clip (context parallel; 1, 2, 4 or 8), under `torchrun --nproc-per-node N`; "
        "default: the number of processes",
    )
    parser.add_argument(
        "--cfg-parallel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --cp ≥ 2, run the base model's two CFG forwards on two halves of the GPUs (default: on)",
    )


def init_parallel(
    cp: int | None, model: ModelSize, *, cfg_parallel: bool = True, speed: SpeedFlags | None = None
) -> ParallelContext:
    """Join the torchrun job (or none). Raises ValueError, before anything loads, when `cp` does not match the
    number of processes or does not divide the model's KV heads, or when offload is asked with several GPUs
    (each rank would stream the whole model over PCIe every step; use fp8 instead)."""
    if speed is not None and speed.offload and (cp or 1) > 1:
        raise ValueError("--offload cannot be combined with --cp > 1; fp8 linears make the DiTs fit instead")
    return init_from_env(cp, dit_presets(model)["distill"].dit.num_heads_kv, cfg_parallel=cfg_parallel)


def attach(engine: Engine, ctx: ParallelContext) -> Driver:
    """Rank 0: route every forward of the engine's DiTs through all ranks, and give the engine the CFG pair
    forward and the layout's name (status line, `Result.layout`). Workers are stopped at exit."""
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
    """Rank 0 at the end: stop the workers, leave the group (idempotent)."""
    driver.shutdown()
    if dist.is_initialized():
        dist.destroy_process_group()
