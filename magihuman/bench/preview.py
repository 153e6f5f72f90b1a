"""Preview mode (the default for `--model tiny`): what a newcomer without a GPU waits for, against the goals of a
2-core CPU without bf16 instructions."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from magihuman.bench.pipeline import STAGES
from magihuman.bench.workload import bench_prompt
from magihuman.optimize import warm_up
from magihuman.options import EngineOptions
from magihuman.precision import compute_dtype, cpu_info

# (what, request seconds, goal in seconds on a 2-core CPU without bf16 instructions)
PREVIEW_GOALS = {
    "clip": ("default clip: 256p, 5 s, distilled, text-to-video", 5, 10.0),
    "upscale": ("upscale a 2-s take to 540p", 2, 20.0),
}


def run_preview(args: argparse.Namespace, options: EngineOptions) -> None:
    """Time the two preview goals with the tiny engine, warm, median of `--iters` runs (default 1)."""
    from magihuman.engine import GenerationRequest
    from magihuman.parallel import start

    device = torch.device(options.device)
    print(f"CPU: {cpu_info().describe()}")
    print(f"preview compute dtype: {str(compute_dtype(device)).removeprefix('torch.')} (the faster one, measured)")
    output_root = Path(tempfile.mkdtemp(prefix="magihuman-bench-"))
    try:
        start = time.perf_counter()
        engine = start(options, output_root=output_root)
        warm = warm_up(engine, ["256p", "540p"])
        print(f"start-up: tiny engine built in {time.perf_counter() - start - warm:.1f} s, warm-up {warm:.1f} s")
        times: dict[str, list[dict[str, float]]] = {"clip": [], "upscale": []}
        for i in range(args.iters or 1):
            clip = engine.generate(
                GenerationRequest(bench_prompt(args.text_tokens, i), seconds=PREVIEW_GOALS["clip"][1], seed=i)
            )
            times["clip"].append(clip.timings)
            take = engine.generate(
                GenerationRequest(bench_prompt(args.text_tokens, -1 - i), seconds=PREVIEW_GOALS["upscale"][1], seed=i)
            )
            times["upscale"].append(engine.upscale(take.take, "540p").timings)
    finally:
        shutil.rmtree(output_root, ignore_errors=True)
    print_preview_table(times)


def print_preview_table(times: dict[str, list[dict[str, float]]]) -> None:
    header = f"{'preview':<48} {'text':>5} {'denoise':>8} {'SR':>6} {'decode':>7} {'mux':>5} {'total':>6} {'goal':>6}"
    print(f"\nseconds per stage, median of {len(times['clip'])} run(s), after warm-up")
    print(header)
    print("-" * len(header))
    for key, runs in times.items():
        what, _, goal = PREVIEW_GOALS[key]
        m = {stage: statistics.median(r.get(stage, 0.0) for r in runs) for stage in STAGES}
        total = statistics.median(sum(r.values()) for r in runs)
        verdict = "met" if total <= goal else "MISSED"
        print(
            f"{what:<48} {m['text']:>5.2f} {m['denoise']:>8.2f} {m['sr']:>6.2f} {m['decode']:>7.2f} {m['mux']:>5.2f} "
            f"{total:>6.2f} {goal:>5.0f}s {verdict}"
        )
    print("goals: a 2-core CPU without bf16 instructions; total = the engine call (what the studio waits for).")
