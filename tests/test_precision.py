"""Dtypes per component (magihuman.precision): the reference flow of the full model is unchanged, the preview
computes in the dtype the machine runs fastest, and the CPU convolution switch changes speed, not results."""

from __future__ import annotations

import pytest
import torch

from magihuman.bench.workload import sample_inputs
from magihuman.config import TINY_DIT, TINY_TURBO_VAE, dit_presets
from magihuman.fp8 import relative_rms
from magihuman.model.dit import ExpertLinear, build_dit
from magihuman.optimize import onednn_conv3d_
from magihuman.packing import TokenLayout
from magihuman.precision import CPU_DTYPE_ENV, compute_dtype, cpu_info, measured_cpu_dtype, model_dtypes
from magihuman.random_models import build_random_turbo_vae, init_random_, random_models

BF16, FP32 = torch.bfloat16, torch.float32


def _linear_dtypes(dit) -> set[torch.dtype]:
    return {m.weight.dtype for m in dit.modules() if isinstance(m, ExpertLinear)}


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_the_full_size_builders_use_the_reference_dtypes(monkeypatch, device: str) -> None:
    """Built on meta (no memory) through the dtype choice for `device`: on CUDA the DiT's transformer linears,
    the text encoder, the video VAE and the decoder are bf16 (the reference flow); on a CPU (the full-size
    benchmark's meta builds, a CPU load) the VAEs and the decoder widen to fp32. The audio VAE is fp32 on both."""
    import magihuman.random_models

    monkeypatch.setattr(magihuman.random_models, "model_dtypes", lambda size, _: model_dtypes(size, device))
    models = random_models("full", device="meta", dits=[])
    wide = BF16 if device == "cuda" else FP32
    dit = build_dit(dit_presets("full")["distill"].dit)  # random_dits' DiT before its seeded values
    assert _linear_dtypes(dit) == {BF16}
    assert dit.adapter.video_embedder.weight.dtype == FP32 and dit.final_linear_video.weight.dtype == FP32
    assert models.text.model.dtype == BF16
    assert models.video_vae.dtype == wide
    assert next(models.audio_vae.model.parameters()).dtype == FP32
    assert models.decoder.decoder.conv_in.conv.weight.dtype == wide


@pytest.mark.parametrize("name", ["float32", "bfloat16"])
def test_the_preview_computes_in_the_chosen_dtype(monkeypatch, name: str) -> None:
    monkeypatch.setenv(CPU_DTYPE_ENV, name)
    dtype = getattr(torch, name)
    models = random_models("tiny", dits=["distill"])
    assert _linear_dtypes(models.dits["distill"]) == {dtype}
    assert models.decoder.decoder.conv_in.conv.weight.dtype == dtype
    assert models.text.model.dtype == models.video_vae.dtype == FP32


def test_an_unknown_cpu_dtype_is_refused(monkeypatch) -> None:
    monkeypatch.setenv(CPU_DTYPE_ENV, "float16")
    with pytest.raises(ValueError, match=CPU_DTYPE_ENV):
        compute_dtype("cpu")


@pytest.mark.parametrize("faster", [FP32, BF16])
def test_the_measured_dtype_is_the_faster_one(monkeypatch, faster: torch.dtype) -> None:
    """The choice follows the timings: injected ones that differ clearly (10x) in either direction."""
    import magihuman.precision

    monkeypatch.delenv(CPU_DTYPE_ENV, raising=False)
    monkeypatch.setattr(magihuman.precision, "_seconds_for", lambda dtype: 0.01 if dtype == faster else 0.1)
    measured_cpu_dtype.cache_clear()
    try:
        assert measured_cpu_dtype() == faster
        assert compute_dtype("cpu") == faster
        assert compute_dtype("cuda") == BF16  # never measured
    finally:
        measured_cpu_dtype.cache_clear()
    assert cpu_info().describe()  # the line the benchmark and CI print


def test_fp32_compute_is_the_bf16_model_without_its_roundings() -> None:
    """Same weights: the fp32 velocity is the bf16 one up to bf16 noise, and not bit-equal (it did change)."""
    layout = TokenLayout((2, 4, 4), audio_len=5, text_len=3)
    bf16 = init_random_(build_dit(TINY_DIT, "cpu"), seed=4).eval()
    inputs = sample_inputs(TINY_DIT, layout, torch.device("cpu"))
    with torch.no_grad():
        reference = bf16(*inputs)
        fp32 = bf16.set_compute_dtype(FP32)(*inputs)
    assert _linear_dtypes(bf16) == {FP32}
    for ours, theirs in zip(fp32, reference, strict=True):
        assert ours.dtype == FP32 and not torch.equal(ours, theirs)
        assert relative_rms(ours, theirs) < 0.05


def test_onednn_convolutions_decode_the_same_video() -> None:
    plain = build_random_turbo_vae(TINY_TURBO_VAE, seed=3)
    switched = build_random_turbo_vae(TINY_TURBO_VAE, seed=3)
    convs = sum(isinstance(m, torch.nn.Conv3d) for m in switched.modules())
    assert onednn_conv3d_(switched) == convs > 0
    assert onednn_conv3d_(switched) == 0  # once is enough
    z = torch.randn(1, 48, 9, 3, 4, generator=torch.Generator().manual_seed(0))
    plain_kernels, plain_video = _kernels_of(plain.decode, z)
    switched_kernels, switched_video = _kernels_of(switched.decode, z)
    # The switch really changes the kernel that runs, not only a flag on the module.
    # (The decoder's 2-D convolutions take oneDNN in both.)
    assert "aten::slow_conv3d_forward" in plain_kernels
    assert "aten::slow_conv3d_forward" not in switched_kernels and "aten::mkldnn_convolution" in switched_kernels
    assert relative_rms(switched_video, plain_video) < 1e-5  # fp32 summation order only
    assert onednn_conv3d_(build_random_turbo_vae(TINY_TURBO_VAE, dtype=BF16)) == 0  # bf16 takes oneDNN already


def _kernels_of(fn, *args) -> tuple[set[str], torch.Tensor]:
    """The ATen operators `fn(*args)` ran (torch profiler, CPU), and its result."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn(*args)
    return {event.key for event in prof.key_averages()}, out
