"""What the studio keeps between requests: the engine slot (loaded in the background) and the GPU time budget.

No gradio import here: the app wires these into events, the tests use them directly.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from magihuman.config import RESOLUTIONS
from magihuman.engine import Engine


@dataclass(frozen=True)
class EngineStatus:
    state: str  # "loading", "ready" or "failed"
    message: str
    seconds: float  # since loading started


class EngineSlot:
    """Loads the engine in a background thread so the page is up at once; a failure is kept as the status (the
    process stays up and the UI shows it)."""

    def __init__(self, load: Callable[[Callable[[str], None]], Engine]) -> None:
        self._load = load
        self._engine: Engine | None = None
        self._status = EngineStatus("loading", "starting", 0.0)
        self._started = time.perf_counter()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-loader", daemon=True)

    @classmethod
    def ready(cls, engine: Engine) -> EngineSlot:
        slot = cls(lambda status: engine)
        slot._engine, slot._status = engine, EngineStatus("ready", "ready", 0.0)
        slot._ready.set()
        return slot

    def start(self) -> EngineSlot:
        if not self._ready.is_set() and not self._thread.is_alive():
            self._thread.start()
        return self

    def load_now(self) -> EngineSlot:
        """Load in the calling thread (ZeroGPU emulates CUDA only in the thread that imported spaces)."""
        if not self._ready.is_set() and not self._thread.is_alive():
            self._started = time.perf_counter()
            self._run()
        return self

    def _run(self) -> None:
        try:
            engine = self._load(self._set_message)
        except Exception as exc:  # shown to the user; the traceback goes to the log
            traceback.print_exc()
            self._status = EngineStatus("failed", f"{type(exc).__name__}: {exc}", self._elapsed())
        else:
            self._engine = engine
            last = self._status.message
            self._status = EngineStatus("ready", f"ready in {self._elapsed():.0f} s ({last})", self._elapsed())
        finally:
            self._ready.set()

    def _set_message(self, line: str) -> None:
        print(f"[engine {self._elapsed():6.1f} s] {line}", flush=True)  # the log keeps every step, with times
        self._status = EngineStatus("loading", line, self._elapsed())

    def _elapsed(self) -> float:
        return time.perf_counter() - self._started

    @property
    def status(self) -> EngineStatus:
        status = self._status
        if status.state == "loading":
            return EngineStatus("loading", status.message, self._elapsed())
        return status

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def engine(self) -> Engine | None:
        return self._engine


def gpu_seconds(resolution: str, seconds: int, steps: int, base_model: str, sr_steps: int) -> int:
    """A generous ZeroGPU time budget for one job: per-step costs measured against the published H100
    timings (256p: 8 steps ≈ 1.5 s incl. decode; 540p SR ≈ 6 s; 1080p SR ≈ 35 s, for 5 s clips), scaled by
    duration and steps, doubled for CFG, plus fixed time for text encoding and muxing, times a safety factor."""
    scale = max(seconds, 1) / 5
    base = 0.19 * steps * (2 if base_model == "base" else 1)
    sr = RESOLUTIONS[resolution].zerogpu_seconds_per_sr_step * sr_steps
    return int(20 + 3 * scale * (base + sr + 2))
