"""`python -m acceptance`: the CPU run as CI sees it, and the runner's budget, statuses and report
(with small synthetic checks, which test the runner rather than stand in for the engine)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acceptance.cli import main
from acceptance.registry import CHECKS
from acceptance.runner import Check, Context, Outcome, Skip, run_checks
from acceptance.zerogpu import executable_stack
from tests.golden_checks import golden_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_CHECKS = ("environment", "golden", "fp8_linear", "flex_window")
RESULT_FIELDS = {"name", "status", "reason", "measured", "tolerance", "expected_s", "actual_s"}


def _strict_json(path: Path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------------------------------------------------
# 1. The command on a CPU
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("acceptance")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU run, also on a machine with a GPU
    done = subprocess.run(
        [sys.executable, "-m", "acceptance", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, out


def test_cpu_run_exits_0_and_writes_both_reports(cpu_run) -> None:
    done, out = cpu_run
    assert done.returncode == 0, done.stdout + done.stderr
    report = _strict_json(out / "report.json")
    assert report["finished"] and not report["pending"]
    assert [c["name"] for c in report["checks"]] == [c.name for c in CHECKS]
    assert (out / "report.md").read_text().startswith("# GPU acceptance report")


def test_cpu_run_skips_every_cuda_check_with_a_reason_and_passes_the_cpu_checks(cpu_run) -> None:
    _, out = cpu_run
    results = {c["name"]: c for c in _strict_json(out / "report.json")["checks"]}
    for check in CHECKS:
        result = results[check.name]
        if check.needs_cuda:
            assert result["status"] == "skipped" and "needs CUDA" in result["reason"], result
    golden_present = golden_dir().is_dir()
    for name in CPU_CHECKS:
        expected = "passed" if name != "golden" or golden_present else "skipped"
        assert results[name]["status"] == expected, results[name]
    assert results["golden"]["measured"]["reference checks passed"] == "19/19" or not golden_present


def test_report_format(cpu_run) -> None:
    _, out = cpu_run
    report = _strict_json(out / "report.json")
    assert {"command", "device", "budget_s", "started", "finished", "elapsed_s", "summary", "checks"} <= set(report)
    assert sum(report["summary"].values()) == len(report["checks"])
    for result in report["checks"]:
        assert RESULT_FIELDS <= set(result)
        assert result["status"] in ("passed", "failed", "skipped")
        assert isinstance(result["measured"], dict) and isinstance(result["tolerance"], dict)
    fp8 = next(c for c in report["checks"] if c["name"] == "fp8_linear")
    assert 0.01 < fp8["measured"]["fp8 vs bf16 rel_rms"] < 0.045  # the e4m3 floor, not a placeholder
    assert fp8["tolerance"]["fp8 vs bf16 rel_rms"] == "<= 0.045"

    table = (out / "report.md").read_text().splitlines()
    header = "| check | status | reason | measured | tolerance | expected s | actual s |"
    start = table.index(header)
    rows = table[start + 2 : start + 2 + len(report["checks"])]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [c["name"] for c in report["checks"]]
    assert all(row.count(" | ") == 6 for row in rows)  # no cell broke the table


# ---------------------------------------------------------------------------------------------------------
# 2. The runner: budget, statuses, incremental report, exit status
# ---------------------------------------------------------------------------------------------------------


class FakeClock:
    """A clock the synthetic checks advance, so that the budget test needs no sleeping or timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def spends(clock: FakeClock, seconds: float, started: list[str], name: str):
    def run(ctx: Context) -> Outcome:
        started.append(name)
        clock.now += seconds
        return Outcome(measured={"spent s": seconds})

    return run


def test_a_check_that_would_overrun_the_budget_is_not_started(tmp_path) -> None:
    clock, started = FakeClock(), []
    checks = [
        Check("first", "", spends(clock, 4, started, "first"), expected_s=3, expected_cpu_s=3),
        Check("too_long", "", spends(clock, 1, started, "too_long"), expected_s=7, expected_cpu_s=7),
        Check("fits", "", spends(clock, 5, started, "fits"), expected_s=5, expected_cpu_s=5),
        Check("no_room", "", spends(clock, 0, started, "no_room"), expected_s=2, expected_cpu_s=2),
        Check("just_fits", "", spends(clock, 1, started, "just_fits"), expected_s=1, expected_cpu_s=1),
    ]
    run = run_checks(checks, torch.device("cpu"), tmp_path, budget_s=10, clock=clock)
    statuses = {r.name: (r.status, r.reason) for r in run.results}
    # 6 s were left for the 7-s check, 1 s for the 2-s one; a later, cheaper check still runs.
    assert started == ["first", "fits", "just_fits"]
    assert statuses["too_long"] == ("skipped", "budget: expected 7 s, 6 s left")
    assert statuses["no_room"] == ("skipped", "budget: expected 2 s, 1 s left")
    assert statuses["first"][0] == statuses["fits"][0] == statuses["just_fits"][0] == "passed"
    assert not run.failed


def test_budget_counts_actual_time_not_expected(tmp_path) -> None:
    clock, started = FakeClock(), []
    checks = [
        Check("slow", "", spends(clock, 9, started, "slow"), expected_s=2, expected_cpu_s=2),
        Check("next", "", spends(clock, 1, started, "next"), expected_s=2, expected_cpu_s=2),
    ]
    run = run_checks(checks, torch.device("cpu"), tmp_path, budget_s=10, clock=clock)
    assert started == ["slow"] and run.results[1].reason == "budget: expected 2 s, 1 s left"


def test_statuses_of_skips_missing_modules_errors_and_broken_bounds(tmp_path) -> None:
    def skip(ctx):
        raise Skip("needs N>1 GPUs (found 1)")

    def missing_dependency(ctx):
        import av_not_installed_anywhere  # noqa: F401

    def missing_module_of_ours(ctx):
        import magihuman.no_such_module  # noqa: F401

    def crash(ctx):
        ctx.outcome.measured["256p scope s"] = 2.5  # measured before the crash: kept in the report
        raise RuntimeError("CUDA error: an illegal memory access")

    def out_of_tolerance(ctx):
        out = Outcome()
        out.at_most("rel_rms", 0.3, 0.02)
        out.at_most("nan rel_rms", float("nan"), 0.02)
        out.at_least("TFLOP/s", 400.0, 100.0)
        return out

    checks = [
        Check(name, "", fn, 0)
        for name, fn in [
            ("skip", skip),
            ("missing_dependency", missing_dependency),
            ("missing_module_of_ours", missing_module_of_ours),
            ("crash", crash),
            ("out_of_tolerance", out_of_tolerance),
        ]
    ]
    checks.append(Check("cuda_only", "", out_of_tolerance, 0, needs_cuda=True, cpu_skip_reason="the 15B model"))
    run = run_checks(checks, torch.device("cpu"), tmp_path, budget_s=60)
    r = {x.name: x for x in run.results}
    assert (r["skip"].status, r["skip"].reason) == ("skipped", "needs N>1 GPUs (found 1)")
    assert r["missing_dependency"].status == "skipped"
    assert r["missing_dependency"].reason == "needs av_not_installed_anywhere (not installed)"
    assert r["missing_module_of_ours"].status == "failed"  # a bug of ours, not a missing dependency
    assert r["crash"].status == "failed" and "illegal memory access" in r["crash"].reason
    assert "RuntimeError" in r["crash"].error and r["crash"].measured == {"256p scope s": 2.5}
    assert r["out_of_tolerance"].status == "failed"
    assert r["out_of_tolerance"].reason == "rel_rms = 0.3 > 0.02; nan rel_rms = nan > 0.02"
    assert r["cuda_only"].status == "skipped" and r["cuda_only"].reason.endswith("the 15B model")
    report = _strict_json(tmp_path / "report.json")  # NaN written as a string, not as invalid JSON
    measured = next(c for c in report["checks"] if c["name"] == "out_of_tolerance")["measured"]
    assert measured["nan rel_rms"] == "nan" and measured["TFLOP/s"] == 400.0
    assert "**FAILED**" in (tmp_path / "report.md").read_text()


def test_the_report_is_on_disk_after_every_check(tmp_path) -> None:
    seen = {}

    def first(ctx):
        return Outcome(measured={"value": 1.5})

    def second(ctx):
        seen.update(_strict_json(tmp_path / "report.json"))  # what a run killed now would leave
        return Outcome()

    run_checks([Check("first", "", first, 0), Check("second", "", second, 0)], torch.device("cpu"), tmp_path, 60)
    assert [c["name"] for c in seen["checks"]] == ["first"] and seen["checks"][0]["measured"] == {"value": 1.5}
    assert seen["running"] == "second" and seen["pending"] == [] and seen["finished"] is None
    assert not list(tmp_path.glob(".*partial*"))  # atomic writes leave no temporary files


def test_exit_status_is_1_iff_a_check_failed_and_only_selects(tmp_path, capsys) -> None:
    def fails(ctx):
        out = Outcome()
        out.at_most("error", 1.0, 0.1)
        return out

    def passes(ctx):
        return Outcome()

    checks = [Check("fails", "", fails, 0), Check("passes", "", passes, 0)]
    assert main(["--out", str(tmp_path / "all")], checks=checks) == 1
    assert main(["--out", str(tmp_path / "one"), "--only", "passes"], checks=checks) == 0
    names = [c["name"] for c in _strict_json(tmp_path / "one" / "report.json")["checks"]]
    assert names == ["passes"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "bad"), "--only", "passes,nope"], checks=checks)
    assert exit_info.value.code == 2 and "nope" in capsys.readouterr().err


def test_default_budget_fits_the_gpu_checks_that_matter_most() -> None:
    # The default budget must cover the first eight checks on one GPU, with zerogpu and startup running when
    # earlier checks finish early.
    names = [c.name for c in CHECKS]
    first_eight = sum(c.expected_s for c in CHECKS if names.index(c.name) < 8)
    assert names[:8] == [
        "environment",
        "golden",
        "fp8_linear",
        "flex_window",
        "offload",
        "fp8_quality",
        "compiled",
        "pipeline",
    ]
    assert first_eight <= 480


# ---------------------------------------------------------------------------------------------------------
# 3. The ZeroGPU check's executable-stack reader
# ---------------------------------------------------------------------------------------------------------


def elf64(stack_flags: int | None) -> bytes:
    """A minimal little-endian ELF64 header with a LOAD program header and, unless None, a PT_GNU_STACK one."""
    headers = [(1, 5)] + ([] if stack_flags is None else [(0x6474E551, stack_flags)])
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, len(headers))  # e_phentsize, e_phnum
    table = b"".join(struct.pack("<II", kind, flags) + bytes(48) for kind, flags in headers)
    return bytes(header) + table


def test_executable_stack_reader() -> None:
    assert executable_stack(elf64(0x6)) is False  # RW stack
    assert executable_stack(elf64(0x7)) is True  # RWX stack: glibc ≥ 2.41 refuses to load it
    assert executable_stack(elf64(None)) is True  # no header: the loader assumes an executable stack
    with pytest.raises(ValueError):
        executable_stack(b"PK\x03\x04 not an ELF file")
    libraries = sorted((Path(torch.__file__).parent / "lib").glob("libc10*.so"))
    if libraries:  # a real library built with a non-executable stack
        assert executable_stack(libraries[0].read_bytes()) is False
