"""The GPU functions of long takes: a take made over several ZeroGPU calls, and resume, continue and re-roll
(studio.take_actions). Each call's duration counts only the windows it makes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import spaces

from magihuman.config import FPS
from magihuman.engine import Result, Take
from magihuman.take_plan import WINDOW_FRAMES, Shot, extend_plan
from magihuman.take_state import TakeState
from studio.jobs import Piece, Progress, stream
from studio.slot import bound_engine
from studio.space import GPU_SIZE, take_call_seconds, take_calls


def take_in_calls(state: TakeState) -> Iterator[Progress | Result]:
    """A new long take on ZeroGPU, over several GPU calls of bounded duration (studio.space.take_calls)."""
    calls = take_calls(state.plan, state.request)  # the quota counts the whole take, before any call
    for count in calls[:-1]:
        with closing(_gpu_advance_take(state, count)) as call:  # a Stop closes the running call too
            for item in call:
                if isinstance(item, TakeState):
                    state = item
                else:
                    yield item
    yield from _gpu_finish_take(state)


def _advance_seconds(state: TakeState, count: int) -> int:
    return take_call_seconds(state.plan, state.request, state.todo[:count], False)


def _finish_seconds(state: TakeState) -> int:
    return take_call_seconds(state.plan, state.request, state.todo, True)


@spaces.GPU(duration=_advance_seconds, size=GPU_SIZE)
def _gpu_advance_take(state: TakeState, count: int) -> Iterator[Progress | TakeState]:
    """One call of a long take: `count` more windows, stored beside it; Progress items, then the new state."""
    engine = bound_engine()
    yield from stream(lambda report, cancel: engine.advance_take(state, count, on_progress=report, cancel=cancel))


@spaces.GPU(duration=_finish_seconds, size=GPU_SIZE)
def _gpu_finish_take(state: TakeState) -> Iterator[Progress | Result]:
    """The last call of a long take: its last windows, the mp4 and SR; Progress items, then the Result."""
    engine = bound_engine()
    yield from stream(lambda report, cancel: engine.finish_take(state, on_progress=report, cancel=cancel))


# Resume, continue and re-roll (studio.take_actions) run in one GPU call each, not split like a new long take:
# on ZeroGPU a resume of many windows, or a continue by many seconds, can ask for more than MAX_CALL_S and is
# then refused by the platform (make the take shorter, or on a dedicated GPU).


def gpu_resume(state: TakeState) -> Iterator[Progress | Piece | Result]:
    """Finish a stopped long take (its kept windows stay): Progress and Piece items, then the Result."""
    yield from _gpu_finish_take(state)


def _continue_seconds(take: Take, seconds: int, prompt: str | None, new_shot: bool) -> int:
    longer = extend_plan(
        take.plan, Shot(seconds * FPS, prompt), seed=take.seed, new_shot=new_shot, window_frames=WINDOW_FRAMES
    )
    return take_call_seconds(longer, take.request, range(len(take.plan.windows), len(longer.windows)), True)


def _reroll_seconds(take: Take, window: int, seed: int | None) -> int:
    return take_call_seconds(take.plan, take.request, (window,), True)


@spaces.GPU(duration=_continue_seconds, size=GPU_SIZE)
def gpu_continue_take(take: Take, seconds: int, prompt: str | None, new_shot: bool) -> Iterator[Progress | Result]:
    """A long take continued by `seconds` (a new take beside it, its windows linked): Progress, then the Result."""
    engine = bound_engine()
    yield from stream(
        lambda report, cancel: engine.continue_take(take, seconds, prompt, new_shot, on_progress=report, cancel=cancel)
    )


@spaces.GPU(duration=_reroll_seconds, size=GPU_SIZE)
def gpu_reroll_window(take: Take, window: int, seed: int | None) -> Iterator[Progress | Result]:
    """A long take with window `window` (0-based) made again from `seed`: Progress, then the Result."""
    engine = bound_engine()
    yield from stream(lambda report, cancel: engine.reroll(take, window, seed, on_progress=report, cancel=cancel))
