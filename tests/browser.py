"""Shared pieces of the tests that drive a page: free ports, headless Chromium, the compare player's state."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


@contextmanager
def browser_page(url: str, timeout_ms: int, viewport: dict | None = None) -> Iterator:
    """A fresh headless Chromium page on `url` (the system browser; Playwright downloads nothing)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or {"width": 900, "height": 700})
            page.set_default_timeout(timeout_ms)
            page.goto(url, timeout=3 * timeout_ms)
            yield page
        finally:
            browser.close()


def video_states(page) -> dict:
    """currentTime, paused, readyState, muted, seeking, src and duration of the player's two videos (`left`,
    `right`)."""
    return page.evaluate(
        """() => {
            const video = (k) => document.querySelector(`#compare-player .cp-video-${k}`);
            const [left, right] = [video("left"), video("right")];
            const state = (v) => ({time: v.currentTime, paused: v.paused, ready: v.readyState, muted: v.muted,
                                   seeking: v.seeking, src: v.getAttribute("src"), duration: v.duration});
            return {left: state(left), right: state(right)};
        }"""
    )


def wait_videos_ready(page, both: bool = True, timeout_ms: int | None = None) -> None:
    page.wait_for_function(
        """(both) => {
            const v = (k) => document.querySelector(`#compare-player .cp-video-${k}`);
            const ok = (x) => x && x.getAttribute("src") && x.readyState >= 2 && !x.seeking;
            return ok(v("left")) && (!both || ok(v("right")));
        }""",
        arg=both,
        timeout=timeout_ms,
    )
