"""DiT forward benchmark: `python -m magihuman.bench`.

Builds the DiT with random weights (speed does not depend on weight values) and times one forward at the
token counts of each output tier for a clip (spec/model.md §5): 256p with the base/distilled model, 540p
and 1080p with their super-resolution models (1080p with the frame-local window on 32 layers). Prints the
per-forward time, the achieved TFLOP/s (one expert per token in the sandwich layers; local layers count only
the key/query pairs their window allows) and the peak memory, naming the attention backend.

Without CUDA the tiny preset runs on the CPU at 2 latent frames (a smoke test of the code path, which the
output says); `--model full` then refuses to start.

The speed steps of `magihuman.optimize` take the shared flags (--no-compile, --fp8, --offload, --attention);
compilation happens in the untimed warm-up forwards. With --fp8 the benchmark also reports the quality check:
the relative RMS error of one velocity of the fp8 model against the same model in bf16, on the same inputs.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import torch

from magihuman.config import RESOLUTIONS, DiTConfig, decoded_frames, dit_presets, latent_frames, video_frames
from magihuman.model.attention import select_backend
from magihuman.model.dit import DiT, build_dit, init_random_
from magihuman.optimize import SpeedFlags, add_speed_arguments, optimize_dit, relative_rms
from magihuman.packing import TokenLayout

H100_BF16_DENSE_TFLOPS = 790.0  # measured 8192³ bf16 matmul ceiling (shared/platform.md)


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
def fp8_velocity_error(model: DiT, layout: TokenLayout, device: torch.device) -> tuple[float, float]:
    """Quantise `model` to fp8 in place; returns the relative RMS error (video, audio) of one velocity against
    the model's own bf16 velocity on the same inputs."""
    inputs = sample_inputs(model.config, layout, device)
    reference = model(*inputs)
    optimize_dit(model, SpeedFlags(fp8=True), device)
    return tuple(relative_rms(out, ref) for out, ref in zip(model(*inputs), reference, strict=True))


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m magihuman.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["full", "tiny"], help="default: full on CUDA, tiny on CPU")
    parser.add_argument("--tiers", default="256p,540p,1080p", help="comma-separated output tiers")
    parser.add_argument("--seconds", type=int, default=5, help="clip length the token counts come from")
    parser.add_argument("--latent-frames", type=int, help="override the latent frame count (CPU default: 2)")
    parser.add_argument("--text-tokens", type=int, default=300)
    parser.add_argument("--backend", dest="attention", choices=["math", "sdpa", "fa2", "fa3"], help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help="untimed forwards first (default: 2 on CUDA, 1 on CPU)")
    parser.add_argument("--iters", type=int, help="timed forwards (default: 3 on CUDA, 1 on CPU)")
    add_speed_arguments(parser)  # --backend above is the old name of --attention
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.model or ("full" if device.type == "cuda" else "tiny")
    if size == "full" and device.type != "cuda":
        parser.error("the full-size benchmark needs a CUDA GPU; run with --model tiny on a CPU")
    if args.latent_frames:
        frames, audio_len = args.latent_frames, decoded_frames(args.latent_frames)
    elif size == "full":
        frames, audio_len = latent_frames(args.seconds), video_frames(args.seconds)
    else:
        frames, audio_len = 2, decoded_frames(2)
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    unknown = [t for t in tiers if t not in RESOLUTIONS]
    if unknown:
        parser.error(f"unknown tier(s) {unknown}; choose from {', '.join(RESOLUTIONS)}")

    flags = SpeedFlags.from_args(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name} · torch {torch.__version__} · DiT preset: {size}")
    print(f"speed steps: {flags.describe()}")
    if size == "tiny":
        print("NOTE: tiny preset (a smoke test of the code path, not a speed measurement of the 15B model)")
    presets = dit_presets(size)
    rows, fp8_errors = [], []
    for case in cases(tiers, frames, audio_len, args.text_tokens, size):
        config = presets[case.model].dit
        model = make_model(config, device, flags.attention)
        if flags.fp8:
            fp8_errors.append((case.tier, case.model, *fp8_velocity_error(model, case.layout, device)))
        optimize_dit(model, replace(flags, fp8=False, attention=None), device, offload=flags.offload)
        on_gpu = device.type == "cuda"
        warmup = args.warmup if args.warmup is not None else (2 if on_gpu else 1)
        iters = args.iters if args.iters is not None else (3 if on_gpu else 1)
        seconds, peak = time_forward(model, case.layout, warmup, iters, device)
        tflops = forward_flops(config, case.layout) / seconds / 1e12
        attn = model.attention_backend + (
            " + flex window" if config.local_attn_layers and device.type == "cuda" else ""
        )
        if config.local_attn_layers and device.type != "cuda":
            attn += " + dense window"
        rows.append((case.tier, case.model, case.layout, seconds, tflops, peak, attn))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
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


if __name__ == "__main__":
    main()
