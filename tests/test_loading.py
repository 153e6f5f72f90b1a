"""Strict checkpoint loading on tiny checkpoints written in the official layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from magihuman.config import TINY_DIT
from magihuman.errors import CheckpointError
from magihuman.loading import INDEX_NAME, SINGLE_NAME, load_dit, save_checkpoint
from magihuman.model.dit import build_dit
from magihuman.random_models import init_random_


@pytest.fixture(scope="module")
def reference():
    return init_random_(build_dit(TINY_DIT, "cpu"), seed=7).state_dict()


def _fp32(state):
    """The hub's distill/SR shards store every tensor in fp32."""
    return {k: v.float() for k, v in state.items()}


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "single"])
def test_round_trip_is_exact(tmp_path, reference, sharded) -> None:
    save_checkpoint(_fp32(reference), tmp_path, max_shard_bytes=200_000 if sharded else None)
    if sharded:
        shards = set(json.loads((tmp_path / INDEX_NAME).read_text())["weight_map"].values())
        assert len(shards) > 1
    model = load_dit(tmp_path, TINY_DIT)
    loaded = model.state_dict()
    assert set(loaded) == set(reference)
    for key, want in reference.items():
        assert loaded[key].dtype == want.dtype, key  # fp32 on disk converted to the module's dtype
        assert loaded[key].device.type == "cpu"
        assert torch.equal(loaded[key], want), key
    assert not any(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())


def _write_single(tmp_path, state):
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / SINGLE_NAME))


def test_missing_key_names_the_key(tmp_path, reference) -> None:
    state = dict(reference)
    del state["block.layers.2.mlp.down_proj.weight"]
    _write_single(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"missing 1 key.*block\.layers\.2\.mlp\.down_proj\.weight"):
        load_dit(tmp_path, TINY_DIT)


def test_unexpected_key_names_key_and_file(tmp_path, reference) -> None:
    save_checkpoint({**reference, "block.layers.0.attention.post_norm.weight": torch.zeros(3)}, tmp_path, 200_000)
    with pytest.raises(CheckpointError, match=r"unexpected 1 key.*post_norm\.weight \(in model-\d+-of-\d+"):
        load_dit(tmp_path, TINY_DIT)


def test_wrong_shape_names_key_file_and_shapes(tmp_path, reference) -> None:
    state = dict(reference)
    state["final_linear_audio.weight"] = torch.zeros(32, TINY_DIT.hidden_size)
    _write_single(tmp_path, state)
    with pytest.raises(
        CheckpointError, match=r"final_linear_audio\.weight in .*model\.safetensors has shape \[32, 64\]"
    ):
        load_dit(tmp_path, TINY_DIT)


def test_truncated_shard_names_the_file(tmp_path, reference) -> None:
    save_checkpoint(reference, tmp_path, max_shard_bytes=200_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"cannot read .*{shard.name}"):
        load_dit(tmp_path, TINY_DIT)


def test_missing_shard_and_empty_folder(tmp_path, reference) -> None:
    with pytest.raises(CheckpointError, match="holds neither"):
        load_dit(tmp_path, TINY_DIT)
    save_checkpoint(reference, tmp_path, max_shard_bytes=200_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"shard .*{shard.name} .* is missing"):
        load_dit(tmp_path, TINY_DIT)


def test_file_that_is_not_safetensors(tmp_path) -> None:
    (tmp_path / SINGLE_NAME).write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_dit(tmp_path, TINY_DIT)


def test_saved_single_file_is_plain_safetensors(tmp_path, reference) -> None:
    save_checkpoint(reference, tmp_path)
    assert set(load_file(str(tmp_path / SINGLE_NAME))) == set(reference)
