"""`python -m acceptance`: parse the flags, pick the checks, run them, exit 1 if any failed."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from acceptance.runner import Check, command_line, run_checks
from magihuman.options import default_device

DEFAULT_OUT = "acceptance-report"
DEFAULT_BUDGET_S = 480.0


def main(argv: list[str] | None = None, checks: Sequence[Check] | None = None) -> int:
    """Returns the exit status: 0 when no check failed (skips are not failures), 1 otherwise."""
    if checks is None:
        from acceptance.registry import CHECKS

        checks = CHECKS
    parser = argparse.ArgumentParser(
        prog="python -m acceptance",
        description="Run the GPU acceptance checks and write DIR/report.json and DIR/report.md as they finish.",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"report folder (default: {DEFAULT_OUT}/)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help="no check starts whose expected seconds exceed what is left (default: %(default)g)",
    )
    parser.add_argument("--only", help=f"comma-separated check names: {', '.join(c.name for c in checks)}")
    parser.add_argument("--list", action="store_true", help="list the checks with their expected seconds and exit")
    args = parser.parse_args(argv)

    if args.list:
        for c in checks:
            where = "CUDA" if c.needs_cuda else f"CUDA {c.expected_s:.0f} s / CPU {c.expected_cpu_s:.0f} s"
            print(f"{c.name:<17} {c.expected_s:>5.0f} s  {c.title} ({where})")
        return 0
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in {c.name for c in checks}]
        if unknown:
            parser.error(f"unknown check(s) {unknown}; choose from {', '.join(c.name for c in checks)}")
        checks = [c for c in checks if c.name in wanted]  # registry order, not the order given

    # No network and no hub: everything is random weights or local fixtures.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    device = torch.device(default_device())
    out_dir = Path(args.out)
    run = run_checks(checks, device, out_dir, args.budget_s, command=command_line())
    for r in run.results:
        print(f"{r.name:<17} {r.status:<8} {r.actual_s:>7.1f} s  {r.reason}")
    print(f"report: {out_dir / 'report.md'} and {out_dir / 'report.json'}")
    return 1 if run.failed else 0
