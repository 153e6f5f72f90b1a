"""Forking safely while media libraries own threads.

An object owning native threads (an FFmpeg scaler's slice threads) that is freed in a forked child waits there
forever for threads that did not come along (seen: `sws_freeContext` hanging in `os.fork()`, so a ZeroGPU call
never started). A child frees such objects as cyclic garbage (PyAV's containers) and with the parent's other
threads' `threading.local` state (PyAV's per-thread scalers). So media work runs inside a `MediaJob`, and before
every fork the parent waits (bounded) for jobs in flight, drops the scaler cache and collects garbage.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections import Counter

FORK_WAIT_S = 30.0  # how long a fork waits for media jobs in flight before going ahead (and saying so)

_in_flight: Counter[str] = Counter()
_changed = threading.Condition()


class MediaJob:
    """A stretch of media work (an open encoder, a decode) that a fork waits for: a context manager, or
    `start()` / `end()` for work that spans calls (`end` is idempotent)."""

    def __init__(self, name: str) -> None:
        self.name, self._running = name, False

    def start(self) -> None:
        with _changed:
            _in_flight[self.name] += 1
            self._running = True

    def end(self) -> None:
        with _changed:
            if not self._running:
                return
            self._running = False
            _in_flight[self.name] -= 1
            if _in_flight[self.name] <= 0:
                del _in_flight[self.name]
            _changed.notify_all()

    def __enter__(self) -> MediaJob:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.end()


def media_in_flight() -> list[str]:
    with _changed:
        return sorted(_in_flight.elements())


def wait_for_media(timeout_s: float) -> list[str]:
    """Wait until no media job is in flight, at most `timeout_s`; returns those still running (empty: none)."""
    with _changed:
        _changed.wait_for(lambda: not _in_flight, timeout=timeout_s)
        return sorted(_in_flight.elements())


def _drop_pyav_scalers() -> None:
    # PyAV (>= 14) keeps a scaler per thread for VideoFrame.reformat/to_ndarray in this module global. A fresh
    # object releases every thread's scaler here, in the parent, where their slice threads can still be joined.
    frame_module = sys.modules.get("av.video.frame")
    if frame_module is not None and hasattr(frame_module, "_thread_local"):
        frame_module._thread_local = threading.local()


def before_fork() -> None:
    start = time.monotonic()
    busy = wait_for_media(FORK_WAIT_S)
    if busy:
        print(
            f"magihuman.forksafe: forking after {time.monotonic() - start:.0f} s while media work is in flight "
            f"({', '.join(busy)}); the child must not free its objects",
            file=sys.stderr,
        )
    _drop_pyav_scalers()
    gc.collect()


def _after_fork_in_child() -> None:
    # The jobs in flight belong to threads the child does not have; its lock may have been held by one of them.
    global _changed
    _in_flight.clear()
    _changed = threading.Condition()


os.register_at_fork(before=before_fork, after_in_child=_after_fork_in_child)
