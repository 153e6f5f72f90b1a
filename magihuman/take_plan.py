"""Long takes as a plan of windows: pure arithmetic, no models.

A window that continues the previous one repeats its last F = 4(K−1)+1 frames (K pinned latent frames), so
every window adds a multiple of 4 frames and frames, audio latents and the take's length agree (README: Long takes).

```
shot 0, T = 230, N ≤ 101, K = 1 (F = 1):
  window 0  frames [  0, 77)          keeps [  0, 77)
  window 1  frames [ 76, 153)  pins 76, keeps [ 77, 153)
  window 2  frames [152, 233)  pins 152, keeps [153, 230), trims 3
```
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from magihuman.config import FPS, MAX_SECONDS, decoded_frames, latent_frames, latents_for_frames

MAX_TAKE_SECONDS = 120  # a recording or a scene up to two minutes
MAX_WINDOW_FRAMES = decoded_frames(latent_frames(MAX_SECONDS))  # 249: the longest clip one call makes
WINDOW_FRAMES = 101  # ~4 s, the reference's examples: long enough to keep seams few
MAX_SHOTS = 24
WINDOW_SEED_STRIDE = 2**34  # window w draws from seed + w·stride: above the seed range and the SR offset (2**32)


@dataclass(frozen=True)
class Shot:
    """One shot of a scene: its own prompt (None: the take's prompt) and length in frames."""

    frames: int
    prompt: str | None = None


@dataclass(frozen=True)
class Window:
    """One model call of a take. Global frame numbers; `frames` = 4m+1 = its audio latents."""

    index: int
    shot: int
    start: int  # global frame of its frame 0
    frames: int
    overlap: int  # frames repeated from the previous window (0: a fresh start from the portrait)
    keep: int  # frames it adds to the take: [start + overlap, start + overlap + keep)
    seed: int
    prompt: str | None = None  # None: the take's prompt
    reset: bool = False  # pinned to the portrait, not to the previous window (TakeSettings.reset_every): a cut

    @property
    def latents(self) -> int:
        return latents_for_frames(self.frames)

    @property
    def pinned_latents(self) -> int:
        """K: latent frames carried from the previous window (0 for a fresh start)."""
        return 0 if self.overlap == 0 else (self.overlap - 1) // 4 + 1

    @property
    def first_new(self) -> int:
        return self.start + self.overlap


@dataclass(frozen=True)
class TakePlan:
    frames: int  # T, the take's length
    windows: tuple[Window, ...]
    overlap_latents: int  # K of continuing windows

    @property
    def seconds(self) -> float:
        return self.frames / FPS

    @property
    def generated_frames(self) -> int:
        """Frames (= audio latents) of the stitched stream before the last window's surplus is trimmed."""
        last = self.windows[-1]
        return last.start + last.frames

    def to_json(self, **extra) -> str:
        """The plan (and `extra` facts measured while it ran) as the JSON stored beside the take."""
        return json.dumps({"frames": self.frames, "seconds": self.seconds, **asdict(self), **extra}, indent=1)


def window_seed(seed: int, index: int) -> int:
    """Window w's own seed, so one window can be re-made without the others (window 0 keeps the take's seed)."""
    return seed + index * WINDOW_SEED_STRIDE


def plan_take(
    shots: Sequence[Shot],
    *,
    seed: int,
    window_frames: int = WINDOW_FRAMES,
    overlap_latents: int = 1,
    loudness: Sequence[float] | None = None,
    reset_every: int = 0,
) -> TakePlan:
    """Windows for `shots` in a row, balanced within a shot (no short last window). With `loudness` (per frame,
    e.g. the recording's RMS) every join moves up to 12 frames to where it is quietest: joins fall in pauses.
    `reset_every` M > 0: every M-th window of a shot starts again from the portrait (same frames, a cut)."""
    if not shots:
        raise ValueError("a take needs at least one shot")
    if reset_every < 0 or (reset_every and overlap_latents != 1):
        raise ValueError(f"reset_every must be 0 or, with overlap_latents 1, a window count; got {reset_every}")
    if not (window_frames - 1) % 4 == 0 or not 5 <= window_frames <= MAX_WINDOW_FRAMES:
        raise ValueError(f"window_frames must be 4m+1 in 5..{MAX_WINDOW_FRAMES}, got {window_frames}")
    units_max = (window_frames - 1) // 4  # 4-frame units after frame 0 of a fresh window
    if not 1 <= overlap_latents < units_max:
        raise ValueError(f"overlap_latents must be 1..{units_max - 1} for {window_frames}-frame windows")
    overlap = 4 * (overlap_latents - 1) + 1
    windows: list[Window] = []
    shot_start = 0
    for shot_index, shot in enumerate(shots):
        if shot.frames < 1:
            raise ValueError(f"shot {shot_index + 1} has {shot.frames} frames")
        units_per_window = _balanced_units(shot.frames, units_max, overlap_latents)
        if loudness is not None:
            caps = [units_max] + [units_max - (overlap_latents - 1)] * (len(units_per_window) - 1)
            units_per_window = _snap_joins(units_per_window, caps, shot_start, loudness)
        for j, units in enumerate(units_per_window):
            if j == 0:
                start, frames, pinned = shot_start, 4 * units + 1, 0
            else:
                prev = windows[-1]
                start, frames, pinned = prev.start + prev.frames - overlap, overlap + 4 * units, overlap
            reset = reset_every > 0 and j > 0 and j % reset_every == 0
            windows.append(
                Window(len(windows), shot_index, start, frames, pinned, frames - pinned, 0, shot.prompt, reset)
            )
        # The shot's last window may run past its end by up to 3 frames: trim them.
        last = windows[-1]
        surplus = last.start + last.frames - (shot_start + shot.frames)
        windows[-1] = Window(**{**asdict(last), "keep": last.keep - surplus})
        shot_start += shot.frames
    windows = [Window(**{**asdict(w), "seed": window_seed(seed, w.index)}) for w in windows]
    return TakePlan(shot_start, tuple(windows), overlap_latents)


def extend_plan(
    plan: TakePlan, shot: Shot, *, seed: int, new_shot: bool, window_frames: int = WINDOW_FRAMES
) -> TakePlan:
    """`plan` continued by `shot` (or a fresh one, `new_shot`); in the same shot the last window gets back the
    surplus frames it trimmed (they are made already)."""
    if shot.frames < 1:
        raise ValueError(f"an extension needs at least one frame, not {shot.frames}")
    if new_shot:
        more = plan_take([shot], seed=seed, window_frames=window_frames, overlap_latents=plan.overlap_latents)
        shot_index, count = plan.windows[-1].shot + 1, len(plan.windows)
        added = [
            replace(
                w,
                index=w.index + count,
                shot=shot_index,
                start=w.start + plan.frames,
                seed=window_seed(seed, w.index + count),
            )
            for w in more.windows
        ]
        return TakePlan(plan.frames + shot.frames, plan.windows + tuple(added), plan.overlap_latents)
    pinned = plan.overlap_latents
    overlap = 4 * (pinned - 1) + 1
    last = plan.windows[-1]
    last = replace(last, keep=last.frames - last.overlap)
    made = last.start + last.frames  # frames the take has once the last window's surplus is back
    total = plan.frames + shot.frames
    units = max(math.ceil((total - made) / 4), 0)
    per_window = (window_frames - 1) // 4 - (pinned - 1)
    windows = [*plan.windows[:-1], last]
    count = math.ceil(units / per_window)
    for j in range(count):
        prev = windows[-1]
        adds = units // count + (1 if j < units % count else 0)
        frames = overlap + 4 * adds
        windows.append(
            Window(
                len(windows),
                last.shot,
                prev.start + prev.frames - overlap,
                frames,
                overlap,
                frames - overlap,
                window_seed(seed, len(windows)),
                shot.prompt,
            )
        )
    end = windows[-1]
    windows[-1] = replace(end, keep=end.keep - (end.start + end.frames - total))
    return TakePlan(total, tuple(windows), pinned)


def _balanced_units(frames: int, units_max: int, overlap_latents: int) -> list[int]:
    """4-frame units per window of one shot: the first window has 1 + 4·u0 frames, the others add 4·u each;
    as few windows as fit, the units spread evenly (the first takes any remainder it can hold)."""
    units = math.ceil((frames - 1) / 4)
    if units <= units_max:
        return [units]
    per_continuation = units_max - (overlap_latents - 1)
    count = 1 + math.ceil((units - units_max) / per_continuation)
    first = min(units_max, max(math.ceil(units / count), units - (count - 1) * per_continuation))
    rest = units - first
    base, extra = divmod(rest, count - 1)
    return [first] + [base + (1 if i < extra else 0) for i in range(count - 1)]


SNAP_UNITS = 3  # a join moves by at most 3 × 4 frames = 0.48 s


def _snap_joins(units: list[int], caps: list[int], shot_start: int, loudness: Sequence[float]) -> list[int]:
    """Move each join (frame shot_start + 1 + 4·(u0 + … + uj)) by whole units to the quietest nearby frames,
    trading units between its two windows."""
    units = list(units)
    made = 0  # units of the windows before j
    for j in range(len(units) - 1):
        options = []
        for shift in range(-SNAP_UNITS, SNAP_UNITS + 1):
            here, there = units[j] + shift, units[j + 1] - shift
            if 1 <= here <= caps[j] and 1 <= there <= caps[j + 1]:
                join = shot_start + 1 + 4 * (made + here)
                around = loudness[max(join - 2, 0) : join + 2]
                options.append((sum(around) / max(len(around), 1), abs(shift), shift))
        best = min(options)
        unshifted = next(score for score, _, shift in options if shift == 0)
        shift = best[2] if best[0] <= 0.5 * unshifted else 0  # only a clearly quieter spot is worth a move
        units[j], units[j + 1] = units[j] + shift, units[j + 1] - shift
        made += units[j]
    return units


# --- Shots as the request's JSON field ---


def parse_shots(text: str | None) -> list[Shot] | None:
    """The request's `shots` JSON as shots (None when empty); ValueError with a message for the user."""
    if text is None or not text.strip():
        return None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f'shots must be a JSON list like [{{"prompt": "...", "seconds": 5}}]: {exc}') from None
    if not isinstance(items, list) or not items:
        raise ValueError('shots must be a non-empty JSON list like [{"prompt": "...", "seconds": 5}]')
    if len(items) > MAX_SHOTS:
        raise ValueError(f"a scene has at most {MAX_SHOTS} shots; this one has {len(items)}")
    shots = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or set(item) - {"prompt", "seconds"}:
            raise ValueError(f'shot {number} must be an object with "seconds" and optionally "prompt"')
        seconds, prompt = item.get("seconds"), item.get("prompt")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 1 <= seconds <= MAX_TAKE_SECONDS:
            raise ValueError(f"shot {number} must last 1 to {MAX_TAKE_SECONDS} seconds, not {seconds!r}")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ValueError(f"shot {number}'s prompt must be a non-empty text (or left out: the take's prompt)")
        shots.append(Shot(round(seconds * FPS), prompt.strip() if prompt else None))
    total = sum(shot.frames for shot in shots) / FPS
    if total > MAX_TAKE_SECONDS:
        raise ValueError(f"the shots last {total:g} s together; a take is at most {MAX_TAKE_SECONDS} s")
    return shots
