"""Seeing a long take while it renders: each finished window's own mp4 plays in the page, in order, while the
next windows are still being made.

Pieces (`studio.jobs.Piece`) travel in the job stream with the progress, so they also cross from a ZeroGPU
worker; a `gr.Timer` polls them while a job runs. The compare player gets the whole take at the end, as usual.

As in `studio.player`, the template is static and the value reaches the page only through DOM properties
(`video.src` for same-origin file URLs, `textContent`): nothing from a value is parsed as HTML.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.data_classes import FileData, GradioModel

from studio.jobs import Piece

POLL_S = 0.5  # how often a page with a running job asks for new pieces
SESSIONS_KEPT = 64  # API clients never collect their pieces: keep only the latest sessions' lists

TEMPLATE = """<div class="lt-root lt-empty">
  <p class="lt-status"></p>
  <video class="lt-video" playsinline preload="auto" controls></video>
</div>"""
CSS = """.lt-root { padding: 8px; border: 1px dashed #f97316; border-radius: 12px; }
.lt-root.lt-empty { display: none; }
.lt-status { margin: 0 0 6px; font-size: 0.9em; }
.lt-video { display: block; width: 100%; max-height: 50vh; background: #000; border-radius: 8px; }
"""
JS = """
const root = element.querySelector(".lt-root");
const video = element.querySelector(".lt-video");
const status = element.querySelector(".lt-status");
let urls = [];
let count = 0;
let done = false;
let current = -1; // the piece in the video
let waiting = false; // the current piece ended before the next one arrived

// Same rule as the compare player: only files this app serves from its cache.
function servedUrl(file) {
  if (!file || typeof file.url !== "string") return null;
  try {
    const url = new URL(file.url, window.location.href);
    return url.origin === window.location.origin && url.pathname.includes("/gradio_api/file=") ? url.href : null;
  } catch (error) {
    return null;
  }
}

function describe() {
  const playing = current >= 0 ? `Playing window ${current + 1}` : "Rendering";
  const made = done ? `all ${count} windows rendered: the whole take is in the player below`
                    : `${urls.length} of ${count} windows rendered, the rest on the way`;
  status.textContent = `${playing} · ${made}`;
  root.dataset.rendered = String(urls.length);
  root.dataset.count = String(count);
  root.dataset.current = String(current + 1);
  root.dataset.done = String(done);
}

function show(index) {
  current = index;
  waiting = false;
  video.src = urls[index];
  video.play().catch(() => {}); // a browser that refuses autoplay leaves it to the play button
}

function load() {
  const value = props.value && typeof props.value === "object" ? props.value : {};
  const pieces = (Array.isArray(value.pieces) ? value.pieces : []).map(servedUrl);
  if (!pieces.length || pieces.includes(null)) {
    urls = [];
    current = -1;
    count = 0;
    done = false;
    delete root.dataset.rendered;
    video.pause();
    video.removeAttribute("src");
    video.load();
    root.classList.add("lt-empty");
    return;
  }
  const fresh = pieces[0] !== urls[0]; // another take
  urls = pieces;
  count = Number(value.count) || urls.length;
  done = Boolean(value.done);
  root.classList.remove("lt-empty");
  if (fresh) show(0);
  else if (waiting && current + 1 < urls.length) show(current + 1);
  describe();
}

video.addEventListener("ended", () => {
  if (current + 1 < urls.length) show(current + 1);
  else waiting = true;
  describe();
});
load();
watch("value", load);
"""


class LiveValue(GradioModel):
    """The widget's value; empty `pieces`: hidden."""

    pieces: list[FileData] = []
    count: int = 0
    done: bool = False


class LiveTake(gr.HTML):
    """The pieces of the take being rendered, played back to back (hooks: `#live-take`, `.lt-video`, and the
    root's `data-rendered`, `data-count`, `data-current`, `data-done`)."""

    data_model = LiveValue

    def __init__(self, value: dict[str, Any] | None = None, *, elem_id: str | None = "live-take", **kwargs: Any):
        super().__init__(
            value=value,
            html_template=TEMPLATE,
            css_template=CSS,
            js_on_load=JS,
            apply_default_css=False,
            elem_id=elem_id,
            **kwargs,
        )

    def postprocess(self, value: dict[str, Any] | LiveValue | None) -> dict[str, Any]:  # type: ignore[override]
        if value is None:
            return LiveValue().model_dump()
        if isinstance(value, LiveValue):
            return value.model_dump()
        pieces = [FileData(path=str(path), orig_name=str(path).rsplit("/", 1)[-1]) for path in value["pieces"]]
        return LiveValue(pieces=pieces, count=value["count"], done=value["done"]).model_dump()

    def preprocess(self, payload: LiveValue | None) -> dict[str, Any] | None:  # type: ignore[override]
        if payload is None:
            return None
        return {"pieces": [p.path for p in payload.pieces], "count": payload.count, "done": payload.done}

    def api_info(self) -> dict[str, Any]:
        return gr.components.Component.api_info(self)

    def example_payload(self) -> Any:
        return LiveValue().model_dump()

    def example_value(self) -> Any:
        return LiveValue().model_dump()


@dataclass
class _Job:
    pieces: list[Piece] = field(default_factory=list)
    shown: int = 0  # pieces the page already has
    finished: bool = False
    told: bool = False  # the page has had the finished value


class LivePieces:
    """The pieces of each session's latest generate job (thread-safe: the job's handler adds, the timer reads)."""

    def __init__(self, session_of: Callable[[gr.Request | None], str]) -> None:
        self._session_of = session_of
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, _Job] = OrderedDict()

    def begin(self, request: gr.Request | None) -> None:
        """A job of this session starts (or is about to: Generate was clicked): forget its last take."""
        session = self._session_of(request)
        with self._lock:
            self._jobs[session] = _Job()
            self._jobs.move_to_end(session)
            while len(self._jobs) > SESSIONS_KEPT:
                self._jobs.popitem(last=False)

    def add(self, request: gr.Request | None, piece: Piece) -> None:
        with self._lock:
            self._jobs.setdefault(self._session_of(request), _Job()).pieces.append(piece)

    def finish(self, request: gr.Request | None) -> None:
        with self._lock:
            self._jobs.setdefault(self._session_of(request), _Job()).finished = True

    def poll(self, request: gr.Request | None):
        """(widget value, timer update): `gr.skip()` when unchanged; once the job ends, done once, timer off."""
        with self._lock:
            job = self._jobs.get(self._session_of(request))
            if job is None:
                return gr.skip(), gr.update(active=False)
            if job.finished and job.told:
                return gr.skip(), gr.update(active=False)
            if not job.finished and job.shown == len(job.pieces):
                return gr.skip(), gr.skip()
            pieces, done = list(job.pieces), job.finished
            job.shown, job.told = len(pieces), done
        value = {"pieces": [p.path for p in pieces], "count": pieces[0].count, "done": done} if pieces else None
        return value, (gr.update(active=False) if done else gr.skip())


def layout(p) -> None:
    p.live = LiveTake(label="Live take")
    p.live_timer = gr.Timer(POLL_S, active=False)


def wire(p, studio) -> None:
    """Before Generate's own event (so that it runs first): clear the widget and start the timer."""
    private = {"api_visibility": "private"}

    def begin(request: gr.Request):
        studio.live.begin(request)
        return None, gr.update(active=True)

    p.generate.click(begin, outputs=[p.live, p.live_timer], queue=False, **private)
    p.live_timer.tick(studio.live.poll, outputs=[p.live, p.live_timer], queue=False, **private)
