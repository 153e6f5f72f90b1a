"""Timing and memory helpers shared by the checks: synchronise before reading a clock, warm up first."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from magihuman.bench import synchronize  # also imported from here by the checks, with the other helpers


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int = 1, iters: int = 3) -> float:
    """Median wall seconds of `fn()` over `iters` calls after `warmup` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
