"""Copy as code: the `gradio_client` call and the CLI line that make the same clip as the studio's settings.

Only the fields that differ from their declared defaults are written (the required ones always), by keyword, so the
snippets stay short and keep working when a field is added.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from magihuman.fields import FIELD, FIELDS

PLACEHOLDER_URL = "http://127.0.0.1:7860/"


def _changed(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a call must name: the required fields, then every field whose value is not its default."""
    changed = {}
    for f in FIELDS:
        value = settings.get(f.name)
        if value in ("", None) and not f.required:
            continue
        if f.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if f.required or value != f.default:
            changed[f.name] = value
    return changed


def python_call(settings: dict[str, Any], url: str = PLACEHOLDER_URL) -> str:
    """A runnable gradio_client script (files by their base name: put them next to the script)."""
    lines = [
        "from gradio_client import Client, handle_file",
        "",
        f"client = Client({url!r})",
        "result = client.predict(",
    ]
    for name, value in _changed(settings).items():
        if FIELD[name].is_file:
            lines.append(f"    {name}=handle_file({Path(str(value)).name!r}),")
        else:
            lines.append(f"    {name}={value!r},")
    lines += ['    api_name="/generate",', ")", "player, files, seed, details, take_id = result", "print(seed, files)"]
    return "\n".join(lines)


def cli_line(settings: dict[str, Any]) -> str:
    """The `python -m magihuman generate` command line for the same settings."""
    words = ["python", "-m", "magihuman", "generate"]
    for name, value in _changed(settings).items():
        flag = FIELD[name].flag
        shown = Path(str(value)).name if FIELD[name].is_file else str(value)
        words += [flag, shown]
    words += ["--out", "clip.mp4"]
    return shlex.join(words)
