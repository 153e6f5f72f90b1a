"""A synced two-video player (a take and its upscale, or two takes): `ComparePlayer`, a `gr.HTML` subclass.

Two `<video>` elements share one play/pause button, one scrub bar and one time readout. The right video
follows the left one: play, pause and every seek of the left video (scrub bar, keyboard, script; playing or
paused) are applied to both, and while playing a frame loop nudges its
playback rate (drift > 0.02 s) or re-seeks it (drift > 0.3 s). Only the left video is heard, so the two
soundtracks never echo. An A/B wipe view overlays them, the right video clipped (CSS `clip-path`) to the right
of a draggable divider. With no right video the left one plays alone under the same controls. The markup,
style and script are `player.html`, `player.css` and `player.js` beside this module.

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

LEFT_LABEL = "Base 256p"
RIGHT_LABEL = "Super-resolution"
LABEL_MAX_CHARS = 40

# The widget's markup, style and behaviour live next to this module as plain files.
_HERE = Path(__file__).resolve().parent
TEMPLATE = (_HERE / "player.html").read_text()
CSS = (_HERE / "player.css").read_text()
JS = (_HERE / "player.js").read_text()


class CompareValue(GradioModel):
    """The player's value: the `left` video (the clock, and the one heard), the optional `right` video that
    follows it, and a caption for each. For a take and its upscale, left is the base and right the SR video;
    for two takes, left is take A and right take B.

    `left` and `right` are Gradio `FileData` (a local `path`; Gradio fills `url` when it serves the file).
    """

    left: FileData | None = None
    right: FileData | None = None
    left_label: str = LEFT_LABEL
    right_label: str = RIGHT_LABEL


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
    """Two videos (a take and its upscale, or two takes) played in sync under one set of controls.

    Value (set from Python, e.g. returned by an event handler): None for an empty player, or a dict
    `{"left": path | FileData | None, "right": path | FileData | None, "left_label": str, "right_label": str}`;
    build it with `ComparePlayer.value_for(left_path, right_path, right_label, left_label=...)`. The left video
    is the one heard; the right one may be None (the left then plays alone). Paths must be local files in a
    folder Gradio may serve (the working directory, the temp directory or `allowed_paths`).

    Stable hooks for tests and CSS: the component's `elem_id` (default `compare-player`), and the classes
    `.cp-video-left`, `.cp-video-right`, `.cp-play`, `.cp-seek`, `.cp-time`, `.cp-mute`, `.cp-mode`,
    `.cp-divider`.
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
        left_path: str | Path | None,
        right_path: str | Path | None = None,
        right_label: str = RIGHT_LABEL,
        *,
        left_label: str = LEFT_LABEL,
    ) -> dict[str, Any]:
        """The player value for local video files: FileData dicts that Gradio serves when the value is shown.

        Raises FileNotFoundError for a missing file, ValueError for a URL or for a right video without a left.
        """
        value = {"left": left_path, "right": right_path, "left_label": left_label, "right_label": right_label}
        return ComparePlayer._checked(value)

    @staticmethod
    def _checked(value: dict[str, Any] | CompareValue | None) -> dict[str, Any]:
        if value is None:
            return CompareValue().model_dump()
        if isinstance(value, CompareValue):
            value = value.model_dump()
        if not isinstance(value, dict):
            raise TypeError(f"ComparePlayer takes a dict or None, got {type(value).__name__}")
        left = _local_file(value.get("left"), "left")
        right = _local_file(value.get("right"), "right")
        if left is None and right is not None:
            raise ValueError("the right video needs a left video to follow")
        checked = CompareValue(
            left=left,
            right=right,
            left_label=_clean_label(value.get("left_label"), LEFT_LABEL),
            right_label=_clean_label(value.get("right_label"), RIGHT_LABEL),
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
            "left": payload.left.path if payload.left else None,
            "right": payload.right.path if payload.right else None,
            "left_label": payload.left_label,
            "right_label": payload.right_label,
        }

    def api_info(self) -> dict[str, Any]:
        return gr.components.Component.api_info(self)

    def example_payload(self) -> Any:
        return CompareValue().model_dump()

    def example_value(self) -> Any:
        return CompareValue().model_dump()
