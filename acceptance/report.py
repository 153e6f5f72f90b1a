"""The report files: `report.json` (everything, for tools) and `report.md` (a table to paste into the README).

Both are rewritten after every check through a temporary file and an atomic rename, so a reader (or a run
killed mid-write) never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acceptance.runner import Run

STATUS_MARK = {"passed": "passed", "failed": "**FAILED**", "skipped": "skipped"}


def write_report(out_dir: Path, run: Run) -> None:
    data = run.to_json()
    _write_atomic(out_dir / "report.json", json.dumps(_finite(data), indent=2, ensure_ascii=False) + "\n")
    _write_atomic(out_dir / "report.md", markdown(data))


def markdown(data: dict[str, Any]) -> str:
    """report.md from the JSON form of a run."""
    summary = data["summary"]
    if data["finished"]:
        state = f"finished {data['finished']}"
    elif data["running"]:
        state = f"still running or cut short during `{data['running']}`"
    else:
        state = "still running or cut short"
    lines = [
        "# GPU acceptance report",
        "",
        f"- device: {data['device']}; torch {data['host'].get('torch', '?')}, Python {data['host'].get('python', '?')}",
        f"- command: `{data['command']}`",
        f"- started {data['started']}, {state}; {data['elapsed_s']:.0f} s of a {data['budget_s']:.0f} s budget",
        f"- {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped"
        + (f"; not yet run: {', '.join(data['pending'])}" if data["pending"] else ""),
        "",
        "| check | status | reason | measured | tolerance | expected s | actual s |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for r in data["checks"]:
        cells = [
            f"{r['name']}",
            STATUS_MARK[r["status"]],
            r["reason"],
            format_values(r["measured"]),
            format_values(r["tolerance"]),
            f"{r['expected_s']:.0f}",
            f"{r['actual_s']:.1f}",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    for r in data["checks"]:
        if r["table"] or r["notes"]:
            lines += ["", f"## {r['name']}: {r['title']}", ""]
            lines += [f"- {note}" for note in r["notes"]]
            if r["table"]:
                lines += ["", r["table"].rstrip()] if r["notes"] else [r["table"].rstrip()]
    return "\n".join(lines) + "\n"


def format_values(values: dict[str, Any], prefix: str = "") -> str:
    """`name=value` pairs, nested dicts flattened with dots, numbers to 4 significant digits."""
    parts = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            inner = format_values(value, f"{name}.")
            if inner:
                parts.append(inner)
        else:
            parts.append(f"{name}={format_number(value)}")
    return "; ".join(parts)


def format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers become the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
