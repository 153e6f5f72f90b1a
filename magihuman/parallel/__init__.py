"""Several GPUs on one clip: Ulysses context parallel and CFG-parallel over torch.distributed."""

from magihuman.parallel.launch import attach, init_parallel, run_worker, shutdown, start
from magihuman.parallel.runtime import Layout, ParallelContext
from magihuman.parallel.serve import Driver, WorkerLost, serve_forever

__all__ = [
    "Driver",
    "Layout",
    "ParallelContext",
    "WorkerLost",
    "attach",
    "init_parallel",
    "run_worker",
    "serve_forever",
    "shutdown",
    "start",
]
