"""Kernels against their CPU-tested references, on fresh random inputs.

- `fp8_linear`: the fp8 `_scaled_mm` linear against its exact fp32 emulation and against bf16 (on a CPU: the
  emulation against bf16, at a small size).
- `flex_window`: the FlexAttention block mask of the 1080p frame-local window against the per-frame split, at
  the real 1080p frame size (on a CPU: a small window, eager FlexAttention, plus the dense masked softmax).
- `compiled`: the regionally compiled DiT layers and Turbo VAE blocks against eager, and no recompiles across
  two text lengths and two clip lengths (CUDA only: on a CPU tests/test_optimize.py covers compile).
- `offload`: the pinned-memory offload round trip (CUDA only: pinning needs it).
"""

from __future__ import annotations

import math
import time
import warnings

import torch

from acceptance.runner import Context, Outcome, Skip
from magihuman.config import FULL_TURBO_VAE, RESOLUTIONS, dit_presets, latent_frames, video_frames
from magihuman.fp8 import Fp8ExpertLinear, fp8_kernel, quantize_rows, relative_rms, scaled_matmul
from magihuman.model.attention import LocalWindow, attention
from magihuman.model.dit import ExpertLinear
from magihuman.packing import TokenLayout
from magihuman.timing import median_seconds, seconds_since

# One linear's fp8 error is the e4m3 floor (≈ 3.6 %, magihuman/fp8.py); the kernel and its emulation differ by
# fp32 summation order under one bf16 rounding (tests/test_optimize.py uses the same bounds).
FP8_VS_BF16 = 0.045
KERNEL_VS_EMULATION = 5e-3
# Two exact softmax computations in bf16 (CUDA) or fp32 (CPU) that differ only by kernel.
WINDOW_BF16 = 1e-2
WINDOW_FP32 = 1e-5
# Compiled vs eager: the golden DiT cases' tolerance for another kernel (recommended out_rel_rms).
COMPILED_VS_EAGER = 0.02


# ---------------------------------------------------------------------------------------------------------
# fp8 linears
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def check_fp8_linear(ctx: Context) -> Outcome:
    device, out = ctx.device, ctx.outcome
    if ctx.cuda:  # the 15B model's shared-layer up/gate projection, one clip's worth of tokens
        c = dit_presets("full")["distill"].dit
        tokens, in_features, out_features, experts = 8192, c.hidden_size, 2 * c.mlp_intermediate_size(8), 1
    else:
        tokens, in_features, out_features, experts = 300, 168, 132, 3
    linear = _random_expert_linear(in_features, out_features, experts, device)
    segments = _even_segments(tokens, experts)
    x = torch.randn(tokens, in_features, device=device)
    kernel = fp8_kernel(device)
    fp8 = Fp8ExpertLinear.from_linear(linear, kernel)
    out.measured.update(kernel=kernel, shape=f"{tokens}x{in_features} @ {in_features}x{out_features} x{experts}")
    out.at_most("fp8 vs bf16 rel_rms", relative_rms(fp8(x, segments), linear(x, segments)), FP8_VS_BF16)
    if kernel == "scaled_mm":
        x_q, x_scale = quantize_rows(x.bfloat16(), fp8.padded_in)
        got = scaled_matmul(x_q, x_scale, fp8.weight, fp8.weight_scale, "scaled_mm")
        want = scaled_matmul(x_q, x_scale, fp8.weight, fp8.weight_scale, "emulated")
        out.at_most("scaled_mm vs emulation rel_rms", relative_rms(got, want), KERNEL_VS_EMULATION)
        bf16_s = median_seconds(lambda: linear(x, segments), device, warmup=3, iters=10)
        fp8_s = median_seconds(lambda: fp8(x, segments), device, warmup=3, iters=10)
        flops = 2 * tokens * in_features * out_features
        out.measured.update(bf16_tflops=flops / bf16_s / 1e12, fp8_tflops=flops / fp8_s / 1e12)
        out.notes.append("fp8 TFLOP/s include the per-call activation quantisation")
    elif ctx.cuda and torch.cuda.get_device_capability(device) >= (8, 9):
        out.failures.append("the row-wise fp8 GEMM failed its probe on a GPU that has fp8 tensor cores (see warnings)")
    elif ctx.cuda:
        out.notes.append(f"no fp8 tensor cores (capability {torch.cuda.get_device_capability(device)}): emulation only")
    else:
        out.notes.append("CPU: fp8 runs the exact fp32 emulation of the kernel (scaled_mm needs CUDA ≥ 8.9)")
    return out


def _random_expert_linear(in_features: int, out_features: int, experts: int, device: torch.device) -> ExpertLinear:
    with torch.device(device):
        linear = ExpertLinear(in_features, out_features, experts)
    with torch.no_grad():
        linear.weight.normal_(0.0, in_features**-0.5)
    return linear.eval().requires_grad_(False)


def _even_segments(tokens: int, experts: int) -> tuple[int, int, int]:
    if experts == 1:
        return (tokens, 0, 0)
    third = tokens // 3
    return (third, third, tokens - 2 * third)


# ---------------------------------------------------------------------------------------------------------
# FlexAttention frame-local window
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def check_flex_window(ctx: Context) -> Outcome:
    device, out = ctx.device, ctx.outcome
    if ctx.cuda:  # the 1080p SR model on a 5-second clip: 32 latent frames of 34×60 tokens, 40/8 heads of 128
        c = dit_presets("full")["sr-1080p"].dit
        frames = latent_frames(5)
        lat_h, lat_w = RESOLUTIONS["1080p"].latent_hw()
        per_frame = (lat_h // c.patch_size_thw[1]) * (lat_w // c.patch_size_thw[2])
        other, heads_q, heads_kv, dim = video_frames(5) + 300, c.num_heads_q, c.num_heads_kv, c.head_dim
        window = c.frame_receptive_field
        dtype, bound = torch.bfloat16, WINDOW_BF16
    else:
        frames, per_frame, other, heads_q, heads_kv, dim, window = 5, 24, 10, 4, 2, 32, 1
        dtype, bound = torch.float32, WINDOW_FP32
    local = LocalWindow.for_sequence(frames, per_frame, other, window, device=device)
    n = local.frame.shape[0]
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(n, heads_q, dim, generator=g, device=device, dtype=dtype)
    k = torch.randn(n, heads_kv, dim, generator=g, device=device, dtype=dtype)
    v = torch.randn(n, heads_kv, dim, generator=g, device=device, dtype=dtype)
    masked = local.with_block_mask()
    out.measured.update(tokens=n, tokens_per_frame=per_frame, frames=frames, window=window, dtype=str(dtype))
    start = time.perf_counter()
    with warnings.catch_warnings():  # eager FlexAttention on a CPU warns that it is unfused: intended here
        warnings.simplefilter("ignore", UserWarning)
        flex = attention(q, k, v, "sdpa", masked)
    out.measured["flex first call s (compile)"] = seconds_since(start, device)
    split = attention(q, k, v, "sdpa", local)
    out.at_most("flex vs per-frame split rel_rms", relative_rms(flex, split), bound)
    if ctx.cuda:
        flex_s = median_seconds(lambda: attention(q, k, v, "sdpa", masked), device, warmup=1, iters=3)
        split_s = median_seconds(lambda: attention(q, k, v, "sdpa", local), device, warmup=1, iters=3)
        out.measured.update(flex_ms=1e3 * flex_s, per_frame_split_ms=1e3 * split_s)
    else:
        dense = attention(q, k, v, "math", local)
        out.at_most("flex vs dense masked softmax rel_rms", relative_rms(flex, dense), bound)
        out.notes.append("CPU: eager FlexAttention at a small size (the 1080p frame size runs on CUDA)")
    return out


# ---------------------------------------------------------------------------------------------------------
# Regional compile: DiT layers and Turbo VAE blocks
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def check_compiled(ctx: Context) -> Outcome:
    from torch._dynamo.utils import counters

    from magihuman.bench.workload import make_model, sample_inputs
    from magihuman.optimize import compile_decoder, compile_dit
    from magihuman.random_models import build_random_turbo_vae

    device, out = ctx.device, ctx.outcome
    config = dit_presets("full")["distill"].dit
    model = make_model(config, device, None)
    lat_hw = RESOLUTIONS["256p"].latent_hw()
    layouts = [
        TokenLayout((latent_frames(seconds), *lat_hw), video_frames(seconds), text_len, config.patch_size_thw)
        for seconds in (1, 2)
        for text_len in (77, 160)
    ]
    inputs = [sample_inputs(config, layout, device) for layout in layouts]
    eager = [model(*args) for args in inputs]
    compile_dit(model)
    graphs_before = counters["stats"]["unique_graphs"]
    start = time.perf_counter()
    compiled = [model(*inputs[0])]
    out.measured["DiT compile + first call s"] = seconds_since(start, device)
    graphs_first = counters["stats"]["unique_graphs"]
    compiled += [model(*args) for args in inputs[1:]]
    recompiles = counters["stats"]["unique_graphs"] - graphs_first
    out.measured["DiT graphs"] = graphs_first - graphs_before
    out.require("DiT: no recompiles (2 text × 2 clip lengths)", recompiles == 0, f"{recompiles} new graphs")
    pairs = [(c, e) for got, want in zip(compiled, eager, strict=True) for c, e in zip(got, want, strict=True)]
    worst = max(relative_rms(c, e) for c, e in pairs)
    out.at_most("DiT compiled vs eager rel_rms (worst of 4 shapes)", worst, COMPILED_VS_EAGER)
    del model, eager, compiled

    vae = build_random_turbo_vae(FULL_TURBO_VAE, 0, device=device, dtype=torch.bfloat16)
    g = torch.Generator(device=device).manual_seed(0)
    latents = [torch.randn(1, 48, latent_frames(s), *lat_hw, generator=g, device=device) for s in (1, 2)]
    eager = [vae.decode(z) for z in latents]
    compile_decoder(vae)
    graphs_before = counters["stats"]["unique_graphs"]
    start = time.perf_counter()
    compiled = [vae.decode(latents[0])]
    out.measured["decoder compile + first call s"] = seconds_since(start, device)
    graphs_first = counters["stats"]["unique_graphs"]
    compiled.append(vae.decode(latents[1]))
    recompiles = counters["stats"]["unique_graphs"] - graphs_first
    out.measured["decoder graphs"] = graphs_first - graphs_before
    out.require("decoder: no recompiles (2 clip lengths)", recompiles == 0, f"{recompiles} new graphs")
    worst = max(relative_rms(c, e) for c, e in zip(compiled, eager, strict=True))
    out.at_most("decoder compiled vs eager rel_rms", worst, COMPILED_VS_EAGER)
    out.notes.append("full-size distilled DiT and Turbo VAE decoder, random weights, 256p, 1- and 2-second clips")
    return out


# ---------------------------------------------------------------------------------------------------------
# Pinned offload
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def check_offload(ctx: Context) -> Outcome:
    from magihuman.bench.workload import make_model, sample_inputs
    from magihuman.offload import offload_

    device, out = ctx.device, ctx.outcome
    # 1. Round trip on a tiny DiT: weights pinned in CPU memory, identical results, `remove` restores them.
    config = dit_presets("tiny")["distill"].dit
    model = make_model(config, device, None)
    layout = TokenLayout((2, 4, 6), 9, 7, config.patch_size_thw)
    args = sample_inputs(config, layout, device)
    reference = model(*args)
    handle = offload_(model, device)
    weight = model.block.layers[0].attention.linear_qkv.weight
    out.require("weights pinned in CPU memory", weight.device.type == "cpu" and weight.is_pinned())
    got = model(*args)
    out.require("offloaded forward identical", all(torch.equal(a, b) for a, b in zip(got, reference, strict=True)))
    out.require("weights off the GPU after the call", weight.device.type == "cpu")
    handle.remove()
    out.require("remove() puts every weight back", all(p.device.type == device.type for p in model.parameters()))

    # 2. Host-to-device rate of one load of 2 GiB of pinned weights (what an offloaded DiT pays per stage).
    if ctx.seconds_left() < 30:
        raise Skip("budget: no time left for the bandwidth part")
    layers = (torch.nn.Linear(8192, 8192, bias=False, device=device, dtype=torch.bfloat16) for _ in range(16))
    big = torch.nn.ModuleList(layers).requires_grad_(False)
    handle = offload_(big, device)
    num_bytes = sum(p.numel() * p.element_size() for p in big.parameters())

    def round_trip() -> None:
        handle.load()
        handle.release()

    seconds = median_seconds(round_trip, device, warmup=1, iters=3)
    out.measured["host-to-device GB/s (pinned, one load)"] = num_bytes / seconds / 1e9
    out.measured["loaded GiB"] = num_bytes / 2**30
    out.require("bandwidth measured", math.isfinite(seconds) and seconds > 0)
    return out
