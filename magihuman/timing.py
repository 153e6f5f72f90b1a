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


def timing_table(timings: dict[str, float], peak_memory_gb: float | None, layout: str | None = None) -> str:
    """Per-stage seconds as a small text table (the CLI prints it, the studio shows it); `layout` names the multi-GPU
    layout that ran it (`Result.layout`)."""
    lines = [f"{'stage':<8} {'seconds':>8}", f"{'-' * 8} {'-' * 8}"]
    lines += [f"{stage:<8} {seconds:>8.2f}" for stage, seconds in timings.items()]
    lines.append(f"{'total':<8} {sum(timings.values()):>8.2f}")
    if peak_memory_gb is not None:
        lines.append(f"peak GPU memory: {peak_memory_gb:.1f} GiB")
    if layout is not None:
        lines.append(f"layout: {layout}")
    return "\n".join(lines)
