"""Running named checks against a time budget, and writing their report as they finish.

A `Check` is a name, an expected duration and a function `run(context) -> Outcome`. The runner starts the
checks in the given order, skips a check whose expected seconds exceed what is left of the budget (later,
cheaper checks may still run), turns `Skip` and missing third-party modules into `skipped` and any other
exception into `failed`, and rewrites the report after every check. The outcome of a check is `failed` when
any measured number broke its bound (`Outcome.failures`), else `passed`.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch

from acceptance.report import write_report
from magihuman.timing import synchronize

Status = Literal["passed", "failed", "skipped"]
# A missing module of ours is a bug, not a missing dependency.
OUR_PACKAGES = ("magihuman", "studio", "tests", "acceptance")


class Skip(Exception):  # noqa: N818  (raised to say "skipped", not an error condition)
    """Raised by a check that cannot run here; the message is the reason shown in the report."""


@dataclass
class Context:
    """What a check may use: the device, a scratch folder for its files, the time left in the budget, and the
    `outcome` to fill (a fresh one per check: numbers recorded before an exception still reach the report)."""

    device: torch.device
    work_dir: Path
    deadline: float  # on `clock`'s scale
    clock: Callable[[], float] = time.perf_counter
    outcome: Outcome = field(default_factory=lambda: Outcome())

    def seconds_left(self) -> float:
        return self.deadline - self.clock()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Outcome:
    """What a check measured, the bounds it held them to, and which bounds were broken."""

    measured: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # context for the reader (e.g. "random weights")
    table: str | None = None  # optional Markdown table for report.md (e.g. the speed table for the README)

    def at_most(self, name: str, value: float, limit: float) -> None:
        """Record `value` under `name` with the bound `≤ limit`; NaN or a larger value is a failure."""
        self.measured[name] = value
        self.tolerance[name] = f"<= {limit:g}"
        if not value <= limit:  # also catches NaN
            self.failures.append(f"{name} = {_short(value)} > {limit:g}")

    def at_least(self, name: str, value: float, limit: float) -> None:
        self.measured[name] = value
        self.tolerance[name] = f">= {limit:g}"
        if not value >= limit:
            self.failures.append(f"{name} = {_short(value)} < {limit:g}")

    def require(self, name: str, ok: bool, detail: str = "") -> None:
        """A yes/no property (e.g. "no recompiles"); `detail` explains a failure."""
        self.measured[name] = bool(ok)
        self.tolerance[name] = "true"
        if not ok:
            self.failures.append(f"{name}: {detail}" if detail else f"{name} is false")


@dataclass(frozen=True)
class Check:
    """One named check. `expected_s` is its expected wall time on one H100/H200 (from a cold process, including
    its compiles), `expected_cpu_s` on a CPU; `needs_cuda` checks are skipped without starting off CUDA."""

    name: str
    title: str
    run: Callable[[Context], Outcome]
    expected_s: float
    expected_cpu_s: float = 0.0
    needs_cuda: bool = False
    cpu_skip_reason: str = ""  # why a `needs_cuda` check is not run on a CPU, beyond "no CUDA"

    def expected_on(self, device: torch.device) -> float:
        return self.expected_s if device.type == "cuda" else self.expected_cpu_s


@dataclass
class CheckResult:
    name: str
    title: str
    status: Status
    reason: str
    measured: dict[str, Any]
    tolerance: dict[str, Any]
    expected_s: float
    actual_s: float
    notes: list[str] = field(default_factory=list)
    table: str | None = None
    error: str | None = None  # traceback of an unexpected exception


@dataclass
class Run:
    """The whole run as the report shows it."""

    command: str
    device: str
    budget_s: float
    started: str
    results: list[CheckResult] = field(default_factory=list)
    running: str | None = None  # the check in progress (what a killed run was doing)
    pending: list[str] = field(default_factory=list)
    finished: str | None = None
    elapsed_s: float = 0.0
    host: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(r.status == "failed" for r in self.results)

    def to_json(self) -> dict[str, Any]:
        counts = {s: sum(r.status == s for r in self.results) for s in ("passed", "failed", "skipped")}
        data = asdict(self)
        data["checks"] = data.pop("results")
        return {**data, "summary": counts}


def run_checks(
    checks: Sequence[Check],
    device: torch.device,
    out_dir: Path,
    budget_s: float,
    command: str = "",
    clock: Callable[[], float] = time.perf_counter,
) -> Run:
    """Run `checks` in order within `budget_s` seconds, rewriting `out_dir`/report.{json,md} after each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = clock()
    run = Run(
        command=command,
        device=describe_device(device),
        budget_s=budget_s,
        started=_now(),
        pending=[c.name for c in checks],
        host={"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
    )
    context = Context(device, out_dir / "work", start + budget_s, clock)
    write_report(out_dir, run)
    for check in checks:
        run.pending.remove(check.name)
        run.running = check.name
        write_report(out_dir, run)
        run.results.append(run_one(check, context))
        run.running = None
        run.elapsed_s = clock() - start
        write_report(out_dir, run)
    run.finished = _now()
    write_report(out_dir, run)
    return run


def run_one(check: Check, context: Context) -> CheckResult:
    """Run one check (or decide not to start it) and classify what happened."""
    expected = check.expected_on(context.device)

    def result(
        status: Status, reason: str, outcome: Outcome | None = None, seconds: float = 0.0, error: str | None = None
    ) -> CheckResult:
        outcome = outcome or Outcome()
        return CheckResult(
            check.name,
            check.title,
            status,
            reason,
            outcome.measured,
            outcome.tolerance,
            expected,
            round(seconds, 2),
            outcome.notes,
            outcome.table,
            error,
        )

    if check.needs_cuda and context.device.type != "cuda":
        reason = "needs CUDA (none available here)"
        return result("skipped", f"{reason}; {check.cpu_skip_reason}" if check.cpu_skip_reason else reason)
    left = context.seconds_left()
    if expected > left:
        return result("skipped", f"budget: expected {expected:.0f} s, {max(left, 0):.0f} s left")

    started = context.clock()
    context.outcome = partial = Outcome()
    try:
        outcome = check.run(context)
    except Skip as skip:
        return result("skipped", str(skip), partial, context.clock() - started)
    except ModuleNotFoundError as missing:
        name = missing.name or str(missing)
        if name.split(".")[0] in OUR_PACKAGES:
            return result("failed", f"ModuleNotFoundError: {missing}", partial, context.clock() - started)
        return result("skipped", f"needs {name} (not installed)", partial, context.clock() - started)
    except Exception as exc:  # a broken check must not stop the others: it is reported as failed
        seconds = context.clock() - started
        reason = f"{type(exc).__name__}: {exc}"[:500]
        return result("failed", reason, partial, seconds, error=traceback.format_exc())
    finally:
        _free_memory(context.device)
    seconds = context.clock() - started
    if outcome.failures:
        return result("failed", "; ".join(outcome.failures), outcome, seconds)
    return result("passed", "within tolerance" if outcome.tolerance else "ran", outcome, seconds)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB) × {torch.cuda.device_count()}"
    return f"CPU ({platform.processor() or platform.machine()}, {_cpu_count()} cores)"


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        try:
            synchronize(device)
            torch.cuda.empty_cache()
        except RuntimeError:  # a broken context (e.g. after a device-side assert): the next check reports it
            pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _short(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def child_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a fresh `python -m acceptance...` process: the repository root on PYTHONPATH, so that it
    imports this checkout (and `studio`) wherever the command was started."""
    env = dict(os.environ if environ is None else environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def command_line() -> str:
    return " ".join(["python -m acceptance", *sys.argv[1:]])
