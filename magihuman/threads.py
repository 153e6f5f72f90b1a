"""Long-lived worker threads, one per purpose and process.

A fresh thread per job gets its own malloc arena, OpenMP team and encoder pool, and resident memory creeps up
job after job; so one thread per purpose is reused, keyed by process id too (threads do not survive a fork).
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
