"""Users' journeys through the studio in headless Chromium, with the tiny engine: write a prompt with the
dialogue builder and generate at 540p with a portrait; make two takes, compare them in the synced player,
reload the page and find them still there."""

from __future__ import annotations

import pytest

from tests.browser import ARTIFACTS, browser_page, video_states, wait_videos_ready
from tests.files import portrait

WAIT_MS = 10_000
GENERATE_MS = 180_000  # the tiny engine on two CPU cores: 256p + 540p of a 1-second clip
LEFT = "document.querySelector('#compare-player .cp-video-left')"


def _field(page, elem_id: str):
    """The text field inside a Gradio textbox, whether it renders as <input> or <textarea>."""
    return page.locator(elem_id).locator("textarea, input").first


def _one_second(page) -> None:
    seconds = page.locator("#seconds input[type=number]")
    seconds.fill("1")
    seconds.press("Enter")


def _play_a_little_and_pause(page) -> None:
    player = page.locator("#compare-player")
    player.locator(".cp-play").click()
    page.wait_for_function(f"() => {LEFT}.currentTime > 0.3")
    player.locator(".cp-play").click()
    page.wait_for_function(f"() => {LEFT}.paused")
    wait_videos_ready(page)


def _assert_in_sync(page) -> dict:
    state = video_states(page)
    assert abs(state["left"]["time"] - state["right"]["time"]) < 0.04, state  # one frame at 25 fps
    return state


def _scored_takes_listed(page, count: int) -> None:
    page.wait_for_function(
        "(n) => [...document.querySelectorAll('#takes img')].filter("
        "(img) => img.closest('button').innerText.includes(' score ')).length === n",
        arg=count,
        timeout=GENERATE_MS,
    )


def _takes_listed(page, count: int) -> None:
    page.wait_for_function(f"() => document.querySelectorAll('#takes img').length === {count}", timeout=GENERATE_MS)


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
        _one_second(page)
        page.locator("#generate").click()
        wait_videos_ready(page, both=True, timeout_ms=GENERATE_MS)
        assert page.locator("#seed-used input").input_value() != ""
        _scored_takes_listed(page, 1)  # the events that follow a take (card, gallery) are done: nothing re-renders

        _play_a_little_and_pause(page)
        assert _assert_in_sync(page)["left"]["time"] > 0.1

        seek = page.locator("#compare-player .cp-seek")
        box = seek.bounding_box()
        seek.click(position={"x": box["width"] * 0.6, "y": box["height"] / 2})
        wait_videos_ready(page, both=True)
        after_seek = _assert_in_sync(page)
        assert after_seek["left"]["time"] == pytest.approx(0.6 * after_seek["left"]["duration"], abs=0.15)

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "studio.png"), full_page=True)


def test_two_takes_are_compared_and_survive_a_reload(studio_url) -> None:
    with browser_page(studio_url, WAIT_MS, viewport={"width": 1400, "height": 1600}) as page:
        page.wait_for_selector("#generate:not([disabled])")
        _takes_listed(page, 0)
        _field(page, "#prompt").fill('A woman says: "Take one." Dialogue: <A woman, English>: "Take one."')
        _one_second(page)
        for count in (1, 2):
            page.locator("#generate").click()
            _takes_listed(page, count)
        seeds = page.evaluate(
            "() => [...document.querySelectorAll('#takes img')].map((img) => img.closest('button').innerText)"
        )
        assert len({s.split("seed ")[1].split(" ")[0] for s in seeds}) == 2, seeds  # "Random seed": two seeds

        # Compare the two takes (the newest is heard on the left, the one before it on the right).
        page.locator("#compare").click()
        page.wait_for_function(
            "() => document.querySelector('#compare-player .cp-label-right').textContent.startsWith('Take')"
        )
        wait_videos_ready(page, both=True, timeout_ms=GENERATE_MS)
        left_label = page.locator("#compare-player .cp-label-left").text_content()
        right_label = page.locator("#compare-player .cp-label-right").text_content()
        assert left_label.startswith("Take ") and right_label.startswith("Take ") and left_label != right_label
        _play_a_little_and_pause(page)
        _assert_in_sync(page)

        seek = page.locator("#compare-player .cp-seek")
        box = seek.bounding_box()
        seek.click(position={"x": box["width"] * 0.3, "y": box["height"] / 2})
        wait_videos_ready(page, both=True)
        _assert_in_sync(page)

        # A seek that is not the scrub bar's (a script's, as media keys or the keyboard would), while paused.
        page.evaluate(f"() => {{ {LEFT}.currentTime = 0.7; }}")
        page.wait_for_function(f"() => Math.abs({LEFT}.currentTime - 0.7) < 0.05 && !{LEFT}.seeking")
        wait_videos_ready(page, both=True)
        assert _assert_in_sync(page)["left"]["paused"]
        page.screenshot(path=str(ARTIFACTS / "studio-compare.png"), full_page=True)

        # The history is the browser's: a reload lists the same two takes, and a click loads one.
        page.reload()
        page.wait_for_selector("#generate:not([disabled])")
        _takes_listed(page, 2)
        page.locator("#takes img").nth(1).click()
        page.wait_for_function("() => document.querySelector('#prompt textarea').value.includes('Take one.')")
        wait_videos_ready(page, both=False, timeout_ms=GENERATE_MS)
