"""Forward mode (`--forward`): one DiT forward at the token counts of each resolution: ms per forward, TFLOP/s,
MFU and peak memory, naming the attention backend."""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from magihuman.bench.flops import H100_BF16_DENSE_TFLOPS, forward_flops
from magihuman.bench.memory import free_memory, peak_gib, reset_peak
from magihuman.bench.workload import cases, fp8_quality, make_model, sample_inputs
from magihuman.config import decoded_frames, dit_presets, latent_frames, video_frames
from magihuman.model.dit import DiT
from magihuman.optimize import SpeedFlags, optimize_dit
from magihuman.packing import TokenLayout
from magihuman.timing import median_seconds


@torch.no_grad()
def time_forward(model: DiT, layout: TokenLayout, warmup: int, iters: int, device: torch.device) -> tuple[float, float]:
    """(median seconds per forward, peak memory in GiB) after `warmup` untimed forwards."""
    video, audio, text = sample_inputs(model.config, layout, device)
    for _ in range(warmup):
        model(video, audio, text)
    reset_peak(device)
    seconds = median_seconds(lambda: model(video, audio, text), device, warmup=0, iters=iters)
    peak = peak_gib(device)
    return seconds, float("nan") if peak is None else peak


def run_forward(
    args: argparse.Namespace, device: torch.device, size: str, flags: SpeedFlags, resolutions: list[str]
) -> None:
    if args.latent_frames:
        frames, audio_len = args.latent_frames, decoded_frames(args.latent_frames)
    elif size == "full":
        frames, audio_len = latent_frames(args.seconds or 5), video_frames(args.seconds or 5)
    else:
        frames, audio_len = 2, decoded_frames(2)
    presets = dit_presets(size)
    on_gpu = device.type == "cuda"
    rows, fp8_errors = [], []
    for case in cases(resolutions, frames, audio_len, args.text_tokens, size):
        config = presets[case.model].dit
        model = make_model(config, device, flags.attention)
        if flags.fp8:
            fp8_errors.append((case.resolution, case.model, *fp8_quality(model, case.layout, device)["one velocity"]))
        optimize_dit(model, replace(flags, fp8=False), device, offload=flags.offload)  # fp8: done above
        warmup = args.warmup if args.warmup is not None else (2 if on_gpu else 1)
        iters = args.iters if args.iters is not None else (3 if on_gpu else 1)
        seconds, peak = time_forward(model, case.layout, warmup, iters, device)
        tflops = forward_flops(config, case.layout) / seconds / 1e12
        attn = model.attention_backend
        if config.local_attn_layers:
            attn += " + flex window" if on_gpu else " + dense window"
        rows.append((case.resolution, case.model, case.layout, seconds, tflops, peak, attn))
        del model
        free_memory(device)
    print_table(rows, device)
    for resolution, model_name, video_error, audio_error in fp8_errors:
        print(
            f"fp8 vs bf16, one velocity of {model_name} at {resolution}: relative RMS error "
            f"video {video_error:.4f}, audio {audio_error:.4f}"
        )


def print_table(rows, device: torch.device) -> None:
    header = (
        f"{'resolution':<10} {'model':<9} {'tokens (v+a+t)':<22} {'ms/forward':>11} {'TFLOP/s':>8} {'MFU':>6} "
        f"{'peak GiB':>9}  attention"
    )
    print(header)
    print("-" * len(header))
    for resolution, model, layout, seconds, tflops, peak, attn in rows:
        nv, na, nt = layout.segments
        mfu = f"{100 * tflops / H100_BF16_DENSE_TFLOPS:5.1f}%" if device.type == "cuda" else "   -  "
        tokens = f"{nv}+{na}+{nt}={layout.num_tokens}"
        peak_text = f"{peak:.1f}" if device.type == "cuda" else "-"
        print(
            f"{resolution:<10} {model:<9} {tokens:<22} {1e3 * seconds:>11.1f} {tflops:>8.2f} {mfu:>6} "
            f"{peak_text:>9}  {attn}"
        )
    if device.type == "cuda":
        print(f"MFU is relative to {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s (dense bf16 matmul ceiling measured on H100).")
