"""`golden`: every fixture in `$MAGIHUMAN_GOLDEN_DIR` through the test suite's own check
functions (`tests/golden_checks`, the CPU reference path), then the DiT fixtures end to end on this device
with each attention backend it has, and on CUDA the Turbo VAE fixtures through the CUDA kernels in bf16.

The kernel comparisons use the tolerances the fixtures record for other kernels: `recommended.out_atol` and
`out_rel_rms` of the DiT cases (which cover their measured SDPA-in-bf16 deviation, kept in the report for
reference) and `bf16_atol` / `bf16_rel_rms` of the Turbo VAE case.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

import tests.golden_checks as harness  # plain Python (safetensors and torch, no pytest): the suite's own checks
from acceptance.runner import Context, Outcome, Skip
from magihuman.config import TurboVAEConfig
from magihuman.loading import turbo_vae_from_state_dict
from magihuman.model.attention import flash_attention_available
from tests.golden_checks.dit import build_from_fixture


def device_backends(device: torch.device) -> list[str]:
    """The attention backends to compare on `device` (frame-local layers use FlexAttention on CUDA)."""
    if device.type != "cuda":
        return ["math", "sdpa"]
    backends = ["sdpa", "math"]
    if torch.cuda.get_device_capability(device)[0] == 9 and flash_attention_available(3):
        backends.append("fa3")
    if flash_attention_available(2):
        backends.append("fa2")
    return backends


def check_golden(ctx: Context) -> Outcome:
    folder = harness.golden_dir()
    if not folder.is_dir():
        raise Skip(f"golden folder {folder} not found (set MAGIHUMAN_GOLDEN_DIR)")
    paths = harness.fixture_paths(folder)
    if not paths:
        raise Skip(f"no fixtures in {folder}")
    out = ctx.outcome
    out.measured["folder"] = str(folder)

    # 1. Every fixture through the test suite's check (CPU reference path, the fixtures' own tolerances).
    passed = 0
    for path in paths:
        try:
            kind_checks = importlib.import_module(f"tests.golden_checks.{harness.fixture_kind(path)}")
            kind_checks.check(harness.load_fixture(path))
            passed += 1
        except (AssertionError, ModuleNotFoundError) as failure:
            out.failures.append(f"{path.stem} (CPU reference check): {str(failure).splitlines()[0]}")
    out.measured["reference checks passed"] = f"{passed}/{len(paths)}"
    out.tolerance["reference checks passed"] = "all (each fixture's own tolerances)"

    # 2. DiT fixtures end to end on this device, per attention backend.
    for path in (p for p in paths if harness.fixture_kind(p) == "dit"):
        _dit_on_device(harness, harness.load_fixture(path), ctx.device, out)

    # 3. Turbo VAE fixtures through the CUDA kernels in bf16 (on a CPU step 1 covers them in fp32).
    if ctx.cuda:
        for path in (p for p in paths if harness.fixture_kind(p) == "turbovae"):
            _turbovae_on_cuda(harness, harness.load_fixture(path), ctx.device, out)
    if any(harness.fixture_kind(p) == "loop" for p in paths):
        out.notes.append("loop_* fixtures: CPU reference check only (their DiT kernels are the dit_* cases')")
    return out


@torch.no_grad()
def _dit_on_device(harness: ModuleType, fx, device: torch.device, out: Outcome) -> None:
    tol = fx.recommended
    model = build_from_fixture(fx.config, fx.weights()).to(device)
    inputs = [fx[key].to(device) for key in ("in.video", "in.audio", "in.text")]
    key = "out_fused" if "out_fused.video" in fx else "out"  # local attention: one masked softmax per query
    want = torch.cat([fx[f"{key}.video"].flatten(), fx[f"{key}.audio"].flatten()])
    sdpa_figure = fx.tolerance.get("kernel_sensitivity_end_to_end", {}).get("attention_torch_sdpa_bf16")
    if sdpa_figure:
        out.measured[f"{fx.name} fixture's SDPA figure"] = {k: sdpa_figure[k] for k in ("max_abs", "rel_rms")}
    for backend in device_backends(device):
        label = f"{fx.name}/{backend}" + ("+flex" if device.type == "cuda" and model.config.local_attn_layers else "")
        model.set_attention_backend(backend)
        try:
            video, audio = model(*inputs)
        except Exception as exc:  # one kernel failing must not hide the other backends' numbers
            out.failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        got = torch.cat([video.flatten(), audio.flatten()]).cpu()
        out.at_most(f"{label} max_abs", harness.max_abs(got, want), tol["out_atol"])
        out.at_most(f"{label} rel_rms", harness.rel_rms(got, want), tol["out_rel_rms"])


@torch.no_grad()
def _turbovae_on_cuda(harness: ModuleType, fx, device: torch.device, out: Outcome) -> None:
    tol = fx.recommended
    config = TurboVAEConfig.from_dict(fx.config)
    model = turbo_vae_from_state_dict(config, fx.weights(), fx.path.name, device=device, dtype=torch.bfloat16)
    got = model.decode(fx["in.latent"].to(device)).float().cpu()
    want = fx["out.video"]
    out.at_most(f"{fx.name}/cuda-bf16 max_abs", harness.max_abs(got, want), tol["bf16_atol"])
    out.at_most(f"{fx.name}/cuda-bf16 rel_rms", harness.rel_rms(got, want), tol["bf16_rel_rms"])
