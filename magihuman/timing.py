"""Synchronise, then read the clock: the one way this project times work (CUDA queues kernels and returns at
once, so a clock read without waiting for the device would time the queueing, not the work)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on `device` so far (a no-op off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_since(start: float, device: torch.device | str) -> float:
    """Wall seconds from `start` (a `time.perf_counter()` reading) until `device` has finished its work."""
    synchronize(device)
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], device: torch.device | str, warmup: int = 1, iters: int = 3) -> float:
    """Median seconds of `fn()` over `iters` calls after `warmup` untimed ones, each timed from an idle device."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        times.append(seconds_since(start, device))
    return statistics.median(times)
