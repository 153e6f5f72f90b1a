"""The takes of a studio: kept on the server (the latest 32, under unguessable ids), listed in the browser.

Two halves, because a browser's history must never name a server file:

- `TakeStore` (server): id -> `StoredTake`; adding the 33rd take drops the oldest and deletes its folder.
- history records (browser, in `gr.BrowserState`): the take id and the gallery caption's facts. Everything else
  is looked up by id, so a record edited in the browser can at most name another, equally unguessable, id.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import av
from PIL import Image

from magihuman.engine import Result, Take
from magihuman.errors import InputError
from magihuman.media import read_video_frames

CAPACITY = 32
EXCERPT_CHARS = 60


@dataclass
class StoredTake:
    take: Take
    number: int  # 1, 2, ... in the order takes were made on this server: "Take 3"
    timings: dict[str, float]
    poster: Path | None
    sr_videos: dict[str, Path] = field(default_factory=dict)  # "540p" / "1080p" -> mp4

    @property
    def base_video(self) -> Path:
        return self.take.base_video_path

    def best_video(self) -> tuple[Path, str]:
        """The highest-resolution mp4 of the take and its resolution name."""
        for name in ("1080p", "540p"):
            if name in self.sr_videos:
                return self.sr_videos[name], name
        return self.base_video, "256p"

    def files(self) -> list[Path]:
        return [self.base_video, *self.sr_videos.values()]

    def label(self) -> str:
        r = self.take.request
        return f"Take {self.number} · seed {r.seed}"


class TakeStore:
    """The most recent takes under unguessable ids, so later requests (upscale, select, compare) can use them."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._takes: OrderedDict[str, StoredTake] = OrderedDict()
        self._lock = threading.Lock()
        self._made = 0

    def add(self, result: Result, take_id: str | None = None) -> str:
        take_id = take_id or secrets.token_urlsafe(12)
        stored = StoredTake(result.take, 0, dict(result.timings), poster_frame(result.video_path))
        if result.sr_video_path is not None and result.sr_resolution is not None:
            stored.sr_videos[result.sr_resolution] = result.sr_video_path
        with self._lock:
            self._made += 1
            stored.number = self._made
            self._takes[take_id] = stored
            while len(self._takes) > self.capacity:
                _, old = self._takes.popitem(last=False)
                shutil.rmtree(old.take.folder, ignore_errors=True)
        return take_id

    def add_upscale(self, take_id: str, result: Result) -> StoredTake | None:
        with self._lock:
            stored = self._takes.get(take_id)
            if stored is not None and result.sr_video_path is not None and result.sr_resolution is not None:
                stored.sr_videos[result.sr_resolution] = result.sr_video_path
                stored.timings = {**stored.timings, **{f"upscale {k}": v for k, v in result.timings.items()}}
            return stored

    def get(self, take_id: str | None) -> StoredTake | None:
        if not isinstance(take_id, str):
            return None
        with self._lock:
            stored = self._takes.get(take_id)
            if stored is not None:
                self._takes.move_to_end(take_id)
            return stored

    def remove(self, take_id: str) -> None:
        with self._lock:
            stored = self._takes.pop(take_id, None)
        if stored is not None:
            shutil.rmtree(stored.take.folder, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._takes)

    def clear(self) -> None:
        with self._lock:
            for stored in self._takes.values():
                shutil.rmtree(stored.take.folder, ignore_errors=True)
            self._takes.clear()


def poster_frame(video: Path) -> Path | None:
    """The clip's first frame as a JPEG next to it (the gallery's thumbnail); None if it cannot be read."""
    poster = video.with_suffix(".jpg")
    try:
        (first,) = read_video_frames(video, max_frames=1)
        Image.fromarray(first).save(poster, quality=85)
    except (OSError, InputError, av.error.FFmpegError):
        return None
    return poster


def record(take_id: str, stored: StoredTake) -> dict:
    """What the browser keeps of a take: its id and the gallery caption's facts (no paths)."""
    r = stored.take.request
    prompt = " ".join(r.prompt.split())
    excerpt = prompt if len(prompt) <= EXCERPT_CHARS else prompt[: EXCERPT_CHARS - 1] + "…"
    return {
        "id": take_id,
        "number": stored.number,
        "prompt": excerpt,
        "seed": r.seed,
        "base_model": r.base_model,
        "steps": r.steps,
        "resolution": stored.best_video()[1],
        "seconds": round(sum(v for k, v in stored.timings.items() if not k.startswith("upscale")), 1),
    }


def caption(rec: dict) -> str:
    score = rec.get("score")
    scored = f" · score {score:.0f}" if isinstance(score, int | float) and not isinstance(score, bool) else ""
    return (
        f"#{rec.get('number')} · seed {rec.get('seed')} · {rec.get('base_model')} {rec.get('steps')} steps · "
        f"{rec.get('resolution')} · {rec.get('seconds')} s{scored} — {rec.get('prompt')}"
    )


def clean_history(history) -> list[dict]:
    """The browser's list as sent (untrusted): only dicts with a string id, newest first, at most CAPACITY."""
    if not isinstance(history, list):
        return []
    seen: set[str] = set()
    kept = []
    for rec in history:
        if isinstance(rec, dict) and isinstance(rec.get("id"), str) and rec["id"] not in seen:
            seen.add(rec["id"])
            kept.append(rec)
    return kept[:CAPACITY]


def with_take(history, take_id: str, stored: StoredTake) -> list[dict]:
    return [record(take_id, stored)] + [rec for rec in clean_history(history) if rec["id"] != take_id][: CAPACITY - 1]
