"""ComparePlayer: the value contract in Python, then synced playback in headless Chromium.

The browser tests drive a tiny Blocks app launched in-process with two real H.264 + AAC clips (a 64×64
"base" and the same picture at 128×128 as "SR"). They skip when /usr/bin/chromium is not installed
(`apt-get install chromium`); Playwright is only the driver, it never downloads a browser.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from magihuman.media import write_mp4
from studio.player import CSS, LABEL_MAX_CHARS, LEFT_LABEL, RIGHT_LABEL, TEMPLATE, ComparePlayer
from tests.browser import ARTIFACTS, browser_page, free_port, require_chromium, video_states, wait_videos_ready
from tests.files import tone

WAIT_MS = 5_000
CLIP_SECONDS = 2.0  # 50 frames at 25 fps
ONE_FRAME = 0.04  # seconds at 25 fps: how far apart the two videos may be
# Markup and a template-literal expression: both must reach the page as plain text.
HOSTILE_LABEL = "<img src=x onerror=__xss=1>${7*6}"


def _clip(path: Path, size: int, frames: int = 50) -> Path:
    """Colour bands drifting right over a vertical gradient, with a 440 Hz tone; same picture at any size."""
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    red = (255 * (0.5 + 0.5 * np.sin(2 * np.pi * (2 * x - t / 25)))).astype(np.uint8)
    green = np.broadcast_to((255 * y).astype(np.uint8), red.shape)
    blue = np.broadcast_to(np.uint8(255) - (255 * x).astype(np.uint8), red.shape)
    video = np.ascontiguousarray(np.stack([red, green, blue], axis=-1))  # (F, size, size, 3)
    audio = tone(CLIP_SECONDS, 44_100).T  # (n, 2)
    return write_mp4(path, video, audio, preset="ultrafast")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("player")
    return {"base": _clip(folder / "base.mp4", 64), "sr": _clip(folder / "sr.mp4", 128)}


# ---------------------------------------------------------------------------------------------------------
# 1. The value in Python
# ---------------------------------------------------------------------------------------------------------


def test_value_for_carries_local_files(clips):
    value = ComparePlayer.value_for(clips["base"], clips["sr"], "540p")
    assert value["left_label"] == LEFT_LABEL and value["right_label"] == "540p"
    for key, clip in (("left", clips["base"]), ("right", clips["sr"])):
        assert value[key]["path"] == str(clip)
        assert value[key]["meta"] == {"_type": "gradio.FileData"}
        assert value[key]["url"] is None  # only Gradio makes URLs
        assert value[key]["mime_type"] == "video/mp4"


def test_files_are_served_from_the_gradio_cache(clips):
    player = ComparePlayer(ComparePlayer.value_for(clips["base"], clips["sr"], "540p"))
    for key, clip in (("left", clips["base"]), ("right", clips["sr"])):
        served = player.value[key]
        assert Path(served["path"]).is_relative_to(player.GRADIO_CACHE)
        assert Path(served["path"]).read_bytes() == clip.read_bytes()
        assert served["url"].startswith("/gradio_api/file=")
        assert served["url"].endswith(f"/{clip.name}")


def test_base_only_and_empty_values(clips):
    base_only = ComparePlayer.value_for(clips["base"])
    assert base_only["right"] is None and base_only["right_label"] == RIGHT_LABEL
    player = ComparePlayer()
    assert player.value == {"left": None, "right": None, "left_label": LEFT_LABEL, "right_label": RIGHT_LABEL}
    assert player.postprocess(None) == player.value
    assert ComparePlayer.value_for(None)["left"] is None


def test_value_round_trips_through_postprocess_and_preprocess(clips):
    player = ComparePlayer()
    value = player.postprocess({"left": str(clips["base"]), "right": clips["sr"], "right_label": "1080p"})
    assert player.postprocess(value) == value  # idempotent: a handler may return value_for(...) or a plain dict
    back = player.preprocess(player.data_model.model_validate(value))
    assert back == {
        "left": str(clips["base"]),
        "right": str(clips["sr"]),
        "left_label": LEFT_LABEL,
        "right_label": "1080p",
    }


def test_labels_are_plain_one_line_text(clips):
    clean = ComparePlayer.value_for(clips["base"], clips["sr"], " 540p\n\tSR\x00 ")
    assert clean["right_label"] == "540p SR"
    long = ComparePlayer.value_for(clips["base"], clips["sr"], "x" * 100)["right_label"]
    assert len(long) == LABEL_MAX_CHARS and long.endswith("…")
    assert ComparePlayer.value_for(clips["base"], clips["sr"], "   ")["right_label"] == RIGHT_LABEL
    # Markup stays as typed: the page shows labels through textContent, never as HTML.
    assert ComparePlayer.value_for(clips["base"], clips["sr"], HOSTILE_LABEL)["right_label"] == HOSTILE_LABEL


def test_templates_never_interpolate_the_value():
    # Gradio evaluates templates as JS template literals after Handlebars: any value field placed there
    # could run as code, so the template and CSS hold no placeholders at all.
    for text in (TEMPLATE, CSS):
        assert "${" not in text and "{{" not in text and "`" not in text


def test_urls_and_missing_files_are_refused(clips, tmp_path):
    with pytest.raises(ValueError, match="not a URL"):
        ComparePlayer.value_for("https://example.com/clip.mp4")
    with pytest.raises(ValueError, match="not a URL"):
        ComparePlayer.value_for(clips["base"], {"path": "http://example.com/x.mp4", "meta": {}})
    with pytest.raises(FileNotFoundError):
        ComparePlayer.value_for(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="needs a left video"):
        ComparePlayer().postprocess({"left": None, "right": clips["sr"]})
    with pytest.raises(TypeError):
        ComparePlayer().postprocess("<video src=x>")


def test_api_info_describes_the_dict():
    info = ComparePlayer().api_info()
    assert info["type"] == "object"
    assert {"left", "right", "left_label", "right_label"} <= set(info["properties"])


# ---------------------------------------------------------------------------------------------------------
# 2. In the browser
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_url(clips):
    require_chromium()
    import gradio as gr

    with gr.Blocks() as demo:
        player = ComparePlayer(ComparePlayer.value_for(clips["base"], clips["sr"], HOSTILE_LABEL))
        base_only = gr.Button("Base only", elem_id="base-only")
        base_only.click(lambda: ComparePlayer.value_for(clips["base"]), outputs=player)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def page(app_url):
    with browser_page(app_url, WAIT_MS) as page:
        page.wait_for_selector("#compare-player .cp-video-left")
        yield page


def test_synced_playback_seek_and_wipe(page, app_url):
    player = page.locator("#compare-player")
    wait_videos_ready(page)
    state = video_states(page)
    for key in ("left", "right"):
        assert state[key]["src"].startswith(f"{app_url}gradio_api/file=")
    assert state["left"]["duration"] == pytest.approx(CLIP_SECONDS, abs=0.1)
    assert state["right"]["muted"] and not state["left"]["muted"]

    # Labels arrive as text: no element made from the markup, no script run.
    assert player.locator(".cp-label-left").text_content() == LEFT_LABEL
    assert player.locator(".cp-label-right").text_content() == HOSTILE_LABEL
    assert player.locator("img").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"

    # One button plays and pauses both; the right video follows the left one.
    player.locator(".cp-play").click()
    page.wait_for_function("() => !document.querySelector('#compare-player .cp-video-left').paused")
    page.wait_for_timeout(1000)
    playing = video_states(page)
    assert not playing["right"]["paused"]
    assert abs(playing["left"]["time"] - playing["right"]["time"]) < ONE_FRAME, playing
    player.locator(".cp-play").click()
    page.wait_for_function("() => document.querySelector('#compare-player .cp-video-left').paused")
    paused = video_states(page)
    assert paused["right"]["paused"]
    assert paused["left"]["time"] > 0.5
    assert abs(paused["left"]["time"] - paused["right"]["time"]) < ONE_FRAME, paused
    assert player.locator(".cp-time").text_content().endswith(" / 0:02.0")

    # The scrub bar seeks both to mid-clip.
    seek = player.locator(".cp-seek")
    box = seek.bounding_box()
    seek.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
    wait_videos_ready(page)
    mid = video_states(page)
    assert mid["left"]["time"] == pytest.approx(CLIP_SECONDS / 2, abs=0.2)
    assert abs(mid["left"]["time"] - mid["right"]["time"]) < ONE_FRAME, mid

    # Scrubbing while playing: 300 ms later both play within a frame of each other (the seek barrier).
    seek.click(position={"x": box["width"] * 0.1, "y": box["height"] / 2})  # back to about 0.2 s
    player.locator(".cp-play").click()
    page.wait_for_function("() => !document.querySelector('#compare-player .cp-video-left').paused")
    page.wait_for_timeout(300)
    seek.click(position={"x": box["width"] * 0.3, "y": box["height"] / 2})
    page.wait_for_timeout(300)
    scrubbed = video_states(page)
    assert not scrubbed["left"]["paused"] and not scrubbed["right"]["paused"], scrubbed
    assert abs(scrubbed["left"]["time"] - scrubbed["right"]["time"]) < ONE_FRAME, scrubbed
    player.locator(".cp-play").click()
    page.wait_for_function("() => document.querySelector('#compare-player .cp-video-left').paused")

    # A seek that does not come from the scrub bar (keyboard, media keys, a script) moves both, paused ...
    _seek_left_by_script(page, 1.5)
    assert video_states(page)["left"]["paused"]
    _assert_in_sync(page, 1.5)
    # ... and playing.
    player.locator(".cp-play").click()
    page.wait_for_function("() => !document.querySelector('#compare-player .cp-video-left').paused")
    _seek_left_by_script(page, 0.25)
    player.locator(".cp-play").click()
    page.wait_for_function("() => document.querySelector('#compare-player .cp-video-left').paused")
    wait_videos_ready(page)
    state = video_states(page)
    assert state["left"]["time"] < 1.2 and abs(state["left"]["time"] - state["right"]["time"]) < ONE_FRAME, state

    # Mute silences the only audible video.
    player.locator(".cp-mute").click()
    assert video_states(page)["left"]["muted"]
    player.locator(".cp-mute").click()
    assert not video_states(page)["left"]["muted"]

    ARTIFACTS.mkdir(exist_ok=True)
    player.screenshot(path=str(ARTIFACTS / "player.png"))

    # The wipe view overlays the two; dragging the divider moves the clip edge of the SR video.
    mode = player.locator(".cp-mode")
    mode.click()
    assert mode.get_attribute("aria-pressed") == "true"
    stage = player.locator(".cp-stage")
    box = stage.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2, steps=4)
    page.mouse.up()
    clip = player.locator(".cp-pane-right").evaluate("(el) => getComputedStyle(el).clipPath")
    assert clip.startswith("inset(") and "30" in clip
    player.screenshot(path=str(ARTIFACTS / "player-wipe.png"))
    assert video_states(page)["left"]["paused"]  # dragging the divider does not toggle playback
    mode.click()
    assert mode.get_attribute("aria-pressed") == "false"
    assert player.locator(".cp-pane-right").evaluate("(el) => getComputedStyle(el).clipPath") == "none"


def _seek_left_by_script(page, seconds: float) -> None:
    page.evaluate(
        """(t) => new Promise((done) => {
            const left = document.querySelector('#compare-player .cp-video-left');
            left.addEventListener('seeked', done, {once: true});
            left.currentTime = t;
        })""",
        seconds,
    )


def _assert_in_sync(page, seconds: float) -> None:
    wait_videos_ready(page)
    state = video_states(page)
    assert state["left"]["time"] == pytest.approx(seconds, abs=0.05)
    assert abs(state["left"]["time"] - state["right"]["time"]) < ONE_FRAME, state


def test_base_only_value_from_an_event(page):
    player = page.locator("#compare-player")
    wait_videos_ready(page)
    page.locator("#base-only").click()
    page.wait_for_function("() => document.querySelector('#compare-player .cp-root.cp-single')")
    assert player.locator(".cp-video-right").is_hidden()
    assert player.locator(".cp-mode").is_hidden()
    assert video_states(page)["right"]["src"] is None
    assert player.locator(".cp-label-right").text_content() == RIGHT_LABEL
    wait_videos_ready(page, both=False)
    ARTIFACTS.mkdir(exist_ok=True)
    player.screenshot(path=str(ARTIFACTS / "player-base-only.png"))

    player.locator(".cp-play").click()
    page.wait_for_function("() => document.querySelector('#compare-player .cp-video-left').currentTime > 0.3")
    player.locator(".cp-play").click()
    page.wait_for_function("() => document.querySelector('#compare-player .cp-video-left').paused")
