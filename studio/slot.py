"""The engine the GPU functions run on: a module global, so a forked ZeroGPU worker inherits it and nothing
pickles it."""

from __future__ import annotations

import gradio as gr

from magihuman.engine import Engine
from studio.runtime import EngineSlot

_slot: EngineSlot | None = None


def bind_slot(slot: EngineSlot) -> None:
    """The slot the GPU functions read their engine from (a ZeroGPU worker inherits it with the fork)."""
    global _slot
    _slot = slot


def ready_engine(slot: EngineSlot) -> Engine:
    """The slot's engine, or a `gr.Error` saying that it failed to load (with the cause) or is still loading."""
    status = slot.status
    if status.state == "failed":
        raise gr.Error(f"The engine failed to load: {status.message}", print_exception=False)
    if slot.engine is None:
        raise gr.Error(f"The engine is still loading ({status.message}); try again in a moment.")
    return slot.engine


def bound_engine() -> Engine:
    """The bound slot's engine (what every GPU function runs on), or a `gr.Error` saying why there is none."""
    if _slot is None:
        raise gr.Error("No engine is bound to the GPU functions (studio.slot.bind_slot).")
    return ready_engine(_slot)
