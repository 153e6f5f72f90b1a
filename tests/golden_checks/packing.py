"""`packing_*` fixtures: patchify/unpatchify channel orders, coordinates, RoPE tables and rotation."""

from __future__ import annotations

import torch

from magihuman.model.rope import apply_rope, rope_bands, rope_table
from magihuman.packing import TokenLayout, patchify_video, token_coords, unpatchify_video
from tests.golden_checks import Fixture, Report, modality_ids


def check(fx: Fixture) -> None:
    report = Report(fx)
    if "patchify.latent_probe" in fx:
        _check_patchify(fx, report)
    if "coords" in fx:
        _check_rope(fx, report)
    report.finish()


def _check_patchify(fx: Fixture, report: Report) -> None:
    patch = tuple(fx.config["patch_size_thw"])
    for name in ("probe", "random"):
        report.equal(
            f"patchify {name}",
            patchify_video(fx[f"patchify.latent_{name}"], patch),
            fx[f"patchify.tokens_{name}"],
        )
    video_ref, audio_ref = fx["unpatchify.video"], fx["unpatchify.audio"]
    layout = TokenLayout(tuple(video_ref.shape[2:]), audio_ref.shape[1], fx.config["text_len"], patch)
    video, audio = split_output(fx["unpatchify.out_tokens"], layout, video_ref.shape[1], audio_ref.shape[2])
    report.equal("unpatchify video", video, video_ref)
    report.equal("unpatchify audio", audio, audio_ref)


def _check_rope(fx: Fixture, report: Report) -> None:
    cfg = fx.config
    atol = fx.tolerance.get("recommended_atol", 1e-6)
    layout = TokenLayout(tuple(cfg["latent_thw"]), cfg["audio_len"], cfg["text_len"])
    report.equal("modality", modality_ids(layout), fx["modality"])
    coords = token_coords(layout, cfg["coords_style"], cfg.get("text_offset", 0))
    report.equal("coords", coords, fx["coords"])
    bands = rope_bands(cfg["head_dim"] // 8, cfg.get("rope_temperature", 10000.0))
    report.close("bands", bands, fx["bands"], atol)
    table = rope_table(coords, bands)
    report.close("rope table", table, fx["rope"], atol)
    report.close("rotated probe", apply_rope(fx["q"], fx["rope"]), fx["q_rotated"], atol)


def split_output(out: torch.Tensor, layout: TokenLayout, latent_channels: int, audio_channels: int):
    """Model output rows (N, width) -> (video (1, C, T, H, W), audio (1, A, audio_channels))."""
    nv, na, _ = layout.segments
    video = unpatchify_video(out[:nv], layout, latent_channels)
    audio = out[nv : nv + na, :audio_channels].unsqueeze(0)
    return video, audio
