"""Pipeline mode: the whole engine (random weights, or `--weights-dir`), one 256p take per repetition and its
upscale to each SR resolution; per resolution the seconds of each stage, the published scope against the
published H100 numbers, the DiT arithmetic floor, the achieved TFLOP/s and the peak memory; and the start-up."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from magihuman.bench.flops import H100_BF16_DENSE_TFLOPS, FlopCounter
from magihuman.bench.long_take import LONG_TAKE_RTF_GOALS, time_long_take
from magihuman.bench.memory import free_memory
from magihuman.bench.workload import bench_prompt, cases, fp8_quality, make_model
from magihuman.config import RESOLUTIONS, dit_presets, latent_frames, video_frames
from magihuman.memory import plan_fp8
from magihuman.optimize import apply_speed_flags, warm_up
from magihuman.options import EngineOptions

if TYPE_CHECKING:  # the engine needs the media stack (av, diffusers); forward mode and the DiT helpers do not
    from magihuman.engine import Engine, Result

# One H100, 5-second clip, warm, distilled base, denoising + decode: (published seconds, goal bf16, goal fp8)
PUBLISHED = {"256p": (2.0, 1.5, 1.1), "540p": (8.0, 5.9, 4.6), "1080p": (38.4, 35.0, 31.0)}


@dataclass
class ResolutionTimes:
    """One repetition of one resolution: the base call and (for SR resolutions) the upscale of its take."""

    base: dict[str, float]
    sr: dict[str, float] = field(default_factory=dict)
    dit_flops: float = 0.0
    peak_gb: float | None = None

    @property
    def published_scope(self) -> float:
        """Base denoise + SR denoise + decode of the final video: what the published numbers time."""
        final_decode = self.sr.get("decode", 0.0) if self.sr else self.base.get("decode", 0.0)
        return self.base.get("denoise", 0.0) + self.sr.get("sr", 0.0) + final_decode

    @property
    def dit_seconds(self) -> float:
        return self.base.get("denoise", 0.0) + self.sr.get("sr", 0.0)

    def stage(self, name: str) -> float:
        return self.base.get(name, 0.0) + self.sr.get(name, 0.0)


def run_resolutions(
    engine: Engine, resolutions: list[str], seconds: int, text_tokens: int, repetition: int
) -> dict[str, ResolutionTimes]:
    """One 256p generation, then the upscale of that take to each SR resolution in `resolutions`."""
    from magihuman.engine import GenerationRequest

    counter = FlopCounter(engine.models.dits)
    try:
        request = GenerationRequest(bench_prompt(text_tokens, repetition), resolution="256p", seconds=seconds, seed=0)
        base = engine.generate(request)
        base_flops = counter.take()
        runs = {"256p": ResolutionTimes(base.timings, dit_flops=base_flops, peak_gb=base.peak_memory_gb)}
        for resolution in resolutions:
            if resolution == "256p":
                continue
            up = engine.upscale(base.take, resolution)
            runs[resolution] = ResolutionTimes(
                base.timings, up.timings, base_flops + counter.take(), _max_peak(base, up)
            )
        shutil.rmtree(base.take.folder, ignore_errors=True)
    finally:
        counter.remove()
    return {resolution: runs[resolution] for resolution in resolutions}


def _max_peak(*results: Result) -> float | None:
    peaks = [r.peak_memory_gb for r in results if r.peak_memory_gb is not None]
    return max(peaks) if peaks else None


def run_pipeline(args: argparse.Namespace, options: EngineOptions, resolutions: list[str]) -> None:
    from magihuman.engine import Engine
    from magihuman.parallel import start
    from magihuman.random_models import ALL_DITS, random_models

    dits = ["distill", *(RESOLUTIONS[t].sr_model for t in resolutions if RESOLUTIONS[t].sr_model)]
    dits = [d for d in ALL_DITS if d in dits]
    device, size, flags = torch.device(options.device), options.size, options.speed
    seconds = args.seconds or (5 if size == "full" else 1)
    on_gpu = device.type == "cuda"
    plan = plan_fp8(dits, flags.fp8, device, size, flags.offload)
    if plan.describe() and not args.weights_dir:  # load_engine reports it itself
        print(plan.describe())
    if plan.quantised and not args.weights_dir:
        config = dit_presets(size)["distill"].dit
        layout = cases(["256p"], latent_frames(seconds), video_frames(seconds), args.text_tokens, size)[0].layout
        quality = fp8_quality(make_model(config, device, flags.attention), layout, device, steps=8)
        for name, (video_error, audio_error) in quality.items():
            print(
                f"fp8 vs bf16, distill at 256p, {name}: relative RMS error "
                f"video {video_error:.4f}, audio {audio_error:.4f}"
            )
        free_memory(device)

    output_root = Path(tempfile.mkdtemp(prefix="magihuman-bench-"))
    try:
        began = time.perf_counter()
        if args.weights_dir:
            engine = start(replace(options, dits=tuple(dits)), on_status=print, output_root=output_root)
            source = f"weights loaded from {args.weights_dir}"
            built = steps = time.perf_counter() - began
        else:
            models = random_models(size, 0, device, dits, fp8=plan.quantised)
            built = time.perf_counter() - began
            for line in apply_speed_flags(models, flags, device, plan.quantised):
                print(f"  {line}")
            engine = Engine(models, device, preview=size == "tiny", output_root=output_root)
            steps = time.perf_counter() - began
            source = "random weights built on the device (no disk read; --weights-dir times a real start)"
        warm = warm_up(engine, [t for t in resolutions if t in engine.available_resolutions])
        print(
            f"start-up: {source}: models {built:.1f} s, speed steps {steps - built:.1f} s, "
            f"warm-up {warm:.1f} s; ready in {time.perf_counter() - began:.1f} s"
        )
        warmup = args.warmup if args.warmup is not None else (1 if on_gpu else 0)
        iters = args.iters if args.iters is not None else (2 if on_gpu else 1)
        for i in range(warmup):
            run_resolutions(engine, resolutions, seconds, args.text_tokens, repetition=-1 - i)
        timed = [run_resolutions(engine, resolutions, seconds, args.text_tokens, repetition=i) for i in range(iters)]
        print_pipeline_table(resolutions, timed, seconds, size)
        if args.long_take:
            long_resolutions = [t for t in resolutions if t in LONG_TAKE_RTF_GOALS]
            for line in time_long_take(engine, args.long_take, long_resolutions, args.text_tokens):
                print(line)
    finally:
        shutil.rmtree(output_root, ignore_errors=True)


STAGES = ("text", "denoise", "sr", "decode", "mux")


def summarise(runs: list[ResolutionTimes]) -> dict[str, float]:
    """Medians over the repetitions of one resolution: each stage, the published scope and the DiT seconds."""
    columns = {stage: [r.stage(stage) for r in runs] for stage in STAGES}
    columns["scope"] = [r.published_scope for r in runs]
    columns["dit"] = [r.dit_seconds for r in runs]
    return {name: statistics.median(values) for name, values in columns.items()}


def print_pipeline_table(
    resolutions: list[str], timed: list[dict[str, ResolutionTimes]], seconds: int, size: str
) -> None:
    comparable = size == "full" and seconds == 5  # the published numbers: the 15B model, 5-second clips
    header = (
        f"{'resolution':<10} {'text':>6} {'denoise':>8} {'SR':>7} {'decode':>7} {'mux':>6} {'scope*':>7} "
        f"{'published':>9} {'ratio':>6} {'goal bf16/fp8':>13} {'floor':>6} {'TFLOP/s':>8} {'peak GiB':>8}"
    )
    print(f"\n{seconds}-second clip, median of {len(timed)} run(s), seconds per stage")
    print(header)
    print("-" * len(header))
    for resolution in resolutions:
        runs = [t[resolution] for t in timed]
        m = summarise(runs)
        published, goal_bf16, goal_fp8 = PUBLISHED[resolution]
        versus = (
            f"{published:>9.1f} {m['scope'] / published:>6.2f} {f'{goal_bf16}/{goal_fp8}':>13}"
            if comparable
            else f"{'-':>9} {'-':>6} {'-':>13}"
        )
        flops = runs[0].dit_flops
        peaks = [r.peak_gb for r in runs if r.peak_gb is not None]
        print(
            f"{resolution:<10} {m['text']:>6.2f} {m['denoise']:>8.2f} {m['sr']:>7.2f} {m['decode']:>7.2f} "
            f"{m['mux']:>6.2f} "
            f"{m['scope']:>7.2f} {versus} {flops / (H100_BF16_DENSE_TFLOPS * 1e12):>6.2f} "
            f"{flops / m['dit'] / 1e12:>8.2f} " + (f"{max(peaks):>8.1f}" if peaks else f"{'-':>8}")
        )
    print(
        "* scope = base denoise + SR denoise + decode of the final video (what the published numbers time); "
        "decode and mux include the 256p preview the studio also writes. floor = DiT FLOPs at "
        f"{H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s; TFLOP/s = DiT FLOPs / (denoise + SR)."
    )
    if not comparable:
        print("published/goal columns apply to the full model, 5-second clips on an H100: not comparable here.")
