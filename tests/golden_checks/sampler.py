"""Sampler fixtures (`sampler_*`): sigma tables, UniPC trajectories, the re-noising step, SR preparation.

A file is recognised by its contents, not its name: a JSON record with a `steps` table, tensors
`corrected_sample` (UniPC replay), `<latent>_model_output` + `<latent>_noise` (re-noising step) or
`upsample<j>.*` / `audio.sr_input` / `signal_coeff` (SR preparation). A file with none of these fails.
Tolerance: the file's `recommended_atol`; JSON tables have none and are compared exactly.
"""

from __future__ import annotations

import re

import torch

from magihuman.config import SAMPLING
from magihuman.sampling import (
    FlowUniPC,
    renoise_for_sr,
    renoise_step,
    sigma_schedule,
    sr_audio_input,
    sr_renoise_coefficients,
    upsample_latent,
    video_guidance_scale,
    zsnr_signal_table,
)
from tests.golden_checks import Fixture, Report

UPSAMPLE_KEY = re.compile(r"^(upsample\d+)\.in$")
SWITCH_KEY = re.compile(r"_timestep_le_(\d+)$")


def _bits(values) -> torch.Tensor:
    """float32 bit patterns (as int64) of a list of numbers or a float32 tensor."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.float32)
    return t.to(torch.float32).view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _hex_bits(hex_values) -> torch.Tensor:
    if isinstance(hex_values, str):
        hex_values = [hex_values]
    return torch.tensor([int(h, 16) for h in hex_values], dtype=torch.int64)


def _scalar(x: float) -> torch.Tensor:
    return torch.tensor([x], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# sampler_tables.json
# ---------------------------------------------------------------------------------------------------------


def is_tables(fx: Fixture) -> bool:
    return isinstance(fx.config.get("steps"), dict)


def check_tables(fx: Fixture, report: Report) -> None:
    cfg = fx.config
    shift = cfg.get("shift", SAMPLING.shift)
    report.equal("shift", _scalar(shift), _scalar(SAMPLING.shift))
    if "num_train_timesteps" in cfg:
        report.equal("num_train_timesteps", _scalar(cfg["num_train_timesteps"]), _scalar(SAMPLING.num_train_timesteps))
    if "sigma_max_f32_hex" in cfg:
        report.equal("sigma_max bits", _bits([SAMPLING.sigma_max]), _hex_bits(cfg["sigma_max_f32_hex"]))
    if not cfg["steps"]:
        report.failures.append("steps: the table lists no step counts")
    # 1. Per step count: sigmas (bits and values), timesteps, video guidance per step.
    for n_text, table in cfg["steps"].items():
        n = int(n_text)
        sigmas, timesteps = sigma_schedule(n, shift)
        report.equal(f"steps.{n}.sigmas", sigmas, torch.tensor(table["sigmas"], dtype=torch.float32))
        if "sigmas_f32_hex" in table:
            report.equal(f"steps.{n}.sigmas bits", _bits(sigmas), _hex_bits(table["sigmas_f32_hex"]))
        report.equal(f"steps.{n}.timesteps", timesteps, torch.tensor(table["timesteps"], dtype=torch.int64))
        if "video_cfg_scale_base_model" in table:
            ours = torch.tensor([video_guidance_scale(t) for t in timesteps], dtype=torch.float64)
            expected = torch.tensor(table["video_cfg_scale_base_model"], dtype=torch.float64)
            report.equal(f"steps.{n}.video_cfg_scale", ours, expected)
    # 2. Super-resolution constants.
    sr = cfg.get("sr")
    if sr is not None:
        index = sr.get("noise_value_index", SAMPLING.sr_zsnr_index)
        report.equal("sr.noise_value_index", _scalar(index), _scalar(SAMPLING.sr_zsnr_index))
        signal, noise = sr_renoise_coefficients(index)
        report.equal("sr.signal_coeff", signal.reshape(1), torch.tensor([sr["signal_coeff"]], dtype=torch.float32))
        report.equal("sr.noise_coeff", noise.reshape(1), torch.tensor([sr["noise_coeff"]], dtype=torch.float32))
        if "signal_coeff_f32_hex" in sr:
            report.equal("sr.signal_coeff bits", _bits(signal.reshape(1)), _hex_bits(sr["signal_coeff_f32_hex"]))
        if "noise_coeff_f32_hex" in sr:
            report.equal("sr.noise_coeff bits", _bits(noise.reshape(1)), _hex_bits(sr["noise_coeff_f32_hex"]))
        table = zsnr_signal_table()
        if "zsnr_table_first" in sr:
            report.equal("sr.zsnr_table_first", table[:1], torch.tensor([sr["zsnr_table_first"]], dtype=torch.float32))
        if "zsnr_table_last" in sr:
            report.equal("sr.zsnr_table_last", table[-1:], torch.tensor([sr["zsnr_table_last"]], dtype=torch.float32))
        if "audio_noise_scale" in sr:
            report.equal(
                "sr.audio_noise_scale", _scalar(SAMPLING.sr_audio_noise_scale), _scalar(sr["audio_noise_scale"])
            )
        if "audio_clean_scale" in sr:
            report.equal(
                "sr.audio_clean_scale", _scalar(1 - SAMPLING.sr_audio_noise_scale), _scalar(sr["audio_clean_scale"])
            )
    # 3. Guidance constants; the switch timestep is named in the key (…_when_timestep_le_<t>).
    cfg_rule = cfg.get("cfg")
    if cfg_rule is not None:
        if "base_video_scale" in cfg_rule:
            report.equal(
                "cfg.base_video_scale", _scalar(SAMPLING.video_guidance_high), _scalar(cfg_rule["base_video_scale"])
            )
        if "base_audio_scale" in cfg_rule:
            report.equal(
                "cfg.base_audio_scale", _scalar(SAMPLING.audio_guidance), _scalar(cfg_rule["base_audio_scale"])
            )
        for key, value in cfg_rule.items():
            match = SWITCH_KEY.search(key)
            if match:
                switch = int(match.group(1))
                report.equal(f"cfg.{key}", _scalar(video_guidance_scale(switch)), _scalar(value))
                above = video_guidance_scale(switch + 1)
                report.equal(
                    f"cfg.scale above timestep {switch}", _scalar(above), _scalar(cfg_rule["base_video_scale"])
                )


# ---------------------------------------------------------------------------------------------------------
# UniPC trajectories
# ---------------------------------------------------------------------------------------------------------


def is_unipc(fx: Fixture) -> bool:
    return "corrected_sample" in fx


def _check_grid(fx: Fixture, report: Report) -> tuple[torch.Tensor, int]:
    """Our sigma grid (and timesteps, when recorded) against the file's, exactly; returns (sigmas, steps)."""
    sigmas = fx["sigmas"]
    n = sigmas.numel() - 1
    ours_sigmas, ours_timesteps = sigma_schedule(n, fx.config.get("shift", SAMPLING.shift))
    report.equal("sigmas", ours_sigmas, sigmas)
    if "timesteps" in fx:
        report.equal("timesteps", ours_timesteps, fx["timesteps"])
    return sigmas, n


def check_unipc(fx: Fixture, report: Report) -> None:
    atol = fx.tolerance.get("recommended_atol", 0.0)
    # 1. The grid itself (exact), then a replay on the file's grid, free running from x_init.
    sigmas, n = _check_grid(fx, report)
    solver = FlowUniPC(sigmas)
    x = fx["x_init"]
    corrected, x0_pred, orders, prev = [], [], [], []
    for i in range(n):
        x = solver.step(fx["model_output"][i], x)
        corrected.append(solver.last_corrected)
        x0_pred.append(solver.last_x0_pred)
        orders.append(solver.last_order)
        prev.append(x)
    report.close("corrected_sample", torch.stack(corrected), fx["corrected_sample"], atol)
    report.close("x0_pred", torch.stack(x0_pred), fx["x0_pred"], atol)
    report.close("prev_sample", torch.stack(prev), fx["prev_sample"], atol)
    if "predictor_order" in fx:
        report.equal("predictor_order", torch.tensor(orders, dtype=torch.int64), fx["predictor_order"])


# ---------------------------------------------------------------------------------------------------------
# Distilled model's re-noising step
# ---------------------------------------------------------------------------------------------------------


def _renoise_latents(fx: Fixture) -> list[str]:
    names = sorted(k[: -len("_model_output")] for k in fx.tensors if k.endswith("_model_output"))
    return [p for p in names if f"{p}_noise" in fx and f"{p}_init" in fx and f"{p}_out" in fx]


def is_renoise(fx: Fixture) -> bool:
    return bool(_renoise_latents(fx)) and "corrected_sample" not in fx


def check_renoise(fx: Fixture, report: Report) -> None:
    atol = fx.tolerance.get("recommended_atol", 0.0)
    sigmas, n = _check_grid(fx, report)
    for name in _renoise_latents(fx):
        x = fx[f"{name}_init"]
        outs = []
        for i in range(n):
            x = renoise_step(x, fx[f"{name}_model_output"][i], fx[f"{name}_noise"][i], sigmas[i], sigmas[i + 1])
            outs.append(x)
        report.close(f"{name}_out", torch.stack(outs), fx[f"{name}_out"], atol)


# ---------------------------------------------------------------------------------------------------------
# Super-resolution preparation
# ---------------------------------------------------------------------------------------------------------


def is_sr_prep(fx: Fixture) -> bool:
    return any(UPSAMPLE_KEY.match(k) for k in fx.tensors) or "audio.sr_input" in fx or "signal_coeff" in fx


def check_sr_prep(fx: Fixture, report: Report) -> None:
    atol = fx.tolerance.get("recommended_atol", 0.0)
    index = fx.config.get("zsnr_index", SAMPLING.sr_zsnr_index)
    signal, noise = sr_renoise_coefficients(index)
    if "signal_coeff" in fx:
        report.equal("signal_coeff", signal.reshape(1), fx["signal_coeff"])
    if "noise_coeff" in fx:
        report.equal("noise_coeff", noise.reshape(1), fx["noise_coeff"])
    groups = sorted({m.group(1) for k in fx.tensors if (m := UPSAMPLE_KEY.match(k))})
    for group in groups:
        expected = fx[f"{group}.out"]
        report.close(f"{group}.out", upsample_latent(fx[f"{group}.in"], expected.shape[2:]), expected, atol)
        if f"{group}.renoised" in fx:
            ours = renoise_for_sr(expected, fx[f"{group}.noise"], index)
            report.close(f"{group}.renoised", ours, fx[f"{group}.renoised"], atol)
    if "audio.sr_input" in fx:
        ours = sr_audio_input(fx["audio.noise"], fx["audio.base"])
        report.close("audio.sr_input", ours, fx["audio.sr_input"], atol)


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------

HANDLERS = (
    (is_tables, check_tables),
    (is_unipc, check_unipc),
    (is_renoise, check_renoise),
    (is_sr_prep, check_sr_prep),
)


def check(fx: Fixture) -> None:
    report = Report(fx)
    matched = [run for applies, run in HANDLERS if applies(fx)]
    if not matched:
        raise AssertionError(
            f"{fx.path.name}: not a recognised sampler fixture (config keys {sorted(fx.config)}, "
            f"tensors {sorted(fx.tensors)}); expected a 'steps' table, 'corrected_sample', "
            "'<latent>_model_output'/'_noise'/'_init'/'_out', or 'upsample<j>.*' / 'audio.sr_input'"
        )
    for run in matched:
        run(fx, report)
    report.finish()
