"""A synced two-video player (a take and its upscale, or two takes): `ComparePlayer`, a `gr.HTML` subclass.

The right video follows the left one (drift > 0.02 s nudges its rate, > 0.3 s re-seeks it); only the left is
heard, so the soundtracks never echo. Markup, style and script are `player.html`, `player.css`, `player.js`.

Files travel as `FileData` from local paths (never URLs): Gradio's output pipeline copies them into its cache,
enforcing `allowed_paths` / `blocked_paths`, and fills in the URL.

Why the template is static: Gradio 6 evaluates `html_template` as a JS template literal after Handlebars, so
`${...}` in a value would execute. The JS sets sources and labels through DOM properties instead, and a static
template renders the same string on every update, which Gradio skips, so the live `<video>` state survives.
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

_HERE = Path(__file__).resolve().parent
TEMPLATE = (_HERE / "player.html").read_text()
CSS = (_HERE / "player.css").read_text()
JS = (_HERE / "player.js").read_text()


class CompareValue(GradioModel):
    """The player's value: the `left` video (the clock, and the one heard), the optional `right` that follows
    it, and a caption for each."""

    left: FileData | None = None
    right: FileData | None = None
    left_label: str = LEFT_LABEL
    right_label: str = RIGHT_LABEL


def _clean_label(label: Any, default: str) -> str:
    """One line of at most LABEL_MAX_CHARS; markup stays as is, since labels are shown via `textContent`."""
    if label is None:
        return default
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(label)).split())
    if len(text) > LABEL_MAX_CHARS:
        text = text[: LABEL_MAX_CHARS - 1] + "…"
    return text or default


def _local_file(item: Any, role: str) -> FileData | None:
    """A FileData for a local file; any `url` is dropped so the browser only gets the one Gradio makes."""
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

    Value: None or `ComparePlayer.value_for(...)`; paths must be in a folder Gradio may serve. Stable hooks for
    tests and CSS: `elem_id` (default `compare-player`) and the `.cp-*` classes in `player.html`.
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
        """The player value for local video files (FileData dicts that Gradio serves)."""
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
        return self._checked(value)

    def preprocess(self, payload: CompareValue | None) -> dict[str, Any] | None:  # type: ignore[override]
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
