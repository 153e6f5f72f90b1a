"""Process groups for several GPUs on one clip: read torchrun's environment, check the layout, build the groups.

Distilled and SR forwards run CP N over all processes; the CFG base model runs 2 branches × N/2 (conditional and
unconditional at once), CP groups being contiguous ranks (NVLink neighbours). Command headers go over a separate
gloo group with a very long timeout, so idle workers wait on a CPU socket, not in an NCCL collective that would
time out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from magihuman.parallel.ulysses import Shard, check_cp_size
from magihuman.precision import CPU_DTYPE_ENV, compute_dtype

# A forward of the 15B model at 1080p takes seconds; a collective waiting this long means a peer is gone.
DATA_TIMEOUT = timedelta(minutes=10)
# Idle workers wait for the next command on this group for as long as the studio stays up.
CONTROL_TIMEOUT = timedelta(days=365)


@dataclass(frozen=True)
class Layout:
    """How `world` processes split the DiT work: CP `cp`, and `cfg` branches for the guided base model."""

    world: int
    cp: int
    cfg: int
    accelerator: str = "GPU"

    @property
    def branch_cp(self) -> int:
        return self.world // self.cfg

    def describe(self) -> str:
        """e.g. "4 GPUs: CP 4 (base model: CFG 2 × CP 2)", "1 GPU"."""
        plural = self.accelerator + ("es" if self.accelerator.endswith("s") else "s")
        units = f"{self.world} {plural if self.world > 1 else self.accelerator}"
        if self.world == 1:
            return units
        base = f" (base model: CFG 2 × CP {self.branch_cp})" if self.cfg == 2 else ""
        return f"{units}: CP {self.cp}{base}"


@dataclass
class ParallelContext:
    """This process's place in the job (`world == 1`: no process groups); `branch` 0 is conditional."""

    rank: int
    local_rank: int
    layout: Layout
    device: torch.device
    control: dist.ProcessGroup | None = None
    world_shard: Shard = Shard(None, 0, 1)
    branch: int = 0
    branch_shard: Shard = Shard(None, 0, 1)

    @property
    def world(self) -> int:
        return self.layout.world

    @property
    def is_driver(self) -> bool:
        """Rank 0 runs the engine (and the studio); the others serve DiT forwards."""
        return self.rank == 0

    def describe(self) -> str:
        return self.layout.describe()


def requested_world(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    return int(env.get("WORLD_SIZE", "1"))


def plan_layout(cp: int | None, world: int, num_heads_kv: int, *, cfg_parallel: bool = True) -> Layout:
    """Check `--cp` against the processes torchrun started and the model's KV heads; raises ValueError with
    the reason (refused at start-up, before any model loads)."""
    cp = world if cp is None else cp
    if cp != world:
        hint = (
            f"launch with: torchrun --standalone --nproc-per-node {cp} ... --cp {cp}"
            if world == 1
            else f"pass --cp {world}, or start {cp} processes"
        )
        raise ValueError(f"--cp {cp} does not match the {world} process(es) of this job: {hint}")
    check_cp_size(cp, num_heads_kv)
    accelerator = "GPU" if torch.cuda.is_available() else "CPU process"
    return Layout(world, cp, 2 if cfg_parallel and world >= 2 else 1, accelerator)


def init_from_env(
    cp: int | None,
    num_heads_kv: int,
    *,
    cfg_parallel: bool = True,
    environ: Mapping[str, str] | None = None,
) -> ParallelContext:
    """Join the job torchrun started, or make a single-process context without torchrun."""
    env = os.environ if environ is None else environ
    world = requested_world(env)
    layout = plan_layout(cp, world, num_heads_kv, cfg_parallel=cfg_parallel)
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world == 1:
        return ParallelContext(0, local_rank, layout, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=DATA_TIMEOUT)
    if (
        device.type == "cpu"
        and dist.get_rank() == 0
        and "TORCHELASTIC_RUN_ID" in env
        and env.get("OMP_NUM_THREADS") == "1"
    ):
        # torchrun gives each process one CPU thread; rank 0 runs the encoders alone, so it takes them back (and
        # its CPU convolutions, which depend on the thread count, round as in a single-process run).
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    if device.type == "cpu":
        _share_cpu_dtype()
    return _build_groups(dist.get_rank(), local_rank, layout, device)


def _share_cpu_dtype() -> None:
    """Every rank computes in rank 0's preview dtype: each would otherwise time fp32 against bf16 itself, and
    under load two ranks can pick differently, after which their collectives disagree on tensor sizes."""
    choice = [os.environ.get(CPU_DTYPE_ENV) or str(compute_dtype("cpu")).removeprefix("torch.")]
    dist.broadcast_object_list(choice, src=0)
    os.environ[CPU_DTYPE_ENV] = choice[0]


def _build_groups(rank: int, local_rank: int, layout: Layout, device: torch.device) -> ParallelContext:
    # Every process must create every group, in the same order.
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    world_shard = Shard(dist.group.WORLD, rank, layout.world)
    branch, branch_shard = 0, Shard(None, 0, 1)
    if layout.cfg == 2:
        size = layout.branch_cp
        branch = rank // size
        for b in range(2):
            ranks = list(range(b * size, (b + 1) * size))
            group = dist.new_group(ranks) if size > 1 else None
            if b == branch and size > 1:
                branch_shard = Shard(group, rank - b * size, size)
    return ParallelContext(rank, local_rank, layout, device, control, world_shard, branch, branch_shard)
