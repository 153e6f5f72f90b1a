"""Warm start: the converted-weight cache (magihuman.cache) and the on-disk compile cache."""

from __future__ import annotations

import json
import os
from collections import namedtuple

import pytest
import torch
from safetensors import safe_open

import magihuman.cache as cache
from magihuman.bench.workload import sample_inputs
from magihuman.cache import COMPLETE_NAME, converted_entry, load_dit_cached
from magihuman.config import TINY_DIT
from magihuman.fp8 import Fp8ExpertLinear, quantize_fp8_
from magihuman.loading import INDEX_NAME, load_dit, save_checkpoint
from magihuman.model.dit import build_dit
from magihuman.optimize import use_compile_cache
from magihuman.packing import TokenLayout
from magihuman.random_models import init_random_

LAYOUT = TokenLayout((2, 4, 4), audio_len=5, text_len=3)


def _write_source(folder, seed: int):
    """A tiny DiT checkpoint as on the hub: fp32 tensors in shards with an index."""
    state = init_random_(build_dit(TINY_DIT, "cpu"), seed=seed).state_dict()
    save_checkpoint({k: v.float() for k, v in state.items()}, folder, max_shard_bytes=200_000)
    return folder


@pytest.fixture
def source(tmp_path):
    return _write_source(tmp_path / "distill", seed=3)


def _load(source, cache_dir, fp8=False):
    lines: list[str] = []
    model = load_dit_cached(source, TINY_DIT, "cpu", fp8=fp8, cache_dir=cache_dir, status=lines.append)
    return model, lines


def _entries(cache_dir):
    return sorted(p.name for p in (cache_dir / "converted").iterdir())


def _bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _assert_same_weights(a, b) -> None:
    sa, sb = (m if isinstance(m, dict) else m.state_dict() for m in (a, b))
    assert set(sa) == set(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key].float(), sb[key].float()), key


def _velocity(model):
    return model(*sample_inputs(model.config, LAYOUT, torch.device("cpu")))


def _garble_keeping_size_and_mtime(folder) -> None:
    """Overwrite every shard with zeros of the same size and restore its times: the fingerprint is unchanged,
    so a load can only succeed if it never reads these files."""
    for shard in folder.glob("*.safetensors"):
        stat = shard.stat()
        shard.write_bytes(bytes(stat.st_size))
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_first_start_converts_and_later_starts_read_only_the_converted_copy(source, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    first, lines = _load(source, cache_dir)
    _assert_same_weights(first, load_dit(source, TINY_DIT))
    entry = converted_entry(cache_dir, source, TINY_DIT, fp8=False)
    assert (entry / COMPLETE_NAME).exists() and any("cached the converted weights" in line for line in lines)
    index = json.loads((entry / INDEX_NAME).read_text())["weight_map"]
    qkv = "block.layers.0.attention.linear_qkv.weight"
    with safe_open(str(entry / index[qkv]), framework="pt") as f:
        assert f.get_slice(qkv).get_dtype() == "BF16"  # stored as the model runs it, not as the hub's fp32
    assert _bytes(entry) < 0.75 * _bytes(source)

    first_weights = {k: v.clone() for k, v in first.state_dict().items()}  # CPU loads may map the source file
    _garble_keeping_size_and_mtime(source)
    second, lines = _load(source, cache_dir)
    assert any("read the converted bf16 copy" in line for line in lines)
    _assert_same_weights(second, first_weights)


def test_fp8_entry_stores_quantised_linears_and_computes_the_same_velocity(source, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    reference = quantize_fp8_(load_dit(source, TINY_DIT), "emulated")
    converted, _ = _load(source, cache_dir, fp8=True)
    cached, lines = _load(source, cache_dir, fp8=True)
    assert any("read the converted fp8 copy" in line for line in lines)
    assert any(isinstance(m, Fp8ExpertLinear) for m in cached.modules())
    _assert_same_weights(cached, reference)
    for model in (converted, cached):
        for out, want in zip(_velocity(model), _velocity(reference), strict=True):
            assert torch.equal(out, want)
    bf16_entry, _ = _load(source, cache_dir, fp8=False)  # a separate entry: formats never mix
    assert sorted(n.split("-")[1] for n in _entries(cache_dir)) == ["bf16", "fp8"]
    assert _bytes(converted_entry(cache_dir, source, TINY_DIT, True)) < _bytes(
        converted_entry(cache_dir, source, TINY_DIT, False)
    )


def test_a_changed_source_is_converted_again_and_the_old_entry_removed(source, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    _load(source, cache_dir)
    old = _entries(cache_dir)
    for shard in source.iterdir():
        shard.unlink()
    _write_source(source, seed=4)
    model, lines = _load(source, cache_dir)
    _assert_same_weights(model, load_dit(source, TINY_DIT))
    assert any("cached the converted weights" in line for line in lines)
    assert len(_entries(cache_dir)) == 1 and _entries(cache_dir) != old


def test_a_damaged_entry_is_rebuilt_from_the_source(source, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    _load(source, cache_dir)
    entry = converted_entry(cache_dir, source, TINY_DIT, fp8=False)
    shard = sorted(entry.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    model, lines = _load(source, cache_dir)
    assert any("is damaged" in line for line in lines)
    _assert_same_weights(model, load_dit(source, TINY_DIT))
    assert (entry / COMPLETE_NAME).exists()
    _assert_same_weights(_load(source, cache_dir)[0], model)


def test_no_entry_without_room_or_without_a_cache(source, tmp_path, monkeypatch) -> None:
    cache_dir = tmp_path / "cache"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**20, 2**20))
    model, lines = _load(source, cache_dir)
    assert any("not caching the converted weights" in line and "GiB free" in line for line in lines)
    assert _entries(cache_dir) == []
    _assert_same_weights(model, load_dit(source, TINY_DIT))

    # Without a cache nothing is written: not in the default cache folder, not beside the source shards.
    default_home = tmp_path / "default-cache"
    monkeypatch.setenv("MAGIHUMAN_CACHE_DIR", str(default_home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(default_home))
    source_files = sorted(p.name for p in source.iterdir())
    model, lines = _load(source, None)
    assert lines == [] and not default_home.exists()
    assert sorted(p.name for p in source.iterdir()) == source_files
    _assert_same_weights(model, load_dit(source, TINY_DIT))


def test_compiled_kernels_are_found_again_in_the_cache_folder(tmp_path, monkeypatch) -> None:
    """A second compile of the same layer (after dynamo forgot the first) is served from the folder."""
    from torch._dynamo.utils import counters

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    folder = use_compile_cache(tmp_path)
    assert folder == tmp_path / "inductor"

    def compile_and_run() -> torch.Tensor:
        torch._dynamo.reset()
        layer = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
        torch.manual_seed(0)
        layer[0].reset_parameters()
        with torch.no_grad():
            return torch.compile(layer)(torch.ones(2, 8))

    counters.clear()
    first = compile_and_run()
    assert counters["inductor"]["fxgraph_cache_miss"] >= 1 and any(folder.rglob("*"))
    counters.clear()
    second = compile_and_run()
    hits = counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"]
    assert hits >= 1 and counters["inductor"]["fxgraph_cache_miss"] == 0
    assert torch.equal(first, second)
