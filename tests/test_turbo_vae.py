"""Turbo VAE decoder: official checkpoint layout, strict loading, window schedule, sizes (tiny config, CPU)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from magihuman.config import FULL_TURBO_VAE, TINY_TURBO_VAE
from magihuman.errors import CheckpointError
from magihuman.loading import load_turbo_vae
from magihuman.model.turbo_vae import TurboVAE, to_uint8, window_schedule
from magihuman.random_models import build_random_turbo_vae

# Entries of the official Turbo VAE JSON that the decoder does not read.
JSON_EXTRAS = {
    "_class_name": "AutoencoderKLTurboVAED",
    "in_channels": 3,
    "decoder_dw_kernel_size": 5,
    "scaling_factor": 1.0,
    "spatial_compression_ratio": 16,
    "aligned_feature_projection_mode": "conv-2layer",
    "aligned_feature_projection_dim": [[512, 1024], [512, 1024]],
    "aligned_blks_indices": [0, 1],
}


def official_state(model: TurboVAE) -> dict[str, torch.Tensor]:
    """`ema_state_dict` as training saved it: `module.` prefix plus the training-only entries."""
    state = {f"module.{name}": t.clone() for name, t in model.state_dict().items()}
    state["module.latents_mean"] = torch.zeros(48)
    state["module.latents_std"] = torch.ones(48)
    for head in (0, 1):
        for layer, (cin, cout) in enumerate(((8, 16), (16, 16))):
            prefix = f"module.aligned_feature_projection_heads.{head}.{layer}.conv"
            state[f"{prefix}.weight"] = torch.randn(cout, cin, 1, 1, 1)
            state[f"{prefix}.bias"] = torch.randn(cout)
    return state


@pytest.fixture
def tiny_files(tmp_path):
    """(model, config path, checkpoint writer): the writer saves an `ema_state_dict` (optionally edited)."""
    model = build_random_turbo_vae(TINY_TURBO_VAE, seed=7)
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TINY_TURBO_VAE).items()}
    del values["extra"]
    config_path = tmp_path / "TurboV3-tiny.json"
    config_path.write_text(json.dumps(values | JSON_EXTRAS))

    def write(state: dict | None = None, top_key: str = "ema_state_dict"):
        path = tmp_path / "checkpoint-tiny.ckpt"
        torch.save({top_key: official_state(model) if state is None else state, "step": 340000}, path)
        return path

    return model, config_path, write


def test_official_layout_loads_strictly_and_round_trips(tiny_files) -> None:
    model, config_path, write = tiny_files
    loaded = load_turbo_vae(config_path, write(), "cpu", torch.float32)
    expected, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    z = torch.randn(1, 48, 3, 1, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decode(z), model.decode(z))

    as_bf16 = load_turbo_vae(config_path, write(), "cpu", torch.bfloat16)
    assert {t.dtype for t in as_bf16.state_dict().values()} == {torch.bfloat16}
    assert as_bf16.decode(z).dtype == torch.bfloat16


def _edited(model: TurboVAE, edit: str) -> dict[str, torch.Tensor]:
    state = official_state(model)
    if edit == "missing":
        del state["module.decoder.up_blocks.1.upsamplers.0.time_conv.conv.bias"]
    elif edit == "unexpected":
        state["module.decoder.up_blocks.3.upsamplers.0.time_conv.conv.bias"] = torch.zeros(6)
    elif edit == "shape":
        state["module.decoder.conv_out.conv.bias"] = torch.zeros(11)
    return state


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("missing", "decoder.up_blocks.1.upsamplers.0.time_conv.conv.bias"),
        ("unexpected", "decoder.up_blocks.3.upsamplers.0.time_conv.conv.bias"),
        ("shape", "decoder.conv_out.conv.bias (11,) (expected (12,))"),
    ],
)
def test_key_mismatch_is_a_checkpoint_error(tiny_files, edit, named) -> None:
    model, config_path, write = tiny_files
    path = write(_edited(model, edit))
    with pytest.raises(CheckpointError, match=re.escape(named)) as err:
        load_turbo_vae(config_path, path, "cpu", torch.float32)
    assert str(path) in str(err.value)


def test_missing_ema_state_dict_is_a_checkpoint_error(tiny_files) -> None:
    model, config_path, write = tiny_files
    path = write(model.state_dict(), top_key="state_dict")
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: no 'ema_state_dict'")):
        load_turbo_vae(config_path, path, "cpu", torch.float32)


def test_truncated_or_absent_file_is_a_checkpoint_error(tiny_files, tmp_path) -> None:
    _, config_path, write = tiny_files
    path = write()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_turbo_vae(config_path, path, "cpu", torch.float32)
    absent = tmp_path / "absent.ckpt"
    with pytest.raises(CheckpointError, match=re.escape(f"{absent}: Turbo VAE checkpoint not found")):
        load_turbo_vae(config_path, absent, "cpu", torch.float32)


@pytest.mark.parametrize("num_latents", [1, 2, 7, 8, 13])
def test_windowed_decode_gives_4t_minus_3_frames(num_latents) -> None:
    model = build_random_turbo_vae(TINY_TURBO_VAE, seed=1)
    calls = []
    video = model.decode(torch.randn(1, 48, num_latents, 1, 1), on_window=lambda done, total: calls.append(total))
    assert video.shape == (1, 3, 4 * (num_latents - 1) + 1, 16, 16)
    assert len(calls) == len(window_schedule(num_latents, TINY_TURBO_VAE)[1]) == calls[0]


def test_window_schedule_of_a_4_second_clip() -> None:
    pad, windows = window_schedule(26, FULL_TURBO_VAE)
    assert pad == 2
    assert [(w.start, w.stop, w.is_first_chunk) for w in windows] == [
        (0, 8, True),
        (6, 15, False),
        (13, 22, False),
        (20, 28, False),
    ]
    assert [(w.trim_front, w.trim_back) for w in windows] == [(0, 4), (4, 4), (4, 4), (4, 0)]


def test_to_uint8_truncates() -> None:
    video = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 6, 1, 1).expand(1, 3, 6, 1, 1)
    out = to_uint8(video)
    assert out.shape == (6, 1, 1, 3) and out.dtype == torch.uint8
    assert out[:, 0, 0, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_full_config_on_meta_device() -> None:
    with torch.device("meta"):
        model = TurboVAE(FULL_TURBO_VAE)
    state = model.state_dict()
    assert len(state) == 80
    assert sum(t.numel() for t in state.values()) == 107_122_892
    shapes = {
        "decoder.conv_in.conv.weight": (512, 48, 3, 3, 3),
        "decoder.up_blocks.0.upsamplers.0.resample.1.weight": (512, 512, 3, 3),
        "decoder.up_blocks.0.upsamplers.0.time_conv.conv.weight": (1024, 512, 3, 1, 1),
        "decoder.up_blocks.1.conv_in.conv_shortcut.conv.weight": (256, 512, 1, 1, 1),
        "decoder.up_blocks.2.upsamplers.0.resample.1.weight": (128, 128, 3, 3),
        "decoder.up_blocks.3.resnets.1.conv2.conv.weight": (64, 64, 3, 3, 3),
        "decoder.conv_out.conv.weight": (12, 64, 3, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert "decoder.up_blocks.2.upsamplers.0.time_conv.conv.weight" not in state
    assert not any(k.startswith("decoder.up_blocks.3.upsamplers") or "up_blocks.0.conv_in" in k for k in state)
    assert [len(b.resnets) for b in (model.decoder.mid_block, *model.decoder.up_blocks)] == [3, 3, 2, 2, 2]
