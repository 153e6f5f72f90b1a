"""A synced base-vs-super-resolution video player: `ComparePlayer`, a `gr.HTML` subclass.

Two `<video>` elements share one play/pause button, one scrub bar and one time readout. The second video
follows the first: play, pause and seeks are applied to both, and while playing a frame loop nudges its
playback rate (drift > 0.02 s) or re-seeks it (drift > 0.3 s). Only the first video is heard, so the two
soundtracks never echo. An A/B wipe view overlays them, the SR video clipped (CSS `clip-path`) to the right of
a draggable divider. With no SR video the base video plays alone under the same controls.

How files reach the browser: the value carries Gradio `FileData` objects built from local paths (never URLs).
After `postprocess`, Gradio's own output pipeline (`processing_utils.move_files_to_cache`) copies each file
into the app's cache, enforcing `allowed_paths` / `blocked_paths`, and fills in its URL
(`/gradio_api/file=...`, made absolute by the frontend). The JS plays only same-origin URLs on that route.

Why the template is static: Gradio 6 renders `html_template` by running Handlebars and then evaluating the
result as a JS template literal, so `${...}` inside even a Handlebars-escaped `{{value.label}}` executes, and
`${value.label}` inserts raw HTML. No value field ever enters the template here: the JS sets sources and
labels through DOM properties (`video.src`, `textContent`), so labels are shown as text, never parsed. A
static template also renders to the same string on every update, which Gradio skips, so the live `<video>`
elements and the state the JS sets on them survive value changes.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import FileData, GradioModel
from gradio_client import utils as client_utils

BASE_LABEL = "Base 256p"
SR_LABEL = "Super-resolution"
LABEL_MAX_CHARS = 40

TEMPLATE = """
<div class="cp-root cp-empty cp-single">
  <div class="cp-stage">
    <figure class="cp-pane cp-pane-a">
      <video class="cp-video-a" playsinline preload="auto"></video>
      <figcaption class="cp-label cp-label-a"></figcaption>
    </figure>
    <figure class="cp-pane cp-pane-b">
      <video class="cp-video-b" playsinline preload="auto" muted></video>
      <figcaption class="cp-label cp-label-b"></figcaption>
    </figure>
    <div class="cp-divider" role="slider" tabindex="0" aria-label="Wipe position"
         aria-valuemin="0" aria-valuemax="100" aria-valuenow="50">
      <svg class="cp-handle" viewBox="0 0 24 24" aria-hidden="true"><path d="M9 7l-5 5 5 5M15 7l5 5-5 5"/></svg>
    </div>
    <p class="cp-placeholder">No video yet</p>
  </div>
  <div class="cp-bar">
    <button type="button" class="cp-play" aria-label="Play">
      <svg class="cp-icon-play" viewBox="0 0 24 24" aria-hidden="true"><path d="M8 5v14l11-7z"/></svg>
      <svg class="cp-icon-pause" viewBox="0 0 24 24" aria-hidden="true"><path d="M6 5h4v14H6zm8 0h4v14h-4z"/></svg>
    </button>
    <input type="range" class="cp-seek" min="0" max="0" step="0.01" value="0" aria-label="Seek">
    <span class="cp-time">0:00.0 / 0:00.0</span>
    <button type="button" class="cp-mute" aria-label="Mute" aria-pressed="false">
      <svg viewBox="0 0 24 24" aria-hidden="true">
        <path class="cp-speaker" d="M4 9v6h4l5 4V5L8 9z"/>
        <path class="cp-waves" d="M16 8.5a4.5 4.5 0 0 1 0 7"/>
        <path class="cp-cross" d="M16.5 9.5l5 5m0-5l-5 5"/>
      </svg>
    </button>
    <button type="button" class="cp-mode" aria-pressed="false">A/B wipe</button>
  </div>
</div>
"""

CSS = """
.cp-root {
  --cp-split: 50%;
  --cp-accent: #f97316;
  padding: 10px;
  border: 1px solid #232936;
  border-radius: 14px;
  background: #0c0f15;
  color: #e6e8ee;
  font-family: ui-sans-serif, system-ui, sans-serif;
}
.cp-stage {
  --cp-fit: calc(70vh * var(--cp-aspect, 100));
  position: relative; display: grid; grid-template-columns: 1fr 1fr; gap: 10px;
  width: min(100%, calc(2 * var(--cp-fit) + 10px)); margin: 0 auto;
}
.cp-pane { position: relative; min-width: 0; margin: 0; overflow: hidden; border-radius: 10px; background: #000; }
/* Both boxes take a's shape, so an SR size rounded to other multiples still lines up with the base. */
.cp-pane video {
  display: block; width: 100%; max-height: 70vh; aspect-ratio: var(--cp-aspect, auto);
  object-fit: contain; background: #000;
}
.cp-label {
  position: absolute; top: 8px; left: 8px; max-width: calc(100% - 16px);
  padding: 3px 10px; border-radius: 999px; background: rgba(12, 15, 21, 0.72); color: #fff;
  font-size: 12px; font-weight: 600; letter-spacing: 0.02em; line-height: 18px;
  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; pointer-events: none;
}
.cp-label-b { background: var(--cp-accent); }
.cp-divider, .cp-placeholder { display: none; }

.cp-single .cp-stage, .cp-wipe .cp-stage { grid-template-columns: 1fr; width: min(100%, var(--cp-fit)); }
.cp-single .cp-pane-b, .cp-single .cp-mode { display: none; }
.cp-empty .cp-pane { display: none; }
.cp-empty .cp-placeholder {
  display: grid; place-items: center; width: 100%; aspect-ratio: 16 / 9; max-height: 320px; margin: 0;
  border-radius: 10px; background: #000; color: #7c8496; font-size: 14px;
}
.cp-empty .cp-bar { opacity: 0.45; pointer-events: none; }

.cp-wipe .cp-stage { cursor: ew-resize; touch-action: none; user-select: none; }
.cp-wipe .cp-pane-b {
  position: absolute; inset: 0; background: transparent; clip-path: inset(0 0 0 var(--cp-split));
}
.cp-wipe .cp-pane-b video { height: 100%; background: transparent; }
.cp-wipe .cp-label-b { left: auto; right: 8px; }
.cp-wipe .cp-divider {
  display: block; position: absolute; top: 0; bottom: 0; left: var(--cp-split); width: 2px;
  margin-left: -1px; background: #fff; box-shadow: 0 0 8px rgba(0, 0, 0, 0.6); outline: none;
}
.cp-handle {
  position: absolute; top: 50%; left: 50%; width: 30px; height: 30px; padding: 5px;
  transform: translate(-50%, -50%); border-radius: 50%; background: #fff; color: #0c0f15;
  box-shadow: 0 2px 10px rgba(0, 0, 0, 0.5); fill: none; stroke: currentColor; stroke-width: 2.5;
}
.cp-divider:focus-visible .cp-handle { box-shadow: 0 0 0 3px var(--cp-accent); }

.cp-bar {
  display: flex; align-items: center; gap: 10px; margin-top: 10px; padding: 6px 10px 6px 6px;
  border-radius: 10px; background: #161a23;
}
.cp-bar button {
  display: grid; place-items: center; flex: none; border: none; color: #e6e8ee; cursor: pointer;
  font: inherit;
}
.cp-bar svg { width: 20px; height: 20px; fill: currentColor; }
.cp-play { width: 36px; height: 36px; border-radius: 50%; background: var(--cp-accent); }
.cp-play:hover { filter: brightness(1.1); }
.cp-icon-pause, .cp-playing .cp-icon-play { display: none; }
.cp-playing .cp-icon-pause { display: block; }
.cp-mute { width: 32px; height: 32px; border-radius: 8px; background: transparent; }
.cp-mute:hover, .cp-mode:hover { background: #232936; }
.cp-waves, .cp-cross { fill: none; stroke: currentColor; stroke-width: 2; stroke-linecap: round; }
.cp-cross, .cp-muted .cp-waves { display: none; }
.cp-muted .cp-cross { display: inline; }
.cp-mode {
  padding: 6px 12px; border-radius: 8px; background: #1f2430; font-size: 12px; font-weight: 600;
  white-space: nowrap;
}
.cp-mode[aria-pressed="true"] { background: var(--cp-accent); }
.cp-time { flex: none; min-width: 88px; color: #a9b0bf; font-size: 12px; font-variant-numeric: tabular-nums; }
.cp-seek {
  flex: 1; min-width: 60px; height: 6px; margin: 0; border-radius: 999px; cursor: pointer;
  appearance: none; -webkit-appearance: none;
  background: linear-gradient(to right, var(--cp-accent) var(--cp-progress, 0%), #2c3342 var(--cp-progress, 0%));
}
.cp-seek::-webkit-slider-thumb {
  width: 14px; height: 14px; border: none; border-radius: 50%; background: #fff;
  box-shadow: 0 1px 4px rgba(0, 0, 0, 0.5); -webkit-appearance: none; appearance: none;
}
.cp-seek::-moz-range-thumb { width: 14px; height: 14px; border: none; border-radius: 50%; background: #fff; }
"""

JS = """
const q = (selector) => element.querySelector(selector);
const root = q(".cp-root");
const stage = q(".cp-stage");
const a = q(".cp-video-a");
const b = q(".cp-video-b");
const playButton = q(".cp-play");
const seek = q(".cp-seek");
const time = q(".cp-time");
const muteButton = q(".cp-mute");
const modeButton = q(".cp-mode");
const divider = q(".cp-divider");
// Seconds b may lag or lead before its playback rate is nudged: half a frame at 25 fps. (a's audio starts
// late: b's clock settles about 0.045 s, over a frame, ahead of a's, which a 0.05 s tolerance leaves alone.)
const DRIFT = 0.02;
const JUMP = 0.3; // beyond this b seeks instead of catching up
let hasB = false;
let split = 0.5;
let dragging = false;
let frame = 0;

// Play only files this app serves from its cache: same origin, Gradio's /gradio_api/file= route.
function servedUrl(file) {
  if (!file || typeof file.url !== "string") return null;
  try {
    const url = new URL(file.url, window.location.href);
    const ours = url.origin === window.location.origin && url.pathname.includes("/gradio_api/file=");
    return ours ? url.href : null;
  } catch (error) {
    return null;
  }
}

function setSource(video, url) {
  if (url) {
    if (video.src !== url) video.src = url;
  } else if (video.hasAttribute("src")) {
    video.removeAttribute("src");
    video.load();
  }
}

function clock(seconds) {
  const tenths = Math.floor((Number.isFinite(seconds) ? Math.max(seconds, 0) : 0) * 10);
  return `${Math.floor(tenths / 600)}:${((tenths % 600) / 10).toFixed(1).padStart(4, "0")}`;
}

function showTime() {
  const duration = Number.isFinite(a.duration) ? a.duration : 0;
  seek.max = String(duration);
  seek.value = String(a.currentTime);
  seek.style.setProperty("--cp-progress", duration ? `${(100 * a.currentTime) / duration}%` : "0%");
  time.textContent = `${clock(a.currentTime)} / ${clock(duration)}`;
}

// Keep b on a's clock: small drift is caught up through the playback rate, large drift by seeking.
function follow() {
  if (!hasB || a.paused || b.seeking) return;
  if (b.paused && !b.ended) b.play().catch(() => {});
  const drift = b.currentTime - a.currentTime;
  if (Math.abs(drift) > JUMP) {
    b.currentTime = a.currentTime;
    b.playbackRate = 1;
  } else {
    b.playbackRate = Math.abs(drift) > DRIFT ? 1 - 0.1 * Math.sign(drift) : 1;
  }
}

function tick() {
  showTime();
  follow();
  frame = a.paused ? 0 : requestAnimationFrame(tick);
}

function syncB() {
  b.pause();
  b.playbackRate = 1;
  if (hasB) b.currentTime = a.currentTime;
}

function play() {
  if (!a.hasAttribute("src")) return;
  if (a.ended) a.currentTime = 0;
  a.play().catch(() => {});
}

function pause() {
  a.pause();
  syncB();
}

const toggle = () => (a.paused ? play() : pause());

function seekTo(seconds) {
  a.currentTime = seconds;
  if (hasB) b.currentTime = seconds;
  showTime();
}

function setWipe(on) {
  const wipe = on && hasB;
  root.classList.toggle("cp-wipe", wipe);
  modeButton.setAttribute("aria-pressed", String(wipe));
  modeButton.textContent = wipe ? "Side by side" : "A/B wipe";
}

function setSplit(fraction) {
  split = Math.min(Math.max(fraction, 0), 1);
  root.style.setProperty("--cp-split", `${(100 * split).toFixed(1)}%`);
  divider.setAttribute("aria-valuenow", String(Math.round(100 * split)));
}

function dragTo(event) {
  const box = stage.getBoundingClientRect();
  setSplit((event.clientX - box.left) / box.width);
}

// The value is applied through DOM properties only: labels are text, sources are checked URLs.
function load() {
  const value = props.value && typeof props.value === "object" ? props.value : {};
  const urlA = servedUrl(value.a);
  const urlB = urlA ? servedUrl(value.b) : null;
  a.pause();
  hasB = Boolean(urlB);
  setSource(a, urlA);
  setSource(b, urlB);
  syncB();
  q(".cp-label-a").textContent = String(value.a_label ?? "");
  q(".cp-label-b").textContent = String(value.b_label ?? "");
  root.classList.toggle("cp-empty", !urlA);
  root.classList.toggle("cp-single", !hasB);
  if (!hasB) setWipe(false);
  showTime();
}

b.muted = true; // only a is heard: the same soundtrack twice would echo
playButton.addEventListener("click", toggle);
stage.addEventListener("click", () => {
  if (!root.classList.contains("cp-wipe")) toggle();
});
a.addEventListener("play", () => {
  root.classList.add("cp-playing");
  playButton.setAttribute("aria-label", "Pause");
  cancelAnimationFrame(frame);
  frame = requestAnimationFrame(tick);
});
a.addEventListener("playing", () => {
  if (hasB) b.play().catch(() => {});
});
a.addEventListener("pause", () => {
  root.classList.remove("cp-playing");
  playButton.setAttribute("aria-label", "Play");
  syncB();
  showTime();
});
for (const type of ["timeupdate", "durationchange", "loadedmetadata", "seeked", "emptied"]) {
  a.addEventListener(type, showTime);
}
a.addEventListener("loadedmetadata", () => {
  // The stage hugs the picture (no letterbox), so the wipe divider spans exactly the video.
  if (a.videoWidth && a.videoHeight) root.style.setProperty("--cp-aspect", String(a.videoWidth / a.videoHeight));
});
a.addEventListener("timeupdate", follow); // animation frames stop in background tabs; timeupdate does not
seek.addEventListener("input", () => seekTo(Number(seek.value)));
muteButton.addEventListener("click", () => {
  a.muted = !a.muted;
  root.classList.toggle("cp-muted", a.muted);
  muteButton.setAttribute("aria-pressed", String(a.muted));
  muteButton.setAttribute("aria-label", a.muted ? "Unmute" : "Mute");
});
modeButton.addEventListener("click", () => setWipe(!root.classList.contains("cp-wipe")));
stage.addEventListener("pointerdown", (event) => {
  if (!root.classList.contains("cp-wipe")) return;
  dragging = true;
  stage.setPointerCapture(event.pointerId);
  dragTo(event);
});
stage.addEventListener("pointermove", (event) => {
  if (dragging) dragTo(event);
});
for (const type of ["pointerup", "pointercancel"]) {
  stage.addEventListener(type, () => {
    dragging = false;
  });
}
divider.addEventListener("keydown", (event) => {
  const step = { ArrowLeft: -0.05, ArrowRight: 0.05 }[event.key];
  if (step === undefined) return;
  event.preventDefault();
  setSplit(split + step);
});

setSplit(0.5);
load();
watch("value", load);
"""


class CompareValue(GradioModel):
    """The player's value: the base video `a`, the optional SR video `b`, and a caption for each.

    `a` and `b` are Gradio `FileData` (a local `path`; Gradio fills `url` when it serves the file).
    """

    a: FileData | None = None
    b: FileData | None = None
    a_label: str = BASE_LABEL
    b_label: str = SR_LABEL


def _clean_label(label: Any, default: str) -> str:
    """Plain one-line text of at most LABEL_MAX_CHARS characters; None or blank gives `default`.

    Labels are displayed as text (`textContent`), so markup characters are kept as they are and shown
    literally; only control characters and line breaks are flattened to spaces.
    """
    if label is None:
        return default
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(label)).split())
    if len(text) > LABEL_MAX_CHARS:
        text = text[: LABEL_MAX_CHARS - 1] + "…"
    return text or default


def _local_file(item: Any, role: str) -> FileData | None:
    """A FileData for a local video file, from a path or a FileData (whose `url` is dropped).

    Only the path is kept, so the URL the browser gets is always the one Gradio makes when it serves
    the file from its cache; remote URLs are refused.
    """
    if item is None:
        return None
    if isinstance(item, FileData):
        path = item.path
    elif isinstance(item, dict) and "path" in item:
        path = item["path"]
    elif isinstance(item, (str, Path)):
        path = item
    else:
        raise TypeError(f"the {role} video must be a file path or a FileData, got {type(item).__name__}")
    path = str(path)
    if client_utils.is_http_url_like(path) or "://" in path:
        raise ValueError(f"the {role} video must be a local file served by this app, not a URL: {path!r}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"the {role} video {path!r} does not exist")
    return FileData(path=path, orig_name=Path(path).name, mime_type=mimetypes.guess_type(path)[0])


class ComparePlayer(gr.HTML):
    """Two videos, base and super-resolution, played in sync under one set of controls.

    Value (set from Python, e.g. returned by an event handler): None for an empty player, or a dict
    `{"a": path | FileData | None, "b": path | FileData | None, "a_label": str, "b_label": str}`; build it
    with `ComparePlayer.value_for(base_path, sr_path, sr_label)`. `a` is the base video (its audio is the
    one heard); `b`, the SR video, may be None (the base then plays alone). Paths must be local files in a
    folder Gradio may serve (the working directory, the temp directory or `allowed_paths`).

    Stable hooks for tests and CSS: the component's `elem_id` (default `compare-player`), and the classes
    `.cp-video-a`, `.cp-video-b`, `.cp-play`, `.cp-seek`, `.cp-time`, `.cp-mute`, `.cp-mode`, `.cp-divider`.
    """

    data_model = CompareValue

    def __init__(self, value: dict[str, Any] | None = None, *, elem_id: str | None = "compare-player", **kwargs: Any):
        super().__init__(
            value=value,
            html_template=TEMPLATE,
            css_template=CSS,
            js_on_load=JS,
            apply_default_css=False,
            elem_id=elem_id,
            **kwargs,
        )

    @staticmethod
    def value_for(
        base_path: str | Path | None,
        sr_path: str | Path | None = None,
        sr_label: str = SR_LABEL,
        *,
        base_label: str = BASE_LABEL,
    ) -> dict[str, Any]:
        """The player value for local video files: FileData dicts that Gradio serves when the value is shown.

        Raises FileNotFoundError for a missing file, ValueError for a URL or for an SR video without a base.
        """
        return ComparePlayer._checked({"a": base_path, "b": sr_path, "a_label": base_label, "b_label": sr_label})

    @staticmethod
    def _checked(value: dict[str, Any] | CompareValue | None) -> dict[str, Any]:
        if value is None:
            return CompareValue().model_dump()
        if isinstance(value, CompareValue):
            value = value.model_dump()
        if not isinstance(value, dict):
            raise TypeError(f"ComparePlayer takes a dict or None, got {type(value).__name__}")
        a = _local_file(value.get("a"), "base")
        b = _local_file(value.get("b"), "super-resolution")
        if a is None and b is not None:
            raise ValueError("a super-resolution video needs its base video")
        checked = CompareValue(
            a=a,
            b=b,
            a_label=_clean_label(value.get("a_label"), BASE_LABEL),
            b_label=_clean_label(value.get("b_label"), SR_LABEL),
        )
        return checked.model_dump()

    def postprocess(self, value: dict[str, Any] | CompareValue | None) -> dict[str, Any]:  # type: ignore[override]
        """Checks and normalises the value; Gradio then caches the files and fills in their URLs."""
        return self._checked(value)

    def preprocess(self, payload: CompareValue | None) -> dict[str, Any] | None:  # type: ignore[override]
        """As an input (rarely useful): the same dict shape, with the cached files' local paths."""
        if payload is None:
            return None
        return {
            "a": payload.a.path if payload.a else None,
            "b": payload.b.path if payload.b else None,
            "a_label": payload.a_label,
            "b_label": payload.b_label,
        }

    def api_info(self) -> dict[str, Any]:
        return gr.components.Component.api_info(self)

    def example_payload(self) -> Any:
        return CompareValue().model_dump()

    def example_value(self) -> Any:
        return CompareValue().model_dump()
