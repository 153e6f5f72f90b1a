"""Check 7, context parallelism over several GPUs (per-forward scaling for CP 2/4/8 and CP vs one GPU on an
8-step latent). The multi-GPU engine is built separately: this check lights up when its package exists
(`magihuman.distributed`, or `magihuman.parallel`), provides `acceptance_check(context) -> Outcome`, and more
than one GPU is visible."""

from __future__ import annotations

import importlib
import importlib.util

import torch

from magihuman.acceptance.runner import Context, Outcome, Skip

MODULES = ("magihuman.distributed", "magihuman.parallel")  # the multi-GPU issue's package, under either name


def check_context_parallel(ctx: Context) -> Outcome:
    module = next((name for name in MODULES if importlib.util.find_spec(name) is not None), None)
    if module is None:
        raise Skip(f"context parallel not available in this build (no {' or '.join(MODULES)})")
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    if gpus < 2:
        raise Skip(f"needs N>1 GPUs (found {gpus})")
    entry = getattr(importlib.import_module(module), "acceptance_check", None)
    if entry is None:
        raise Skip(f"{module} has no acceptance_check(context) yet")
    return entry(ctx)
