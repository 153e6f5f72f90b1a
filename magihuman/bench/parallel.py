"""Benchmark of several GPUs on one clip: `torchrun --standalone --nproc-per-node N -m magihuman.bench --cp N`.

Per resolution, rank 0 times the DiT forward and the pipeline on all ranks (CP N) and alone (CP 1) with the same
models, so the scaling is measured in one run; beside it, the bytes sent and an arithmetic H100 expectation.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from magihuman.bench.flops import forward_flops
from magihuman.bench.pipeline import run_resolutions, summarise
from magihuman.bench.workload import cases, sample_inputs
from magihuman.config import RESOLUTIONS, DiTConfig, dit_presets, latent_frames, video_frames
from magihuman.packing import TokenLayout
from magihuman.parallel.runtime import ParallelContext
from magihuman.timing import median_seconds

# An arithmetic model of context parallel on H100 SXM with NVLink/NVSwitch (README, "Several GPUs on one clip").
H100_ACHIEVED_FLOPS = 560e12  # one GPU on the reference's own timings: 500-620 TFLOP/s per DiT forward
H100_ALL_TO_ALL_BYTES_PER_S = 250e9  # effective all-to-all bandwidth per GPU (NCCL all-reduce busbw ≈ 470 GB/s)
COLLECTIVE_LATENCY_S = 40e-6


def exchanged_bytes(config: DiTConfig, layout: TokenLayout, cp: int, element_bytes: int = 2) -> float:
    """Bytes one rank sends per forward in the Ulysses all-to-alls (two per layer, bf16 by default):
    (P−1)/P of its N/P rows of q|k|v (Hq + 2·Hkv heads), and of the attention output (Hq heads)."""
    if cp == 1:
        return 0.0
    c, n = config, layout.num_tokens
    per_token = (2 * c.num_heads_q + 2 * c.num_heads_kv) * c.head_dim * element_bytes
    return c.num_layers * (cp - 1) / cp * n / cp * per_token


def _gemm_efficiency(tokens_per_rank: float) -> float:
    """Matrix products lose efficiency when a rank holds few rows (assumed, from the note's model)."""
    if tokens_per_rank >= 4000:
        return 1.0
    if tokens_per_rank >= 2000:
        return 0.9
    return 0.8 if tokens_per_rank >= 1000 else 0.65


def expected_h100_seconds(config: DiTConfig, layout: TokenLayout, cp: int) -> float:
    """Arithmetic seconds of one DiT forward on `cp` H100s: FLOPs / (P · achieved rate · GEMM efficiency)
    + all-to-all bytes / bandwidth + 2 collectives per layer × latency. A model, not a measurement."""
    single = forward_flops(config, layout) / H100_ACHIEVED_FLOPS
    if cp == 1:
        return single
    compute = single / cp / _gemm_efficiency(layout.num_tokens / cp)
    comm = exchanged_bytes(config, layout, cp) / H100_ALL_TO_ALL_BYTES_PER_S
    return compute + comm + 2 * config.num_layers * COLLECTIVE_LATENCY_S


def run(args: argparse.Namespace, ctx: ParallelContext, size: str, flags, resolutions: list[str]) -> None:
    from magihuman.memory import plan_fp8
    from magihuman.optimize import apply_speed_flags, optimize_dit, warm_up
    from magihuman.parallel.launch import attach, shutdown
    from magihuman.parallel.serve import serve_forever
    from magihuman.random_models import ALL_DITS, random_dits, random_models

    device = ctx.device
    dits = [d for d in ALL_DITS if d == "distill" or d in {RESOLUTIONS[t].sr_model for t in resolutions}]
    plan = plan_fp8(dits, flags.fp8, device, size, False)
    if not ctx.is_driver:
        models = random_dits(size, 0, device, dits, fp8=plan.quantised)
        for name, dit in models.items():
            optimize_dit(dit, replace(flags, fp8=name in plan.quantised), device)
        serve_forever(ctx, models)
        torch.distributed.destroy_process_group()
        return

    from magihuman.engine import Engine

    models = random_models(size, 0, device, dits, fp8=plan.quantised)
    apply_speed_flags(models, flags, device, plan.quantised)
    output_root = Path(tempfile.mkdtemp(prefix="magihuman-bench-cp-"))
    engine = Engine(models, device, preview=size == "tiny", output_root=output_root)
    driver = attach(engine, ctx)
    seconds = args.seconds or (5 if size == "full" else 1)
    on_gpu = device.type == "cuda"
    iters = args.iters if args.iters is not None else (3 if on_gpu else 2)
    try:
        print(f"layout: {ctx.describe()}")
        warm_up(engine, [t for t in resolutions if t in engine.available_resolutions])
        with driver.detached():
            warm_up(engine, [t for t in resolutions if t in engine.available_resolutions])
        rows = []
        for case in cases(resolutions, latent_frames(seconds), video_frames(seconds), args.text_tokens, size):
            dit = engine.models.dits[case.model]
            forward = partial(dit, *sample_inputs(dit.config, case.layout, device))

            with torch.inference_mode():
                cp = dit.context_parallel
                sent_before = cp.bytes_sent if cp is not None else 0
                split = median_seconds(forward, device, warmup=1, iters=iters)
                sent = (cp.bytes_sent - sent_before) / (iters + 1) if cp is not None else 0
                with driver.detached():
                    alone = median_seconds(forward, device, warmup=1, iters=iters)
            rows.append((case, dit.config, alone, split, sent))
        e2e = _end_to_end(engine, driver, resolutions, seconds, args.text_tokens, iters)
    finally:
        shutdown(driver)
        shutil.rmtree(output_root, ignore_errors=True)
    _print(rows, e2e, ctx, size, args.text_tokens)


def _end_to_end(engine, driver, resolutions, seconds, text_tokens, iters) -> dict[str, tuple[float, float]]:
    """Per resolution, median seconds of the published scope (base denoise + SR + final decode): (CP 1, CP N)."""

    def median_scope() -> dict[str, float]:
        timed = [run_resolutions(engine, resolutions, seconds, text_tokens, repetition=i) for i in range(iters)]
        return {resolution: summarise([t[resolution] for t in timed])["scope"] for resolution in resolutions}

    split = median_scope()
    with driver.detached():
        alone = median_scope()
    return {resolution: (alone[resolution], split[resolution]) for resolution in resolutions}


def _print(rows, e2e, ctx: ParallelContext, size: str, text_tokens: int) -> None:
    p = ctx.layout.cp
    full = {
        c.resolution: c
        for c in cases([row[0].resolution for row in rows], latent_frames(5), video_frames(5), text_tokens, "full")
    }
    presets = dit_presets("full")
    header = (
        f"{'resolution':<10} {'model':<9} {'tokens':>7} {'CP1 ms':>9} {f'CP{p} ms':>9} {'speedup':>8} {'MB sent':>8} "
        f"| {'tokens':>7} {'GB sent':>8} {'CP1 s':>7} {f'CP{p} s':>7} {'speedup':>8}"
    )
    print(f"\nper DiT forward, median. Left: measured here ({ctx.describe()}, {size} preset). Right: the 15B model,")
    print("5-second clip, on H100s with NVLink: ARITHMETIC EXPECTATION, not a measurement")
    print(header)
    print("-" * len(header))
    for case, _, alone, split, sent in rows:
        big = full[case.resolution]
        config = presets[big.model].dit
        h1, hp = (expected_h100_seconds(config, big.layout, cp) for cp in (1, p))
        print(
            f"{case.resolution:<10} {case.model:<9} {case.layout.num_tokens:>7} {1e3 * alone:>9.1f} "
            f"{1e3 * split:>9.1f} "
            f"{alone / split:>7.2f}x {sent / 1e6:>8.2f} | {big.layout.num_tokens:>7} "
            f"{exchanged_bytes(config, big.layout, p) / 1e9:>8.2f} {h1:>7.3f} {hp:>7.3f} {h1 / hp:>7.2f}x"
        )
    print("\nend to end per resolution (base denoise + SR + final decode; decode on rank 0), median seconds, measured")
    print(f"{'resolution':<10} {'CP1 s':>8} {f'CP{p} s':>8} {'speedup':>8}")
    for resolution, (alone, split) in e2e.items():
        print(f"{resolution:<10} {alone:>8.2f} {split:>8.2f} {alone / split:>7.2f}x")
    print(
        "MB/GB sent: what one rank sends in the all-to-alls of one forward (measured on rank 0; arithmetic for the "
        f"15B model in bf16). Arithmetic: FLOPs at {H100_ACHIEVED_FLOPS / 1e12:.0f} TFLOP/s per GPU (less when a "
        f"rank holds < 4k tokens), all-to-all at {H100_ALL_TO_ALL_BYTES_PER_S / 1e9:.0f} GB/s per GPU, "
        f"{COLLECTIVE_LATENCY_S * 1e6:.0f} µs per collective."
    )
    if size == "tiny":
        print("NOTE: tiny preset: the measured columns test the code path, not the 15B model's speed")
