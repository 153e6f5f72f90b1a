"""The speed steps of magihuman.optimize against the plain path, on the tiny preset with seeded random weights.

Tolerances (measured on this preset, seeds 0-7, and why they are what they are):
- one fp8 linear vs bf16 on Gaussian data: relative RMS error 0.035-0.037. This is the e4m3 floor: 3 mantissa
  bits round each operand by up to 2^-4 relative (≈ 2.5 % RMS per operand after row-wise scaling), and both
  operands are rounded. The emulation itself is exact: it matches an fp64 reference of the same quantised
  operands to one bf16 rounding.
- one transformer layer's update, fp8 vs bf16 on the same input: 0.05-0.065 (two fp8 linears in series, plus
  the attention softmax).
- one DiT velocity: 0.15-0.23; a full 8-step distilled latent: 0.17-0.25. The tiny random DiT is a harsh
  amplifier: its layer updates are as large as the residual stream (‖update‖/‖x‖ ≈ 0.6-2, where trained
  models add small updates), so six layers of ~6 % errors compound to ~17 %. The same model turns the
  0.3 %-per-layer rounding of a compile without exact casts into 1.3 % at the output. The bounds below
  (0.30, 0.32) leave ~30 % headroom over the worst seed. Deliberately broken variants land far above them:
  every segment through expert 0: 0.45 / 1.42 (video / audio velocity); one mean weight scale: 1.28 / 1.48;
  two noise seeds of the bf16 model differ by 1.22-1.36.
- compiled vs eager: bit-identical on this CPU with exact casts (bound 1e-3 for reduction-order rounding).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import shutil
import weakref
from pathlib import Path

import pytest
import torch

from magihuman.cache import default_cache_dir
from magihuman.config import FULL_DIT, TINY_DIT, TINY_TURBO_VAE
from magihuman.fp8 import (
    FP8_DTYPE,
    Fp8ExpertLinear,
    quantize_fp8_,
    quantize_rows,
    relative_rms,
    scaled_matmul,
)
from magihuman.model.dit import DiT, ExpertLinear, TransformerLayer, build_dit
from magihuman.model.turbo_vae import ResnetBlock3d
from magihuman.offload import offload_, resident
from magihuman.optimize import (
    SpeedFlags,
    add_speed_arguments,
    apply_speed_flags,
    compile_decoder,
    compile_dit,
    is_onednn_conv3d,
    warm_up,
)
from magihuman.random_models import build_random_turbo_vae, init_random_
from magihuman.sampling import denoise_distill, gaussian_noise


def linear_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the transformer linears (bf16 `ExpertLinear` weights, or fp8 weights plus scales)."""
    total = 0
    for module in model.modules():
        if isinstance(module, ExpertLinear | Fp8ExpertLinear):
            total += sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return total


def is_compiled(model: torch.nn.Module) -> bool:
    return any(isinstance(m, TransformerLayer) and m._compiled_call_impl is not None for m in model.modules())


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
has_compiler = any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++"))

VIDEO_SHAPE, AUDIO_SHAPE, TEXT_LEN = (1, 48, 3, 4, 6), (1, 9, 64), 7


def tiny_dit(seed: int = 0, device: str = "cpu") -> DiT:
    model = init_random_(build_dit(TINY_DIT, device), seed).eval().requires_grad_(False)
    model.set_attention_backend("sdpa")
    return model


def inputs(seed: int = 0, frames: int = 3, text_len: int = TEXT_LEN, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(1, 48, frames, 4, 6, generator=g)
    audio = torch.randn(1, 4 * (frames - 1) + 1, 64, generator=g)
    text = torch.randn(text_len, TINY_DIT.text_in_channels, generator=g)
    return tuple(t.to(device) for t in (video, audio, text))


def is_compiled_decoder(vae) -> bool:
    blocks = [m for m in vae.modules() if isinstance(m, ResnetBlock3d)]
    return bool(blocks) and all(block._compiled_call_impl is not None for block in blocks)


def distilled_latents(model: DiT, text: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    noise = gaussian_noise(torch.Generator().manual_seed(seed))
    return denoise_distill(model, noise, text, VIDEO_SHAPE, AUDIO_SHAPE, steps=8)


# ---------------------------------------------------------------------------------------------------------
# 1. Flags
# ---------------------------------------------------------------------------------------------------------


def parse(argv: list[str], device: str) -> SpeedFlags:
    parser = argparse.ArgumentParser()
    add_speed_arguments(parser)
    return SpeedFlags.from_args(parser.parse_args(argv), device)


def test_flags_parse_with_device_dependent_compile_default() -> None:
    home_cache = default_cache_dir()
    assert parse([], "cpu") == SpeedFlags(compile=False, fp8=None, offload=False, attention=None, cache_dir=home_cache)
    assert parse([], "cuda") == SpeedFlags(compile=True, fp8=None, cache_dir=home_cache)
    assert parse(["--no-fp8"], "cuda").fp8 is False and "fp8 auto" in parse([], "cuda").describe()
    assert parse(["--no-cache"], "cuda").cache_dir is None
    assert parse(["--cache-dir", "/data/cache"], "cuda").cache_dir == Path("/data/cache")
    assert parse(["--no-compile"], "cuda").compile is False
    assert parse(["--compile"], "cpu").compile is True
    flags = parse(["--fp8", "--offload", "--attention", "sdpa"], "cpu")
    assert (flags.fp8, flags.offload, flags.attention) == (True, True, "sdpa")
    assert "fp8 on" in flags.describe() and "attention sdpa" in flags.describe()
    with pytest.raises(SystemExit):
        parse(["--attention", "xformers"], "cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        flags.fp8 = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="attention backend"):
        SpeedFlags(attention="xformers")


def test_flags_from_environment() -> None:
    env = {"MAGIHUMAN_COMPILE": "0", "MAGIHUMAN_FP8": "yes", "MAGIHUMAN_ATTENTION": "math", "MAGIHUMAN_CACHE": "off"}
    assert SpeedFlags.from_env("cuda", env) == SpeedFlags(compile=False, fp8=True, attention="math")
    assert SpeedFlags.from_env("cuda", {}).cache_dir == Path.home() / ".cache" / "magihuman"
    assert SpeedFlags.from_env("cuda", {"XDG_CACHE_HOME": "/xdg"}).cache_dir == Path("/xdg/magihuman")
    on_a_space = SpeedFlags.from_env("cuda", {"MAGIHUMAN_CACHE_DIR": "/data/magihuman"})
    assert on_a_space == SpeedFlags(compile=True, fp8=None, cache_dir=Path("/data/magihuman"))
    assert "cache /data/magihuman" in on_a_space.describe()
    with pytest.raises(ValueError, match="MAGIHUMAN_OFFLOAD"):
        SpeedFlags.from_env("cpu", {"MAGIHUMAN_OFFLOAD": "maybe"})


# ---------------------------------------------------------------------------------------------------------
# 2. FP8 linears
# ---------------------------------------------------------------------------------------------------------


def random_linear(in_features: int, out_features: int, experts: int, seed: int = 0) -> ExpertLinear:
    linear = ExpertLinear(in_features, out_features, experts)
    g = torch.Generator().manual_seed(seed)
    linear.weight.data = (torch.randn(linear.weight.shape, generator=g) / in_features**0.5).bfloat16()
    return linear.requires_grad_(False)


@pytest.mark.parametrize(("in_features", "out_features", "experts"), [(64, 132, 1), (168, 64, 3), (512, 256, 3)])
def test_fp8_linear_is_the_exact_quantised_product_and_close_to_bf16(in_features, out_features, experts) -> None:
    linear = random_linear(in_features, out_features, experts)
    fp8 = Fp8ExpertLinear.from_linear(linear)
    segments = (150, 0, 50) if experts == 3 else (200, 0, 0)  # an empty audio segment, as in text-only rows
    x = torch.randn(200, in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, ref = fp8(x, segments), linear(x, segments)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape == (200, out_features)
    # Exactness of the emulation: the same quantised operands multiplied in fp64, one bf16 rounding apart.
    x_q, x_scale = quantize_rows(x.bfloat16(), fp8.padded_in)
    expected = []
    for e, rows in enumerate(torch.arange(200).split(list(segments))[:experts]):
        block = slice(e * fp8.padded_out, e * fp8.padded_out + out_features)
        w = fp8.weight[block].double() * fp8.weight_scale[block, None].double()
        expected.append((x_q[rows].double() * x_scale[rows].double()) @ w.t())
    torch.testing.assert_close(out.double(), torch.cat(expected), rtol=2**-7, atol=1e-6)
    # Distance to bf16: the e4m3 floor, not more (and clearly not zero: it really is quantised).
    assert 0.02 < relative_rms(out, ref) < 0.045


def test_quantize_fp8_swaps_every_transformer_linear_and_halves_their_memory() -> None:
    model = tiny_dit()
    keys_before = set(model.state_dict())
    linear_names = [name for name, m in model.named_modules() if isinstance(m, ExpertLinear)]
    bf16_bytes, num_linears = linear_bytes(model), sum(isinstance(m, ExpertLinear) for m in model.modules())
    old_weight = weakref.ref(model.block.layers[0].mlp.up_gate_proj.weight)
    embedder = model.adapter.video_embedder.weight
    quantize_fp8_(model)
    gc.collect()
    assert old_weight() is None, "the bf16 weight must be freed after quantisation"
    fp8_linears = [m for m in model.modules() if isinstance(m, Fp8ExpertLinear)]
    assert len(fp8_linears) == num_linears and not any(isinstance(m, ExpertLinear) for m in model.modules())
    assert all(m.weight.dtype == FP8_DTYPE and m.weight_scale.dtype == torch.float32 for m in fp8_linears)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # embedders, norms and heads stay fp32
    assert model.adapter.video_embedder.weight is embedder
    assert set(model.state_dict()) == keys_before | {f"{name}.weight_scale" for name in linear_names}
    # Tiny widths (132 qkv rows, 168 inputs of down_proj) pad to multiples of 16: 0.537; the 15B model 0.5005.
    assert linear_bytes(model) <= 0.54 * bf16_bytes
    full = build_dit(FULL_DIT)  # meta device: shapes only
    full_bf16 = linear_bytes(full)
    assert linear_bytes(quantize_fp8_(full)) <= 0.501 * full_bf16


def test_fp8_velocity_and_layers_stay_close_to_bf16() -> None:
    model = tiny_dit()
    fp8 = quantize_fp8_(copy.deepcopy(model))
    video, audio, text = inputs()
    with torch.no_grad():
        reference, quantised = model(video, audio, text), fp8(video, audio, text)
        layout = model.layout(video, audio, text)
        rope, x = model.rope_table(layout, "cpu"), model.embed(video, audio, text)
        for plain, quant in zip(model.block.layers, fp8.block.layers, strict=True):
            update = plain(x, layout.segments, rope, "sdpa", None) - x
            update_fp8 = quant(x, layout.segments, rope, "sdpa", None) - x
            assert relative_rms(update_fp8, update) < 0.085  # measured 0.05-0.065
            x = x + update
    for out, ref in zip(quantised, reference, strict=True):
        assert torch.isfinite(out).all()
        assert relative_rms(out, ref) < 0.30  # measured 0.15-0.23 (see the module docstring)


def test_fp8_distilled_latent_stays_close_to_bf16() -> None:
    model = tiny_dit()
    fp8 = quantize_fp8_(copy.deepcopy(model))
    text = inputs()[2]
    reference, quantised = distilled_latents(model, text, seed=3), distilled_latents(fp8, text, seed=3)
    other_seed = distilled_latents(model, text, seed=4)
    for out, ref, other in zip(quantised, reference, other_seed, strict=True):
        error = relative_rms(out, ref)
        assert error < 0.32  # measured 0.17-0.25
        assert relative_rms(other, ref) > 3 * error  # far below the difference a new seed makes


# ---------------------------------------------------------------------------------------------------------
# 3. Regional compile
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not has_compiler, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_layers_match_eager_without_recompiling_for_new_lengths() -> None:
    from torch._dynamo.utils import counters

    model = tiny_dit()
    keys = list(model.state_dict())
    first, second = inputs(frames=3, text_len=TEXT_LEN), inputs(seed=1, frames=2, text_len=12)
    with torch.no_grad():
        eager = [model(*first), model(*second)]
        compile_dit(model)
        assert is_compiled(model) and all(type(layer) is TransformerLayer for layer in model.block.layers)
        assert list(model.state_dict()) == keys
        compiled_first = model(*first)  # compiles: one graph per layer structure
        graphs = counters["stats"]["unique_graphs"]
        compiled_second = model(*second)  # other clip and text lengths: same graphs (dynamic shapes)
        assert counters["stats"]["unique_graphs"] == graphs
    for compiled, plain in zip([compiled_first, compiled_second], eager, strict=True):
        for out, ref in zip(compiled, plain, strict=True):
            assert relative_rms(out, ref) < 1e-3  # measured 0 (bit-identical) on CPU


@pytest.mark.skipif(not has_compiler, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_decoder_matches_eager_for_every_window_shape() -> None:
    """A 16-latent clip (first window, a middle one with context on both sides, the last one) and another
    resolution: the compiled resnet blocks decode bit for bit like eager ones."""
    vae = build_random_turbo_vae(TINY_TURBO_VAE, seed=2, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(1, 48, 16, 4, 6, generator=g), torch.randn(1, 48, 2, 6, 4, generator=g)]
    eager = [vae.decode(z) for z in latents]
    compile_decoder(vae)
    assert is_compiled_decoder(vae)
    for z, want in zip(latents, eager, strict=True):
        assert torch.equal(vae.decode(z), want)


# ---------------------------------------------------------------------------------------------------------
# 4. Offload
# ---------------------------------------------------------------------------------------------------------


def test_offload_round_trip_gives_identical_results() -> None:
    model = tiny_dit()
    video, audio, text = inputs()
    with torch.no_grad():
        reference = model(video, audio, text)
    weight = model.block.layers[2].mlp.down_proj.weight
    handle = offload_(model, "cpu")
    master = weight.data_ptr()
    seen = []
    probe = model.register_forward_pre_hook(lambda module, args: seen.append((handle.loaded, weight.data_ptr())))
    with torch.no_grad():
        out = model(video, audio, text)
        assert seen[-1][0] and seen[-1][1] != master, "inside a call the weights are a device copy"
        assert not handle.loaded and weight.data_ptr() == master, "after a call only the CPU master remains"
        with resident(model):
            model(video, audio, text)
            model(video, audio, text)
        assert seen[-1][1] == seen[-2][1], "resident: one copy for both calls"
        assert not handle.loaded
    probe.remove()
    assert all(torch.equal(a, b) for a, b in zip(out, reference, strict=True))
    assert handle.remove() is model and not hasattr(model, "_magihuman_offload")
    assert weight.device == torch.device("cpu") and not model._forward_pre_hooks and not model._forward_hooks
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(video, audio, text), reference, strict=True))
    with resident(model):  # a module that is not offloaded: no-op
        pass


def test_offloaded_text_encoder_takes_keyword_inputs() -> None:
    from magihuman.random_models import build_tiny_text_encoder

    reference = build_tiny_text_encoder(0).encode("A woman says hello.").tokens
    encoder = build_tiny_text_encoder(0)
    offload_(encoder.model, "cpu")
    assert torch.equal(encoder.encode("A woman says hello.").tokens, reference)


# ---------------------------------------------------------------------------------------------------------
# 5. Applying flags to an engine, warm-up, the benchmark's quality check
# ---------------------------------------------------------------------------------------------------------


def test_apply_speed_flags_and_warm_up_on_the_tiny_engine(tmp_path) -> None:
    from magihuman.build import load_engine

    engine = load_engine("tiny", device="cpu", output_root=tmp_path)
    lines = apply_speed_flags(engine.models, SpeedFlags(fp8=True, offload=True, attention="math"), engine.device)
    assert lines[0] == "distill: attention math, fp8 linears (emulated)"
    assert "sr-540p: attention math, fp8 linears (emulated), offloaded" in lines
    assert lines[-1] == "text encoder: offloaded"  # compile is off; the decoder's convolutions were switched at load
    convs = [m for m in engine.models.decoder.modules() if isinstance(m, torch.nn.Conv3d)]
    fp32_decoder = engine.models.decoder.decoder.conv_in.conv.weight.dtype == torch.float32
    assert all(is_onednn_conv3d(conv) == fp32_decoder for conv in convs)
    assert not hasattr(engine.models.dits["distill"], "_magihuman_offload")  # the base model stays resident
    assert isinstance(engine.models.dits["sr-1080p"].block.layers[0].mlp.down_proj, Fp8ExpertLinear)
    seconds = warm_up(engine, ["256p"])
    assert seconds > 0 and not any(tmp_path.iterdir()), "warm-up leaves no files behind"


def test_bench_reports_the_fp8_quality_check(capsys) -> None:
    from magihuman.bench.cli import main

    main(["--forward", "--tiers", "256p", "--text-tokens", "8", "--fp8", "--no-compile"])
    out = capsys.readouterr().out
    assert "speed steps: compile off · fp8 on" in out and "ms/forward" in out
    line = next(line for line in out.splitlines() if line.startswith("fp8 vs bf16"))
    video_error = float(line.split("video ")[1].split(",")[0])
    assert 0.01 < video_error < 0.30


# ---------------------------------------------------------------------------------------------------------
# 6. GPU-only: the fp8 kernel, offload to real device memory, compile on CUDA
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda
def test_scaled_mm_kernel_matches_the_emulation() -> None:
    from magihuman.fp8 import fp8_kernel

    if fp8_kernel("cuda") != "scaled_mm":
        pytest.skip("no row-wise fp8 GEMM on this GPU")
    linear = random_linear(168, 132, 3).cuda()
    fp8 = Fp8ExpertLinear.from_linear(linear, "scaled_mm")
    x = torch.randn(300, 168, device="cuda")
    x_q, x_scale = quantize_rows(x.bfloat16(), fp8.padded_in)
    kernel = scaled_matmul(x_q, x_scale, fp8.weight, fp8.weight_scale, "scaled_mm")
    emulated = scaled_matmul(x_q, x_scale, fp8.weight, fp8.weight_scale, "emulated")
    assert relative_rms(kernel, emulated) < 5e-3  # one bf16 rounding apart
    with torch.no_grad():
        assert relative_rms(fp8(x, (100, 100, 100)), linear(x, (100, 100, 100))) < 0.045


@pytest.mark.gpu
@cuda
def test_offload_moves_weights_to_pinned_cpu_memory_and_back() -> None:
    model = tiny_dit(device="cuda")
    video, audio, text = inputs(device="cuda")
    with torch.no_grad():
        reference = model(video, audio, text)
        handle = offload_(model, "cuda")
        weight = model.block.layers[0].attention.linear_qkv.weight
        assert weight.device.type == "cpu" and weight.is_pinned()
        out = model(video, audio, text)
        assert weight.device.type == "cpu"
    assert all(torch.equal(a, b) for a, b in zip(out, reference, strict=True))
    handle.remove()
    assert all(p.is_cuda for p in model.parameters())


@pytest.mark.gpu
@cuda
def test_compiled_fp8_dit_on_cuda_matches_eager() -> None:
    model = tiny_dit(device="cuda")
    quantize_fp8_(model)
    video, audio, text = inputs(device="cuda")
    with torch.no_grad():
        eager = model(video, audio, text)
        compiled = compile_dit(model)(video, audio, text)
    for out, ref in zip(compiled, eager, strict=True):
        # Not measured yet (no GPU in the task that wrote it): Triton's fp32 division may flip a few fp8
        # roundings of the activations, which this model amplifies; still far below fp8-vs-bf16 (~0.17).
        assert relative_rms(out, ref) < 3e-2
