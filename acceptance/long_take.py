"""`long_take`: seconds of work per second of output for a 60-second take at 256p and with SR to 540p, made
window by window by the whole engine (full size, random weights), against issue 20's goals on one H100
(arithmetic from the published timings: 256p in <= 30 s, 540p in <= 100 s).

It runs `python -m magihuman.bench --long-take 60` in a fresh process: the engine writes mp4s, so that process
needs the engine's own dependencies (av, diffusers), which the other full-size checks avoid.
"""

from __future__ import annotations

import re
import subprocess
import sys

from acceptance.runner import Context, Outcome, child_env
from magihuman.bench.long_take import LONG_TAKE_RTF_GOALS

TAKE_SECONDS = 60
LINE = re.compile(r"long take (\d+) s at (\w+): ([\d.]+) s in (\d+) windows, real-time factor ([\d.]+)")


def check_long_take(ctx: Context) -> Outcome:
    out = ctx.outcome
    resolutions = ",".join(LONG_TAKE_RTF_GOALS)
    command = [sys.executable, "-m", "magihuman.bench", "--model", "full", "--resolutions", resolutions]
    command += ["--long-take", str(TAKE_SECONDS), "--warmup", "1", "--iters", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(ctx.seconds_left(), 1), env=child_env())
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command[1:])}` failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    found = [LINE.search(line) for line in done.stdout.splitlines()]
    for match in filter(None, found):
        _, resolution, seconds, windows, factor = match.groups()
        out.measured[f"{resolution} take s"] = float(seconds)
        out.measured[f"{resolution} windows"] = int(windows)
        out.measured[f"{resolution} real-time factor"] = float(factor)
        out.measured[f"{resolution} vs goal"] = float(factor) / LONG_TAKE_RTF_GOALS[resolution]
    out.require("a line per resolution", all(f"{r} real-time factor" in out.measured for r in LONG_TAKE_RTF_GOALS))
    out.notes.append(
        f"a {TAKE_SECONDS}-s take of generated speech per resolution, random weights, the app's speed defaults; "
        "goals (real-time factor): " + ", ".join(f"{r} <= {g:.2f}" for r, g in LONG_TAKE_RTF_GOALS.items())
    )
    return out
