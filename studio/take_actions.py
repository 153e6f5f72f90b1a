"""What the studio does with a long take's kept windows (magihuman.take_state): **Resume** a take stopped with
Stop, **Continue this take** by some seconds (optionally a new prompt or a new shot), and **Re-roll window N**
with another seed. Each runs through the same job path as Generate (studio.gpu, studio.jobs: progress, Stop, the
live pieces) and adds a new take to the history.

A stopped take's state reaches the handler on the "Stopped" gr.Error (studio.jobs.user_error). A state that is
replaced, evicted or cleared has its folder deleted, so a take nobody resumes leaves no files.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING

import gradio as gr

from magihuman.config import FPS, REQUEST_LIMITS
from magihuman.take_plan import MAX_TAKE_SECONDS
from magihuman.take_state import TakeState

if TYPE_CHECKING:
    from studio.handlers import Studio
    from studio.history import StoredTake

SESSIONS_KEPT = 32  # like the takes store: API clients that never resume must not fill the disk
STOP_WAIT_S = 10.0  # after Stop, how long the page waits for the job to hand over its stopped take
NOTHING_TO_RESUME = "No stopped take to resume: Stop a long take while it renders, then Resume it."


class StoppedTakes:
    """The latest stopped long take of each session (thread-safe)."""

    def __init__(self, session_of: Callable[[gr.Request | None], str], capacity: int = SESSIONS_KEPT) -> None:
        self._session_of, self.capacity = session_of, capacity
        self._states: OrderedDict[str, TakeState] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, request: gr.Request | None, state: TakeState | None) -> None:
        """Keep `state` as the session's stopped take; the one it replaces, or evicts, is deleted."""
        if state is None:
            return
        session = self._session_of(request)
        with self._lock:
            dropped = [self._states.pop(session, None)]
            self._states[session] = state
            while len(self._states) > self.capacity:
                dropped.append(self._states.popitem(last=False)[1])
        for old in dropped:
            if old is not None and old.folder != state.folder:
                shutil.rmtree(old.folder, ignore_errors=True)

    def get(self, request: gr.Request | None) -> TakeState | None:
        with self._lock:
            return self._states.get(self._session_of(request))

    def pop(self, request: gr.Request | None) -> TakeState | None:
        """The session's stopped take, now the caller's (to resume, or to `keep` again)."""
        with self._lock:
            return self._states.pop(self._session_of(request), None)

    def clear(self) -> None:
        with self._lock:
            states, self._states = list(self._states.values()), OrderedDict()
        for state in states:
            shutil.rmtree(state.folder, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._states)


def describe(state: TakeState | None) -> str:
    if state is None:
        return ""
    windows = len(state.plan.windows)
    return f"A stopped take ({state.done} of {windows} windows made, {state.plan.seconds:g} s) can be resumed."


class TakeActions:
    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def resume(self, request: gr.Request = None, progress: gr.Progress = gr.Progress()):
        """Finish the long take this client stopped (with Stop), from the windows it had made: the same take
        an uninterrupted run makes. Returns what /generate returns."""
        studio = self.studio
        gpu_resume = self._gpu_function("gpu_resume")
        state = studio.stopped.pop(request)
        if state is None:
            raise gr.Error(NOTHING_TO_RESUME)
        try:
            return self._new_take(request, progress, gpu_resume(state))
        except BaseException as exc:
            if getattr(exc, "take_state", None) is None:  # not stopped again (that keeps the new state): retry later
                studio.stopped.keep(request, state)
            raise

    def continue_take(
        self,
        take_id: str,
        seconds: int = 5,
        prompt: str | None = None,
        new_shot: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """A new take: a long take of /generate continued by some seconds, in the same shot or a new one. Returns
        what /generate returns.

        Args:
            take_id: the take_id of a long take (made window by window)
            seconds: how many seconds more (whole, the take at most 120 s in all)
            prompt: the prompt of the new seconds (empty: the take's)
            new_shot: start them as a new shot from the portrait (no carried frame)
        """
        stored = self._long_take(take_id)
        number = _whole(seconds, "The seconds to add")
        if number < 1:
            raise gr.Error(f"Continue a take by 1 second or more, not {number}.")
        if stored.take.request.audio:
            raise gr.Error("A take that follows a recording ends with it: make a new take with a longer recording.")
        total = stored.take.plan.frames / FPS
        if total + number > MAX_TAKE_SECONDS:
            raise gr.Error(
                f"The take lasts {total:g} s; {number} s more would pass the {MAX_TAKE_SECONDS}-s limit of a take."
            )
        job = self._gpu_function("gpu_continue_take")(stored.take, number, (prompt or "").strip() or None, new_shot)
        return self._new_take(request, progress, job)

    def reroll_window(
        self,
        take_id: str,
        window: int = 1,
        seed: int | None = None,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """A new take: a long take of /generate with one window made again from another seed, the other windows'
        frames kept. Returns what /generate returns.

        Args:
            take_id: the take_id of a long take (made window by window)
            window: the window to make again, 1 to the take's number of windows (its details list them)
            seed: the window's new seed (empty: random)
        """
        stored = self._long_take(take_id)
        number = _whole(window, "The window")
        count = len(stored.take.plan.windows)
        if not 1 <= number <= count:
            raise gr.Error(f"The take has windows 1 to {count}; there is no window {number}.")
        new_seed = None if seed is None or seed == "" else _whole(seed, "The seed")
        if new_seed is not None and not 0 <= new_seed <= REQUEST_LIMITS.max_seed:
            raise gr.Error(f"A seed is 0 to {REQUEST_LIMITS.max_seed}, not {new_seed}.")
        job = self._gpu_function("gpu_reroll_window")(stored.take, number - 1, new_seed)
        return self._new_take(request, progress, job)

    def stopped_now(self, request: gr.Request = None) -> str:
        return describe(self.studio.stopped.get(request))

    def stopped_status(self, request: gr.Request = None) -> str:
        """The Resume line after Stop: waits (bounded) for the stopping job to hand over its state."""
        deadline = time.monotonic() + STOP_WAIT_S
        while self.studio.stopped.get(request) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return describe(self.studio.stopped.get(request))

    def _long_take(self, take_id: str) -> StoredTake:
        self.studio._require_engine()
        stored = self.studio.takes.get(take_id or "")
        if stored is None:
            raise gr.Error("No such take: select a long take in the history (the latest 32 takes are kept).")
        if stored.take.plan is None:
            raise gr.Error("Only a long take (made window by window) can be continued or re-rolled.")
        return stored

    def _gpu_function(self, name: str):
        function = getattr(self.studio.gpu_functions, name, None)
        if function is None:
            raise gr.Error("Resume, continue and re-roll are not available with engine replicas.")
        return function

    def _new_take(self, request: gr.Request | None, progress: gr.Progress, job):
        studio = self.studio
        studio.live.begin(request)
        try:
            result = studio._run(request, progress, job)
        finally:
            studio.live.finish(request)
        take_id = studio.takes.add(result)
        return studio._answer(take_id, studio.takes.get(take_id), result.sr_resolution)


def _whole(value, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise gr.Error(f"{what} must be a whole number, not {str(value)[:40]!r}.") from None
    if isinstance(value, bool) or not number.is_integer():
        raise gr.Error(f"{what} must be a whole number, not {str(value)[:40]!r}.")
    return int(number)


def layout(p: SimpleNamespace) -> None:
    with gr.Accordion("Long take: resume, continue, re-roll", open=False, elem_id="take-actions"):
        p.resume_note = gr.Markdown(elem_id="resume-note")
        p.resume = gr.Button("Resume the stopped take", elem_id="resume")
        with gr.Row():
            p.continue_seconds = gr.Number(
                5, label="Seconds more", minimum=1, maximum=MAX_TAKE_SECONDS, precision=0, elem_id="continue-seconds"
            )
            p.continue_new_shot = gr.Checkbox(False, label="As a new shot", elem_id="continue-new-shot")
        p.continue_prompt = gr.Textbox(label="Prompt of the new seconds (empty: the take's)", lines=2)
        p.continue_take = gr.Button("Continue this take", elem_id="continue-take")
        with gr.Row():
            p.reroll_window = gr.Number(1, label="Window", minimum=1, precision=0, elem_id="reroll-window")
            p.reroll_seed = gr.Number(None, label="New seed (empty: random)", precision=0, elem_id="reroll-seed")
        p.reroll = gr.Button("Re-roll this window", elem_id="reroll")


def wire(p: SimpleNamespace, studio: Studio, generate, answer: list, remember: dict, listing: dict, gpu_job: dict):
    """The three API events and the Resume line; returns the events Stop cancels."""
    actions = studio.actions
    private = {"api_visibility": "private"}

    def live_begin(request: gr.Request):  # as Generate does (studio.live.wire), before the job's own event
        studio.live.begin(request)
        return None, gr.update(active=True)

    for button in (p.resume, p.continue_take, p.reroll):
        button.click(live_begin, outputs=[p.live, p.live_timer], queue=False, **private)
    events = [
        p.resume.click(actions.resume, None, answer, api_name="resume", **gpu_job),
        p.continue_take.click(
            actions.continue_take,
            [p.take_id, p.continue_seconds, p.continue_prompt, p.continue_new_shot],
            answer,
            api_name="continue_take",
            **gpu_job,
        ),
        p.reroll.click(
            actions.reroll_window,
            [p.take_id, p.reroll_window, p.reroll_seed],
            answer,
            api_name="reroll_window",
            **gpu_job,
        ),
    ]
    for event in events:
        event.success(**remember, **private).then(**listing, **private)
        event.success(lambda: gr.update(interactive=True), outputs=p.upscale, **private)
    for event in (generate, *events):
        event.then(actions.stopped_now, None, p.resume_note, **private)
    p.stop.click(actions.stopped_status, None, p.resume_note, **private)
    return events
