"""Several GPUs on one clip: Ulysses context parallel and CFG-parallel over torch.distributed.

`ulysses` (the split and the exchange around attention), `runtime` (torchrun environment, layout, process
groups), `serve` (rank 0 drives, the other ranks serve DiT forwards), `launch` (the calls an entry point makes).
"""

from magihuman.parallel.launch import add_parallel_argument, attach, init_parallel, run_worker, shutdown
from magihuman.parallel.runtime import Layout, ParallelContext
from magihuman.parallel.serve import Driver, WorkerLost, serve_forever

__all__ = [
    "Driver",
    "Layout",
    "ParallelContext",
    "WorkerLost",
    "add_parallel_argument",
    "attach",
    "init_parallel",
    "run_worker",
    "serve_forever",
    "shutdown",
]
