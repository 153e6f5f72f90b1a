"""Long takes in the benchmark (`--long-take 60`): seconds of work per second of output (real-time factor)."""

from __future__ import annotations

import shutil
import time
from typing import TYPE_CHECKING

from magihuman.bench.workload import bench_prompt
from magihuman.timing import seconds_since

if TYPE_CHECKING:
    from magihuman.engine import Engine

# One H100, 60-s take: 256p in <= 30 s, 540p in <= 100 s (issue 20, arithmetic from the published timings)
LONG_TAKE_RTF_GOALS = {"256p": 0.5, "540p": 100 / 60}


def time_long_take(engine: Engine, seconds: int, resolutions: list[str], text_tokens: int) -> list[str]:
    """One take of `seconds` per resolution (a fresh base stage each, SR on top where asked), made window by
    window: one line each with the wall time, the windows and the real-time factor against the goal."""
    from magihuman.engine import GenerationRequest

    lines = []
    for resolution in resolutions:
        request = GenerationRequest(bench_prompt(text_tokens, 0), resolution=resolution, seconds=seconds, seed=0)
        start = time.perf_counter()
        result = engine.generate(request)
        elapsed = seconds_since(start, engine.device)
        windows = len(result.take.plan.windows) if result.take.plan is not None else 1
        goal = LONG_TAKE_RTF_GOALS.get(resolution)
        lines.append(
            f"long take {seconds} s at {resolution}: {elapsed:.1f} s in {windows} windows, real-time factor "
            f"{elapsed / seconds:.2f}" + (f" (goal on one H100: <= {goal:.2f})" if goal else "")
        )
        shutil.rmtree(result.take.folder, ignore_errors=True)
    return lines
