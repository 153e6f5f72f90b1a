"""A user's journey through the studio in headless Chromium, with the tiny engine: upload a portrait, write the
prompt with the dialogue builder, generate at 540p, and watch the two synced players."""

from __future__ import annotations

import pytest

import app as studio_app
from magihuman.build import load_engine
from studio.runtime import EngineSlot
from tests.browser import ARTIFACTS, browser_page, free_port, require_chromium, video_states, wait_videos_ready
from tests.files import portrait

WAIT_MS = 10_000
GENERATE_MS = 180_000  # the tiny engine on two CPU cores: 256p + 540p of a 1-second clip


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    require_chromium()
    engine = load_engine("tiny", output_root=tmp_path_factory.mktemp("outputs"))
    demo = studio_app.build_demo(EngineSlot.ready(engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=studio_app.CSS)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def _field(page, elem_id: str):
    """The text field inside a Gradio textbox, whether it renders as <input> or <textarea>."""
    return page.locator(elem_id).locator("textarea, input").first


def test_portrait_dialogue_generate_and_synced_players(studio_url, tmp_path) -> None:
    face = portrait(tmp_path / "face.png")
    with browser_page(studio_url, WAIT_MS, viewport={"width": 1400, "height": 1500}) as page:
        # The preview banner says the engine outputs noise; Generate is enabled once the engine is ready.
        page.wait_for_selector("#preview-banner", state="visible")
        assert "noise" in page.locator("#preview-banner").inner_text()
        page.wait_for_selector("#generate:not([disabled])")

        page.locator("#portrait input[type=file]").set_input_files(str(face))
        page.wait_for_selector("#portrait img")

        _field(page, "#db-description").fill(
            "A man in a grey sweater sits at a desk and talks to the camera. Static close-up, soft light."
        )
        _field(page, "#db-speaker").fill("A man in a grey sweater")
        page.locator("#db-language input").click()
        page.get_by_role("option", name="German").click()
        _field(page, "#db-line").fill("Guten Morgen, schön dass ihr da seid.")
        page.locator("#db-build").click()
        prompt = page.locator("#prompt textarea")
        page.wait_for_function("() => document.querySelector('#prompt textarea').value.includes('Dialogue:')")
        assert '<A man in a grey sweater, German>: "Guten Morgen, schön dass ihr da seid."' in prompt.input_value()

        page.locator("#resolution").get_by_text("540p").click()
        seconds = page.locator("#seconds input[type=number]")
        seconds.fill("1")
        seconds.press("Enter")

        page.locator("#generate").click()
        wait_videos_ready(page, both=True, timeout_ms=GENERATE_MS)
        assert page.locator("#seed-used input").input_value() != ""

        player = page.locator("#compare-player")
        player.locator(".cp-play").click()
        page.wait_for_timeout(600)
        player.locator(".cp-play").click()
        page.wait_for_function("() => document.querySelector('#compare-player .cp-video-a').paused")
        after_play = video_states(page)
        assert after_play["a"]["time"] > 0.1
        assert abs(after_play["a"]["time"] - after_play["b"]["time"]) < 0.1

        seek = player.locator(".cp-seek")
        box = seek.bounding_box()
        seek.click(position={"x": box["width"] * 0.6, "y": box["height"] / 2})
        wait_videos_ready(page, both=True)
        after_seek = video_states(page)
        assert after_seek["a"]["time"] == pytest.approx(0.6 * after_seek["a"]["duration"], abs=0.15)
        assert abs(after_seek["a"]["time"] - after_seek["b"]["time"]) < 0.1

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "studio.png"), full_page=True)
