"""Benchmark: `python -m magihuman.bench`.

Pipeline mode (default). Builds the whole engine with random weights (speed does not depend on weight values):
the full-size models on CUDA, the tiny preset on the CPU (a smoke test of the code path, which the output
says). Applies the speed flags, warms up (compiling, when on), then per repetition generates one clip at 256p
and super-resolves that take to each SR tier, and prints per tier: the time of each stage (text, denoise,
SR, decode, mux), the published scope (base denoise + SR + final decode) against the published H100 numbers
and the issue's goals, the arithmetic floor of the DiT work at 790 TFLOP/s, the achieved TFLOP/s and the peak
memory; and the start-up time (build or load, speed steps, warm-up). `--weights-dir` loads the real weights
instead, so the start-up line measures a real start from local disk.

Preview mode (the default for `--model tiny` without `--tiers`/`--seconds`): what a newcomer without a GPU
waits for. After a warm-up it times the studio's default clip (256p, 5 s, distilled, text-to-video) end to end
and the upscale of a 2-s take to 540p, against the goals of a 2-core CPU without bf16 instructions (10 s and
20 s), and names the CPU, its bf16/AVX-512 instructions and the dtype the preview computes in.

Long takes (`--long-take 60`, pipeline mode): after the tier tables, one take of that many seconds per
resolution (256p and 540p among the chosen ones), made window by window, as seconds of work per second of
output (real-time factor) against the goals of one H100.

Forward mode (`--forward`). Times one DiT forward at the token counts of each tier (1080p with the
frame-local window on 32 layers): ms per forward, TFLOP/s, MFU and peak memory, naming the attention backend.

Several GPUs (`torchrun --standalone --nproc-per-node N -m magihuman.bench --cp N`): per tier the DiT forward
and the pipeline on all N ranks against rank 0 alone, the bytes exchanged, and the H100 arithmetic
(`magihuman.parallel.bench`).

Both take the speed flags of `magihuman.optimize` (--no-compile, --fp8/--no-fp8, --offload, --attention,
--cache); fp8 left unset is "auto" (`magihuman.memory`), as in the app. Whenever fp8 is used they report the
quality check: the relative RMS error of the fp8 distilled model against the same model in bf16, on the same
inputs, for one velocity and (pipeline mode) for a whole 8-step latent.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from magihuman.config import RESOLUTIONS, DiTConfig, decoded_frames, dit_presets, latent_frames, video_frames
from magihuman.fp8 import fp8_kernel, quantize_fp8_, relative_rms
from magihuman.memory import plan_fp8
from magihuman.model.attention import select_backend
from magihuman.model.dit import DiT, build_dit, init_random_
from magihuman.optimize import (
    SpeedFlags,
    add_speed_arguments,
    apply_speed_flags,
    optimize_dit,
    warm_up,
)
from magihuman.packing import TokenLayout
from magihuman.parallel import bench as parallel_bench
from magihuman.parallel.launch import add_parallel_argument, init_parallel
from magihuman.precision import compute_dtype, cpu_info
from magihuman.sampling import denoise_distill, gaussian_noise

if TYPE_CHECKING:  # the engine needs the media stack (av, diffusers); forward mode and the DiT helpers do not
    from magihuman.engine import Engine, Result

H100_BF16_DENSE_TFLOPS = 790.0  # measured 8192³ bf16 matmul ceiling
# One H100, 5-second clip, warm, distilled base, denoising + decode: (published seconds, goal bf16, goal fp8)
PUBLISHED = {"256p": (2.0, 1.5, 1.1), "540p": (8.0, 5.9, 4.6), "1080p": (38.4, 35.0, 31.0)}


@dataclass(frozen=True)
class Case:
    tier: str
    model: str
    layout: TokenLayout


def cases(tiers: list[str], num_latent_frames: int, audio_len: int, text_len: int, size: str) -> list[Case]:
    presets = dit_presets(size)
    out = []
    for tier in tiers:
        res = RESOLUTIONS[tier]
        model = res.sr_model or "distill"
        layout = TokenLayout(
            (num_latent_frames, *res.latent_hw()), audio_len, text_len, presets[model].dit.patch_size_thw
        )
        out.append(Case(tier, model, layout))
    return out


def attended_pairs(config: DiTConfig, layout: TokenLayout, layer: int) -> int:
    """Query/key pairs one head of `layer` computes (all pairs, or the frame-local window's)."""
    n = layout.num_tokens
    if layer not in config.local_attn_layers:
        return n * n
    frames, per_frame = layout.patched_thw[0], layout.tokens_per_frame
    other = n - layout.num_video
    video_pairs = (
        sum(
            (min(frames - 1, f + config.frame_receptive_field) - max(0, f - config.frame_receptive_field) + 1)
            for f in range(frames)
        )
        * per_frame
        * per_frame
    )
    return video_pairs + 2 * layout.num_video * other + other * other


def forward_flops(config: DiTConfig, layout: TokenLayout) -> float:
    """Multiply-adds ×2 of one forward: linears (one expert per token) and attention (QKᵀ and PV)."""
    c, n = config, layout.num_tokens
    qkv_rows = (c.num_heads_q + 2 * c.num_heads_kv) * c.head_dim + c.num_heads_q
    flops = 0.0
    for i in range(c.num_layers):
        inter = c.mlp_intermediate_size(i)
        up_rows = inter if i in c.gelu7_layers else 2 * inter
        flops += 2 * n * c.hidden_size * (qkv_rows + c.hidden_size + up_rows) + 2 * n * inter * c.hidden_size
        flops += 4 * attended_pairs(c, layout, i) * c.num_heads_q * c.head_dim
    nv, na, nt = layout.segments
    flops += 2 * c.hidden_size * (nv * c.video_in_channels * 2 + na * c.audio_in_channels * 2 + nt * c.text_in_channels)
    return flops


def make_model(config: DiTConfig, device: torch.device, backend: str | None) -> DiT:
    model = init_random_(build_dit(config, "meta").to_empty(device=device), seed=0).eval().requires_grad_(False)
    model.set_attention_backend(select_backend(device, backend))
    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_inputs(config: DiTConfig, layout: TokenLayout, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Seeded (video, audio, text) inputs of one forward at `layout`'s token counts."""
    g = torch.Generator(device=device).manual_seed(0)
    video = torch.randn(1, config.latent_channels, *layout.latent_thw, generator=g, device=device)
    audio = torch.randn(1, layout.audio_len, config.audio_in_channels, generator=g, device=device)
    text = torch.randn(layout.text_len, config.text_in_channels, generator=g, device=device)
    return video, audio, text


@torch.no_grad()
def fp8_quality(
    model: DiT, layout: TokenLayout, device: torch.device, steps: int = 0
) -> dict[str, tuple[float, float]]:
    """Quantise the bf16 `model` to fp8 in place; returns the relative RMS errors (video, audio) against the
    model's own bf16 results on the same inputs: of one velocity, and with `steps` > 0 of the latent after a
    whole distilled run of that many steps (same noise)."""
    inputs = sample_inputs(model.config, layout, device)
    video_shape, audio_shape = tuple(inputs[0].shape), tuple(inputs[1].shape)

    def outputs() -> list[tuple[torch.Tensor, torch.Tensor]]:
        results = [model(*inputs)]
        if steps:
            noise = gaussian_noise(torch.Generator(device=device).manual_seed(1), device)
            results.append(denoise_distill(model, noise, inputs[2], video_shape, audio_shape, steps=steps))
        return results

    reference = outputs()
    quantize_fp8_(model, fp8_kernel(device))
    names = ["one velocity", f"{steps}-step latent"]
    return {
        name: tuple(relative_rms(out, ref) for out, ref in zip(got, want, strict=True))
        for name, got, want in zip(names, outputs(), reference, strict=False)
    }


@torch.no_grad()
def time_forward(model: DiT, layout: TokenLayout, warmup: int, iters: int, device: torch.device) -> tuple[float, float]:
    """(seconds per forward, peak memory in GiB) after `warmup` untimed forwards."""
    video, audio, text = sample_inputs(model.config, layout, device)
    for _ in range(warmup):
        model(video, audio, text)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        model(video, audio, text)
    synchronize(device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


# ---------------------------------------------------------------------------------------------------------
# Pipeline mode
# ---------------------------------------------------------------------------------------------------------


class FlopCounter:
    """Adds up the FLOPs (`forward_flops`) of every forward of the given DiTs, from the shapes of the inputs."""

    def __init__(self, dits: dict[str, DiT]) -> None:
        self.total = 0.0
        self._hooks = [dit.register_forward_pre_hook(partial(self._count, dit)) for dit in dits.values()]

    def _count(self, dit: DiT, module: DiT, args: tuple) -> None:
        self.total += forward_flops(dit.config, dit.layout(*args))

    def take(self) -> float:
        """The FLOPs counted since the last call."""
        total, self.total = self.total, 0.0
        return total

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


@dataclass
class TierTimes:
    """One repetition of one tier: the base call and (for SR tiers) the upscale of its take."""

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


def bench_prompt(text_tokens: int, repetition: int) -> str:
    """A prompt of `text_tokens` tokens for the byte-level tokenizer of the random encoders (one byte each,
    after `<bos>`), different per repetition so that the text cache does not hide the encoder's time."""
    stem = f"Take {repetition}: a woman looks into the camera and says, 'Welcome to the studio.' "
    return (stem * (text_tokens // len(stem) + 1))[: max(1, text_tokens - 1)]


def run_tiers(
    engine: Engine, tiers: list[str], seconds: int, text_tokens: int, repetition: int
) -> dict[str, TierTimes]:
    """One 256p generation, then the upscale of that take to each SR tier in `tiers`."""
    from magihuman.engine import GenerationRequest

    counter = FlopCounter(engine.models.dits)
    try:
        request = GenerationRequest(bench_prompt(text_tokens, repetition), resolution="256p", seconds=seconds, seed=0)
        base = engine.generate(request)
        base_flops = counter.take()
        runs = {"256p": TierTimes(base.timings, dit_flops=base_flops, peak_gb=base.peak_memory_gb)}
        for tier in tiers:
            if tier == "256p":
                continue
            up = engine.upscale(base.take, tier)
            runs[tier] = TierTimes(base.timings, up.timings, base_flops + counter.take(), _max_peak(base, up))
        shutil.rmtree(base.take.folder, ignore_errors=True)
    finally:
        counter.remove()
    return {tier: runs[tier] for tier in tiers}


# One H100, 60-s take: seconds of work per output second (issue 20: 256p in <= 30 s, 540p in <= 100 s)
LONG_TAKE_RTF_GOALS = {"256p": 0.5, "540p": 100 / 60}


def time_long_take(engine: Engine, seconds: int, resolutions: list[str], text_tokens: int) -> list[str]:
    """One long take per resolution (a fresh base stage each, SR on top where asked): the real-time factor."""
    from magihuman.engine import GenerationRequest

    lines = []
    for resolution in resolutions:
        request = GenerationRequest(bench_prompt(text_tokens, 0), resolution=resolution, seconds=seconds, seed=0)
        start = time.perf_counter()
        result = engine.generate(request)
        synchronize(engine.device)
        elapsed = time.perf_counter() - start
        windows = len(result.take.plan.windows) if result.take.plan is not None else 1
        goal = LONG_TAKE_RTF_GOALS.get(resolution)
        lines.append(
            f"long take {seconds} s at {resolution}: {elapsed:.1f} s in {windows} windows, real-time factor "
            f"{elapsed / seconds:.2f}" + (f" (goal on one H100: <= {goal:.2f})" if goal else "")
        )
        shutil.rmtree(result.take.folder, ignore_errors=True)
    return lines


def _max_peak(*results: Result) -> float | None:
    peaks = [r.peak_memory_gb for r in results if r.peak_memory_gb is not None]
    return max(peaks) if peaks else None


def run_pipeline(
    args: argparse.Namespace, device: torch.device, size: str, flags: SpeedFlags, tiers: list[str]
) -> None:
    from magihuman.build import ALL_DITS, load_engine, random_models
    from magihuman.engine import Engine

    dits = ["distill", *(RESOLUTIONS[t].sr_model for t in tiers if RESOLUTIONS[t].sr_model)]
    dits = [d for d in ALL_DITS if d in dits]
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
        _free(device)

    output_root = Path(tempfile.mkdtemp(prefix="magihuman-bench-"))
    try:
        start = time.perf_counter()
        if args.weights_dir:
            engine = load_engine("full", args.weights_dir, device, dits, flags, output_root, on_status=print)
            source = f"weights loaded from {args.weights_dir}"
            built = steps = time.perf_counter() - start
        else:
            models = random_models(size, 0, device, dits, fp8=plan.quantised)
            built = time.perf_counter() - start
            for line in apply_speed_flags(models, flags, device, plan.quantised):
                print(f"  {line}")
            engine = Engine(models, device, preview=size == "tiny", output_root=output_root)
            steps = time.perf_counter() - start
            source = "random weights built on the device (no disk read; --weights-dir times a real start)"
        warm = warm_up(engine, [t for t in tiers if t in engine.available_resolutions])
        print(
            f"start-up: {source}: models {built:.1f} s, speed steps {steps - built:.1f} s, "
            f"warm-up {warm:.1f} s; ready in {time.perf_counter() - start:.1f} s"
        )
        warmup = args.warmup if args.warmup is not None else (1 if on_gpu else 0)
        iters = args.iters if args.iters is not None else (2 if on_gpu else 1)
        for i in range(warmup):
            run_tiers(engine, tiers, seconds, args.text_tokens, repetition=-1 - i)
        timed = [run_tiers(engine, tiers, seconds, args.text_tokens, repetition=i) for i in range(iters)]
        print_pipeline_table(tiers, timed, seconds, size)
        if args.long_take:
            long_tiers = [t for t in tiers if t in LONG_TAKE_RTF_GOALS]
            for line in time_long_take(engine, args.long_take, long_tiers, args.text_tokens):
                print(line)
    finally:
        shutil.rmtree(output_root, ignore_errors=True)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


STAGES = ("text", "denoise", "sr", "decode", "mux")


def summarise(runs: list[TierTimes]) -> dict[str, float]:
    """Medians over the repetitions of one tier: each stage, the published scope and the DiT seconds."""
    columns = {stage: [r.stage(stage) for r in runs] for stage in STAGES}
    columns["scope"] = [r.published_scope for r in runs]
    columns["dit"] = [r.dit_seconds for r in runs]
    return {name: statistics.median(values) for name, values in columns.items()}


def print_pipeline_table(tiers: list[str], timed: list[dict[str, TierTimes]], seconds: int, size: str) -> None:
    comparable = size == "full" and seconds == 5  # the published numbers: the 15B model, 5-second clips
    header = (
        f"{'tier':<6} {'text':>6} {'denoise':>8} {'SR':>7} {'decode':>7} {'mux':>6} {'scope*':>7} "
        f"{'published':>9} {'ratio':>6} {'goal bf16/fp8':>13} {'floor':>6} {'TFLOP/s':>8} {'peak GiB':>8}"
    )
    print(f"\n{seconds}-second clip, median of {len(timed)} run(s), seconds per stage")
    print(header)
    print("-" * len(header))
    for tier in tiers:
        runs = [t[tier] for t in timed]
        m = summarise(runs)
        published, goal_bf16, goal_fp8 = PUBLISHED[tier]
        versus = (
            f"{published:>9.1f} {m['scope'] / published:>6.2f} {f'{goal_bf16}/{goal_fp8}':>13}"
            if comparable
            else f"{'-':>9} {'-':>6} {'-':>13}"
        )
        flops = runs[0].dit_flops
        peaks = [r.peak_gb for r in runs if r.peak_gb is not None]
        print(
            f"{tier:<6} {m['text']:>6.2f} {m['denoise']:>8.2f} {m['sr']:>7.2f} {m['decode']:>7.2f} {m['mux']:>6.2f} "
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


# ---------------------------------------------------------------------------------------------------------
# Preview mode
# ---------------------------------------------------------------------------------------------------------

# (what, request seconds, goal in seconds on a 2-core CPU without bf16 instructions)
PREVIEW_GOALS = {
    "clip": ("default clip: 256p, 5 s, distilled, text-to-video", 5, 10.0),
    "upscale": ("upscale a 2-s take to 540p", 2, 20.0),
}


def run_preview(args: argparse.Namespace, device: torch.device, flags: SpeedFlags) -> None:
    """Time the two preview goals with the tiny engine, warm, median of `--iters` runs (default 1)."""
    from magihuman.build import load_engine
    from magihuman.engine import GenerationRequest

    print(f"CPU: {cpu_info().describe()}")
    print(f"preview compute dtype: {str(compute_dtype(device)).removeprefix('torch.')} (the faster one, measured)")
    output_root = Path(tempfile.mkdtemp(prefix="magihuman-bench-"))
    try:
        start = time.perf_counter()
        engine = load_engine("tiny", device=device, speed=flags, output_root=output_root)
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


# ---------------------------------------------------------------------------------------------------------
# Forward mode
# ---------------------------------------------------------------------------------------------------------


def run_forward(args: argparse.Namespace, device: torch.device, size: str, flags: SpeedFlags, tiers: list[str]) -> None:
    if args.latent_frames:
        frames, audio_len = args.latent_frames, decoded_frames(args.latent_frames)
    elif size == "full":
        frames, audio_len = latent_frames(args.seconds or 5), video_frames(args.seconds or 5)
    else:
        frames, audio_len = 2, decoded_frames(2)
    presets = dit_presets(size)
    on_gpu = device.type == "cuda"
    rows, fp8_errors = [], []
    for case in cases(tiers, frames, audio_len, args.text_tokens, size):
        config = presets[case.model].dit
        model = make_model(config, device, flags.attention)
        if flags.fp8:
            fp8_errors.append((case.tier, case.model, *fp8_quality(model, case.layout, device)["one velocity"]))
        optimize_dit(model, replace(flags, fp8=False), device, offload=flags.offload)  # fp8: done above
        warmup = args.warmup if args.warmup is not None else (2 if on_gpu else 1)
        iters = args.iters if args.iters is not None else (3 if on_gpu else 1)
        seconds, peak = time_forward(model, case.layout, warmup, iters, device)
        tflops = forward_flops(config, case.layout) / seconds / 1e12
        attn = model.attention_backend
        if config.local_attn_layers:
            attn += " + flex window" if on_gpu else " + dense window"
        rows.append((case.tier, case.model, case.layout, seconds, tflops, peak, attn))
        del model
        _free(device)
    print_table(rows, device)
    for tier, model_name, video_error, audio_error in fp8_errors:
        print(
            f"fp8 vs bf16, one velocity of {model_name} at {tier}: relative RMS error "
            f"video {video_error:.4f}, audio {audio_error:.4f}"
        )


def print_table(rows, device: torch.device) -> None:
    header = (
        f"{'tier':<6} {'model':<9} {'tokens (v+a+t)':<22} {'ms/forward':>11} {'TFLOP/s':>8} {'MFU':>6} "
        f"{'peak GiB':>9}  attention"
    )
    print(header)
    print("-" * len(header))
    for tier, model, layout, seconds, tflops, peak, attn in rows:
        nv, na, nt = layout.segments
        mfu = f"{100 * tflops / H100_BF16_DENSE_TFLOPS:5.1f}%" if device.type == "cuda" else "   -  "
        tokens = f"{nv}+{na}+{nt}={layout.num_tokens}"
        peak_text = f"{peak:.1f}" if device.type == "cuda" else "-"
        print(
            f"{tier:<6} {model:<9} {tokens:<22} {1e3 * seconds:>11.1f} {tflops:>8.2f} {mfu:>6} {peak_text:>9}  {attn}"
        )
    if device.type == "cuda":
        print(f"MFU is relative to {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s (dense bf16 matmul ceiling measured on H100).")


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m magihuman.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["full", "tiny"], help="default: full on CUDA, tiny on CPU")
    parser.add_argument("--forward", action="store_true", help="time single DiT forwards instead of the pipeline")
    parser.add_argument(
        "--resolutions",
        "--tiers",  # the flag's earlier name
        dest="tiers",
        help="comma-separated output resolutions (default: all; tiny: the preview goals)",
    )
    parser.add_argument("--seconds", type=int, help="clip length (default: 5 for the full model, 1 for tiny tiers)")
    parser.add_argument("--long-take", type=int, help="pipeline: also time a take of this many seconds (e.g. 60)")
    parser.add_argument("--latent-frames", type=int, help="--forward: override the latent frame count (CPU: 2)")
    parser.add_argument("--text-tokens", type=int, default=300)
    parser.add_argument("--weights-dir", help="pipeline: load the real weights from here instead of random ones")
    parser.add_argument("--backend", dest="attention", choices=["math", "sdpa", "fa2", "fa3"], help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help="untimed runs first (pipeline: 1 on CUDA, 0 on CPU)")
    parser.add_argument("--iters", type=int, help="timed runs (pipeline: 2 on CUDA, 1 on CPU; forward: 3 / 1)")
    add_speed_arguments(parser)  # --backend above is the old name of --attention
    add_parallel_argument(parser)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.model or ("full" if device.type == "cuda" else "tiny")
    if size == "full" and device.type != "cuda":
        parser.error("the full-size benchmark needs a CUDA GPU; run with --model tiny on a CPU")
    if args.weights_dir and (args.forward or size != "full"):
        parser.error("--weights-dir loads the full model in pipeline mode")
    preview = size == "tiny" and not args.forward and args.tiers is None and args.seconds is None
    preview = preview and args.long_take is None
    tiers = [t.strip() for t in (args.tiers or ",".join(RESOLUTIONS)).split(",") if t.strip()]
    unknown = [t for t in tiers if t not in RESOLUTIONS]
    if unknown:
        parser.error(f"unknown tier(s) {unknown}; choose from {', '.join(RESOLUTIONS)}")

    flags = SpeedFlags.from_args(args, device)
    try:
        ctx = init_parallel(args.cp, size, cfg_parallel=args.cfg_parallel, speed=flags)
    except ValueError as exc:
        parser.error(str(exc))
    if ctx.world > 1:  # under torchrun: CP N against CP 1 with the same models (magihuman.parallel.bench)
        if ctx.is_driver:
            print(f"torch {torch.__version__} · preset: {size} · speed steps: {flags.describe()}")
        parallel_bench.run(args, ctx, size, flags, tiers)
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    mode = "forward" if args.forward else "preview" if preview else "pipeline"
    print(f"device: {name} · torch {torch.__version__} · preset: {size} · mode: {mode}")
    print(f"speed steps: {flags.describe()}")
    if size == "tiny":
        print("NOTE: tiny preset (a smoke test of the code path, not a speed measurement of the 15B model)")
    if preview:
        run_preview(args, device, flags)
    else:
        (run_forward if args.forward else run_pipeline)(args, device, size, flags, tiers)


if __name__ == "__main__":
    main()
