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
from magihuman.precision import CPU_DTYPE_ENV, ModelDtypes, compute_dtype, cpu_info, measured_cpu_dtype, model_dtypes
from magihuman.random_models import build_random_turbo_vae, init_random_, random_models

BF16, FP32 = torch.bfloat16, torch.float32


def _linear_dtypes(dit) -> set[torch.dtype]:
    return {m.weight.dtype for m in dit.modules() if isinstance(m, ExpertLinear)}


def test_the_full_model_keeps_the_reference_dtypes_on_cuda() -> None:
    assert model_dtypes("full", "cuda") == ModelDtypes(
        transformer=BF16, text=BF16, video_vae=BF16, audio_vae=FP32, decoder=BF16
    )
    # On a CPU (the full-size benchmark's meta builds, a CPU load) only the VAEs and the decoder widen.
    assert model_dtypes("full", "cpu") == ModelDtypes(BF16, BF16, FP32, FP32, FP32)


def test_the_full_size_builders_use_those_dtypes() -> None:
    """Built on meta (no memory): the DiT's transformer linears bf16 around fp32 embedders and heads, and each
    component in the dtype `model_dtypes` names for the device."""
    dit = build_dit(dit_presets("full")["distill"].dit)  # random_models' DiT, before its seeded values
    assert _linear_dtypes(dit) == {BF16}
    assert dit.adapter.video_embedder.weight.dtype == FP32 and dit.final_linear_video.weight.dtype == FP32
    models = random_models("full", device="meta", dits=[])
    expected = model_dtypes("full", "meta")
    assert models.text.model.dtype == expected.text == BF16
    assert models.video_vae.dtype == expected.video_vae
    assert next(models.audio_vae.model.parameters()).dtype == expected.audio_vae
    assert models.decoder.decoder.conv_in.conv.weight.dtype == expected.decoder


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


def test_the_measured_dtype_is_one_of_the_two_and_cuda_is_bf16(monkeypatch) -> None:
    monkeypatch.delenv(CPU_DTYPE_ENV, raising=False)
    assert measured_cpu_dtype() in (FP32, BF16)
    assert compute_dtype("cpu") == measured_cpu_dtype()
    assert compute_dtype("cuda") == BF16
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
    assert relative_rms(switched.decode(z), plain.decode(z)) < 1e-5  # fp32 summation order only
    assert onednn_conv3d_(build_random_turbo_vae(TINY_TURBO_VAE, dtype=BF16)) == 0  # bf16 takes oneDNN already
