"""In Chromium: a long take with a recording plays its first window in the page before its last window is done.

The take is 12 s, not the issue's 30 s: on the tiny engine a window costs ~7 s of CPU on two shared cores (most
of it the decoder), so 30 s (8 windows) would add about a minute to the suite for nothing more: the behaviour
under test, a finished window playing while later ones render, needs only a take of three windows (12 s = 300
frames of 101-frame windows), where the first window's 4 s play while the other two still take ~14 s.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.browser import ARTIFACTS, browser_page
from tests.files import write_audio
from tests.scoring import RATE, speak

TAKE_SECONDS = 12
WAIT_MS = 10_000
TAKE_MS = 240_000  # the whole 3-window take on two loaded CPU cores
LIVE = "document.querySelector('#live-take .lt-root')"
LIVE_VIDEO = "document.querySelector('#live-take .lt-video')"


def _recording(folder, seconds: float):
    """espeak-ng speech repeated to `seconds` (the take follows all of it), as a wav."""
    line = speak("Good morning. Today we talk about long takes, one window after another.", "en-us", folder)
    pause = np.zeros(RATE // 2, np.float32)
    spoken = np.concatenate([line, pause])
    mono = np.tile(spoken, int(np.ceil(seconds * RATE / len(spoken))))[: round(seconds * RATE)]
    return write_audio(folder / "lecture.wav", np.stack([mono, mono]), RATE, "pcm_s16le")


def _wait_unless_failed(page, condition: str) -> None:
    """Wait up to TAKE_MS for `condition` (JS), failing at once with the message of an error toast."""
    page.wait_for_function(f"() => ({condition}) || document.querySelector('.toast-body.error')", timeout=TAKE_MS)
    error = page.locator(".toast-body.error")
    assert error.count() == 0, error.first.inner_text()


def test_a_long_take_plays_its_first_window_before_the_last_is_done(studio_url, tmp_path) -> None:
    recording = _recording(tmp_path, TAKE_SECONDS)
    with browser_page(studio_url, WAIT_MS, viewport={"width": 1400, "height": 1500}) as page:
        try:
            page.wait_for_selector("#generate:not([disabled])")
            page.locator("#score-on input").uncheck()  # the scorecard's CPU time is not under test here
            page.locator("#prompt textarea").fill('A man talks to the camera.\nDialogue:\n<A man, English>: "Hi."')
            page.get_by_text("Your own speech (optional)").click()
            page.locator("#own-audio input[type=file]").set_input_files(str(recording))
            page.wait_for_function("() => document.querySelector('#audio-hint').innerText.includes('12.00 s')")
            assert page.locator("#live-take .lt-root").is_hidden()  # nothing live before a take
            page.locator("#generate").click()

            # The first window plays (its own mp4, with sound) while the take has windows still to render.
            _wait_unless_failed(
                page,
                f"{LIVE_VIDEO}.currentTime > 0.5 && Number({LIVE}.dataset.rendered) < Number({LIVE}.dataset.count)",
            )
            live = page.evaluate(
                f"""() => ({{rendered: Number({LIVE}.dataset.rendered), count: Number({LIVE}.dataset.count),
                    current: Number({LIVE}.dataset.current), done: {LIVE}.dataset.done,
                    src: {LIVE_VIDEO}.getAttribute("src"), duration: {LIVE_VIDEO}.duration,
                    progress: document.body.innerText.match(/Window (\\d+)\\/(\\d+)/)}})"""
            )
            assert live["count"] == 3 and live["current"] == 1 and live["done"] == "false", live
            assert "window_001.mp4" in live["src"], live
            assert live["duration"] == pytest.approx(4.0, abs=0.1), live  # the first window's kept 100 frames
            # The studio's progress names a window that is still rendering.
            assert live["progress"] is not None and int(live["progress"][1]) >= 2, live

            # It goes on to the next windows, and the finished take lands in the compare player.
            _wait_unless_failed(page, f"{LIVE}.dataset.done === 'true'")
            page.wait_for_function(
                "() => { const v = document.querySelector('#compare-player .cp-video-left');"
                " return v.getAttribute('src') && v.readyState >= 1; }"
            )
            full = page.evaluate("() => document.querySelector('#compare-player .cp-video-left').duration")
            assert full == pytest.approx(TAKE_SECONDS, abs=0.1)
            assert page.evaluate(f"() => Number({LIVE}.dataset.rendered)") == 3
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "long-take-live.png"), full_page=True)
            raise
