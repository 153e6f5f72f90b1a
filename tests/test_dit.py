"""The DiT beyond the golden fixtures: the full 15B layout, presets, and attention backends agreeing."""

from __future__ import annotations

import json

import pytest
import torch

from magihuman.config import FULL_DIT, TINY_DIT, dit_presets
from magihuman.model.attention import LocalWindow, attention, flex_local_attention
from magihuman.model.dit import build_dit
from magihuman.random_models import init_random_
from tests.golden_checks import REPO_ROOT

FULL_KEYS = REPO_ROOT.parent / "shared" / "spec" / "full_keys.json"


def test_full_preset_matches_the_official_layout() -> None:
    model = build_dit(FULL_DIT)  # meta device: no memory
    assert sum(p.numel() for p in model.parameters()) == 15_299_419_136
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    if not FULL_KEYS.exists():
        pytest.skip(f"{FULL_KEYS} not present")
    official = {k: (shape, dtype) for k, shape, dtype in json.loads(FULL_KEYS.read_text())}
    assert len(official) == 331
    assert set(ours) == set(official), (sorted(set(ours) - set(official)), sorted(set(official) - set(ours)))
    mismatched = {k: (ours[k], official[k]) for k in official if ours[k] != official[k]}
    assert not mismatched


@pytest.mark.parametrize("size", ["full", "tiny"])
def test_presets(size: str) -> None:
    presets = dit_presets(size)
    assert set(presets) == {"base", "distill", "sr-540p", "sr-1080p"}
    assert presets["base"].dit == presets["distill"].dit
    assert presets["base"].dit.coords_style == "v2" and presets["sr-540p"].dit.coords_style == "v1"
    sr1080 = presets["sr-1080p"].dit
    assert sr1080.local_attn_layers and set(sr1080.local_attn_layers) != set(range(sr1080.num_layers))
    if size == "full":
        assert sorted(set(range(40)) - set(sr1080.local_attn_layers)) == [3, 7, 11, 15, 19, 23, 27, 31]


def test_tiny_preset_keeps_every_code_path() -> None:
    c = TINY_DIT
    assert c.num_heads_q > c.num_heads_kv > 1  # GQA
    layers = range(c.num_layers)
    assert any(c.num_experts(i) == 3 for i in layers) and any(c.num_experts(i) == 1 for i in layers)
    assert any(i in c.gelu7_layers for i in layers) and any(i not in c.gelu7_layers for i in layers)


def test_tiny_forward_shapes_and_determinism() -> None:
    model = init_random_(build_dit(TINY_DIT, "cpu"), seed=0)
    video, audio = torch.randn(1, 48, 3, 4, 6), torch.randn(1, 9, 64)
    text = torch.randn(5, TINY_DIT.text_in_channels)
    with torch.no_grad():
        v, a = model(video, audio, text)
        v2, _ = model(video, audio, text)
    assert v.shape == video.shape and a.shape == audio.shape and v.dtype == torch.float32
    assert torch.equal(v, v2) and torch.isfinite(v).all()


def _qkv(n: int, hq: int, hkv: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, h, d, generator=g).bfloat16() for h in (hq, hkv, hkv)]


def test_sdpa_matches_math_within_bf16() -> None:
    q, k, v = _qkv(40, 4, 2, 16)
    ref = attention(q, k, v, "math").float()
    out = attention(q, k, v, "sdpa").float()
    assert (out - ref).abs().max() < 2e-2


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_local_window_matches_dense_masked_softmax() -> None:
    frames, per_frame, other = 5, 4, 7
    local = LocalWindow.for_sequence(frames, per_frame, other, window=1)
    q, k, v = _qkv(frames * per_frame + other, 4, 2, 16)
    dense = attention(q, k, v, "math", local).float()
    flex = flex_local_attention(q, k, v, local).float()
    assert (flex - dense).abs().max() < 2e-2
    # the window really restricts: frame 0 must not see frame 2's video keys
    mask = local.dense_mask()
    assert not mask[0, 2 * per_frame] and mask[0, per_frame] and mask[0, -1] and mask[-1].all()


def test_frame_by_frame_local_attention_matches_dense_masked_softmax() -> None:
    frames, per_frame, other = 6, 4, 5
    local = LocalWindow.for_sequence(frames, per_frame, other, window=1)
    q, k, v = _qkv(frames * per_frame + other, 4, 2, 16, seed=3)
    dense = attention(q, k, v, "math", local).float()
    chunked = attention(q, k, v, "sdpa", local).float()
    assert (chunked - dense).abs().max() < 2e-2
    # and it is not just global attention
    assert (attention(q, k, v, "sdpa").float() - dense).abs().max() > 0.05
