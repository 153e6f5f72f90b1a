"""Driving the studio like its users: launch it in-process, call `/generate` by keyword.

The keyword arguments are the request fields of `magihuman.fields`; files (portrait, audio) may be given as
paths and are uploaded. Tests keep clips short (1 s at 256p) and name a prompt only when it matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
from gradio_client import Client, handle_file

from magihuman.fields import FIELD
from tests.browser import free_port

FAST = {"prompt": "A woman says hello.", "seconds": 1}


def api_arguments(**fields) -> dict:
    """Keyword arguments of `/generate`: `FAST` plus `fields`, files wrapped for upload."""
    unknown = set(fields) - set(FIELD)
    assert not unknown, f"not request fields: {unknown}"
    arguments = {**FAST, **fields}
    for name, value in arguments.items():
        if FIELD[name].kind in ("image", "audio") and isinstance(value, str | Path):
            arguments[name] = handle_file(str(value))
    return arguments


def generate(client: Client, **fields):
    """(player, downloads, seed used, details, take id) of one `/generate` call."""
    return client.predict(**api_arguments(**fields), api_name="/generate")


def paths(downloads) -> list[str]:
    return [d["path"] if isinstance(d, dict) else d for d in downloads]


@contextmanager
def launched(demo: gr.Blocks, **launch_kwargs) -> Iterator[str]:
    """The demo served on a free loopback port; its URL. Closed on leaving."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
