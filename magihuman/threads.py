"""Long-lived worker threads, one per purpose and process.

The engine hands work to a helper thread (the mp4 encoder beside the decoder; the studio's engine job).
Starting a fresh thread per job gives each one its own malloc arena, OpenMP thread team and encoder thread
pool, and the process's resident memory creeps up job after job. One thread per purpose is reused instead.
It is keyed by process id as well: threads do not survive a fork (a ZeroGPU worker), so a forked process
starts its own instead of submitting to a thread that does not exist there.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_THREADS: dict[tuple[int, str], ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def worker_thread(name: str) -> ThreadPoolExecutor:
    """The one thread of this process for `name` (an executor with a single worker, made on first use)."""
    key = (os.getpid(), name)
    with _LOCK:
        if key not in _THREADS:
            _THREADS[key] = ThreadPoolExecutor(1, thread_name_prefix=name)
        return _THREADS[key]
