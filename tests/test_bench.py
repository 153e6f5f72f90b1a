"""The benchmark's arithmetic, its FLOP counting and the full-size builders (timings are never asserted)."""

from __future__ import annotations

import math

import pytest
import torch

from magihuman.bench.cli import main
from magihuman.bench.flops import attended_pairs, forward_flops
from magihuman.bench.pipeline import run_resolutions
from magihuman.bench.workload import bench_prompt, cases, fp8_quality
from magihuman.build import load_engine
from magihuman.config import RESOLUTIONS, SAMPLING, dit_presets, latent_frames, video_frames
from magihuman.fp8 import Fp8ExpertLinear
from magihuman.model.attention import select_backend
from magihuman.model.dit import build_dit
from magihuman.random_models import init_random_, random_models


def test_flops_match_the_published_arithmetic_floor() -> None:
    # Issue 6: at 790 TFLOP/s the 8 distilled steps at 256p cost 1.02 s, 5 SR steps 3.17 s (540p) and
    # 24.2 s (1080p), for a 5-second clip with ~300 text tokens.
    presets = dit_presets("full")
    seconds = {}
    for case in cases(["256p", "540p", "1080p"], 32, 126, 300, "full"):
        seconds[case.resolution] = forward_flops(presets[case.model].dit, case.layout) / 790e12
    assert abs(8 * seconds["256p"] - 1.02) < 0.01
    assert abs(5 * seconds["540p"] - 3.17) < 0.01
    assert abs(5 * seconds["1080p"] - 24.2) < 0.1


def test_local_window_counts_fewer_pairs() -> None:
    config = dit_presets("full")["sr-1080p"].dit
    layout = cases(["1080p"], 32, 126, 300, "full")[0].layout
    local = attended_pairs(config, layout, layer=0)
    assert layout.num_tokens**2 > local > layout.num_tokens**2 / 2
    assert attended_pairs(config, layout, layer=3) == layout.num_tokens**2


def test_forward_mode_prints_a_table(capsys) -> None:
    main(["--forward", "--resolutions", "256p", "--text-tokens", "8"])
    out = capsys.readouterr().out
    assert "tiny preset" in out and "256p" in out and "ms/forward" in out


def test_pipeline_mode_prints_stages_start_up_and_fp8_quality(capsys) -> None:
    main(["--resolutions", "256p,540p", "--text-tokens", "40", "--fp8", "--no-cache"])
    out = capsys.readouterr().out
    assert "mode: pipeline" in out and "tiny preset" in out and "start-up:" in out and "ready in" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["256p"], ["540p"])}
    assert set(rows) == {"256p", "540p"}
    for resolution, cells in rows.items():
        text, denoise, sr, decode, mux, scope = map(float, cells[1:7])
        assert denoise > 0 and decode > 0 and mux > 0, resolution
        assert (sr > 0) == (resolution == "540p")
        assert scope <= denoise + sr + decode + 0.015  # each printed to 0.01 s
    assert "not comparable here" in out  # the tiny preset is never set against the H100 numbers
    for name in ("one velocity", "8-step latent"):
        assert f"fp8 vs bf16, distill at 256p, {name}" in out


def test_flop_counter_sees_every_dit_forward() -> None:
    """8 distilled forwards for the base take, then 5 SR forwards at the SR layout for the 540p upscale."""
    engine = load_engine("tiny")
    runs = run_resolutions(engine, ["256p", "540p"], seconds=1, text_tokens=20, repetition=0)
    assert engine.models.text.count_tokens(bench_prompt(20, 0)) == 20
    presets = dit_presets("tiny")
    base_case, sr_case = cases(["256p", "540p"], latent_frames(1), video_frames(1), 20, "tiny")
    base = SAMPLING.distill_steps * forward_flops(presets["distill"].dit, base_case.layout)
    sr = SAMPLING.sr_steps * forward_flops(presets[RESOLUTIONS["540p"].sr_model].dit, sr_case.layout)
    assert math.isclose(runs["256p"].dit_flops, base, rel_tol=1e-12)
    assert math.isclose(runs["540p"].dit_flops, base + sr, rel_tol=1e-12)
    assert runs["540p"].published_scope == pytest.approx(
        runs["540p"].base["denoise"] + runs["540p"].sr["sr"] + runs["540p"].sr["decode"]
    )


def test_fp8_quality_reports_velocity_and_latent_errors() -> None:
    model = init_random_(build_dit(dit_presets("tiny")["distill"].dit, "cpu"), seed=0).eval()
    model.set_attention_backend(select_backend(torch.device("cpu"), None))
    layout = cases(["256p"], 2, 9, 6, "tiny")[0].layout
    quality = fp8_quality(model, layout, torch.device("cpu"), steps=2)
    assert set(quality) == {"one velocity", "2-step latent"}
    for video_error, audio_error in quality.values():
        assert 0 < video_error < 0.5 and 0 < audio_error < 0.5  # e4m3 noise, amplified by the random tiny DiT
    assert any(isinstance(m, Fp8ExpertLinear) for m in model.modules())  # quantised in place


def test_full_size_random_components_have_the_published_shapes() -> None:
    """The benchmark's full-size text encoder, VAEs and decoder, built on meta: the official checkpoints'
    parameter counts (the DiTs use the same presets as real loading, checked against full_keys.json elsewhere)."""
    models = random_models("full", device="meta", dits=[])

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(models.text.model) == 9_241_705_984
    assert models.text.model.dtype == torch.bfloat16
    assert count(models.video_vae.model) == 704_688_668
    assert count(models.audio_vae.model) == 156_112_514
    assert count(models.decoder) == 107_122_892


def test_preview_mode_starts_the_tiny_engine_and_times_both_goals(capsys) -> None:
    main(["--model", "tiny", "--text-tokens", "20"])
    out = capsys.readouterr().out
    assert "mode: preview" in out and "start-up: tiny engine built in" in out
    rows = [line for line in out.splitlines() if line.startswith(("default clip", "upscale a 2-s take"))]
    assert len(rows) == 2 and all(row.split()[-1] in ("met", "MISSED") for row in rows)
