"""A long take's carried state on disk (`windows/003.pt`; `rerolled/003.pt`: a re-rolled window's earlier state):
resume after Stop, several GPU calls, continue, re-roll one window (README: Long takes).

Window files never change (a re-roll or a continuation hard-links them into a new take's folder). Nothing else
is carried: the portrait and recording are encoded again (the latter from the take's seed, so identically) and
the mp4 re-decoded from the latents (cheap, and bit-exact), so a resumed take equals an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from magihuman.config import FPS, REQUEST_LIMITS
from magihuman.errors import InputError
from magihuman.take_plan import MAX_TAKE_SECONDS, Shot, TakePlan, extend_plan

if TYPE_CHECKING:
    from magihuman.engine import GenerationRequest, Take
    from magihuman.long_take import TakeSettings

WINDOWS, REROLLED = "windows", "rerolled"


@dataclass(frozen=True)
class WindowLatents:
    """One window's final base latents (CPU), kept with the take for the SR stage and the next window."""

    prompt: str
    video: torch.Tensor  # (1, 48, L, h, w)
    audio: torch.Tensor  # (1, N, 64)
    colour_distance: float | None = None  # ΔE of the carried frame from the portrait, before anchoring
    seam: torch.Tensor | None = None  # (1, 3, 1, H, W) in [−1, 1]: the frame a continuing window starts from


def window_path(folder: Path, index: int, kind: str = WINDOWS) -> Path:
    return Path(folder) / kind / f"{index:03d}.pt"


def save_window(folder: Path, index: int, latents: WindowLatents) -> None:
    """Write window `index`'s state; a half-written file never takes the name (a stopped run leaves none)."""
    path = window_path(folder, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {name: getattr(latents, name) for name in WindowLatents.__dataclass_fields__}
    partial = path.with_suffix(".partial")
    torch.save(fields, partial)
    os.replace(partial, path)


def load_window(folder: Path, index: int, kind: str = WINDOWS) -> WindowLatents:
    path = window_path(folder, index, kind)
    if not path.exists():
        raise FileNotFoundError(f"window {index + 1} of the take in {folder} was not kept ({path} is missing)")
    return WindowLatents(**torch.load(path, map_location="cpu", weights_only=True, mmap=True))


class StoredWindows(Sequence[WindowLatents]):
    """A take's windows, read from disk when asked for (memory-mapped), so a 2-minute take holds none in memory."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder, self.count = Path(folder), count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(f"window {index} of {self.count}")
        return load_window(self.folder, index % self.count)

    def __iter__(self) -> Iterator[WindowLatents]:
        return (self[i] for i in range(self.count))

    def __reduce__(self):  # pickled (to or from a ZeroGPU worker) as its folder, not its tensors
        return StoredWindows, (self.folder, self.count)


@dataclass(frozen=True)
class TakeState:
    """An unfinished long take: the windows still to make (`todo`, ascending); the others' state is in
    `folder/windows`. Picklable (paths, no tensors). From `Engine.plan_take`, a stop
    (`GenerationCancelled.take_state`), `extend` or `reroll`; run by `Engine.advance_take` / `finish_take`."""

    request: GenerationRequest
    plan: TakePlan
    folder: Path
    todo: tuple[int, ...]

    @property
    def done(self) -> int:
        return len(self.plan.windows) - len(self.todo)


def extend(
    take: Take,
    seconds: int,
    settings: TakeSettings,
    output_root: Path,
    *,
    prompt: str | None = None,
    new_shot: bool = False,
) -> TakeState:
    """ "Continue this take": `seconds` more, in the same shot or (`new_shot`) a new one from the portrait."""
    request = take.request
    if request.audio:
        raise InputError("a take that follows a recording ends with it; make a new take with a longer recording")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise InputError(f"continue a take by a whole number of seconds (1 or more), not {seconds!r}")
    plan = _plan_of(take)
    if plan.frames + seconds * FPS > MAX_TAKE_SECONDS * FPS:
        raise InputError(
            f"the take lasts {plan.seconds:g} s; {seconds} s more would pass the {MAX_TAKE_SECONDS}-s limit of a take"
        )
    prompt = prompt.strip() if prompt and prompt.strip() else None
    if prompt is not None and len(prompt) > REQUEST_LIMITS.max_prompt_chars:
        raise InputError(f"the prompt has {len(prompt)} characters; the limit is {REQUEST_LIMITS.max_prompt_chars}")
    longer = extend_plan(
        plan, Shot(seconds * FPS, prompt), seed=take.seed, new_shot=new_shot, window_frames=settings.window_frames
    )
    # The last window's state is kept; only its kept frames (given back its trimmed surplus) change.
    folder = _new_folder(take, output_root, range(len(plan.windows)))
    todo = tuple(range(len(plan.windows), len(longer.windows)))
    return TakeState(replace(request, seconds=math.ceil(longer.seconds), shots=None), longer, folder, todo)


def reroll(take: Take, window: int, output_root: Path, seed: int | None = None) -> TakeState:
    """Window `window` (0-based) made again with `seed` (None: a random one), the other windows kept."""
    plan = _plan_of(take)
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window < len(plan.windows):
        raise InputError(f"the take has windows 1 to {len(plan.windows)}; there is no window {window + 1}")
    if seed is None:
        seed = random.SystemRandom().randint(0, REQUEST_LIMITS.max_seed)
    if not 0 <= seed <= REQUEST_LIMITS.max_seed:
        raise InputError(f"a seed is 0 to {REQUEST_LIMITS.max_seed}, not {seed}")
    windows = list(plan.windows)
    windows[window] = replace(windows[window], seed=seed)
    folder = _new_folder(take, output_root, [i for i in range(len(windows)) if i != window])
    old = window_path(folder, window, REROLLED)
    old.parent.mkdir()
    _link(window_path(take.folder, window), old)
    return TakeState(take.request, replace(plan, windows=tuple(windows)), folder, (window,))


def _plan_of(take: Take) -> TakePlan:
    if take.plan is None:
        raise InputError("only a long take (made window by window) can be continued or re-rolled")
    return take.plan


def _new_folder(take: Take, output_root: Path, kept: Sequence[int]) -> Path:
    """A new take's folder holding (as hard links: the files never change) the given windows of `take`."""
    folder = Path(tempfile.mkdtemp(prefix="take-", dir=output_root))
    (folder / WINDOWS).mkdir()
    for index in kept:
        _link(window_path(take.folder, index), window_path(folder, index))
    return folder


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)
