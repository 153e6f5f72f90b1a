"""One journey in headless Chromium with the tiny engine and a local chat-completions server: a rough idea is
enhanced, edited and generated; the inputs become a card that survives a reload, is exported, imported in a
fresh browser and generates a take there."""

from __future__ import annotations

import httpx

import app as studio_app
from magihuman.enhance import MODEL_ENV
from studio.runtime import EngineSlot
from tests.browser import browser_page, require_chromium
from tests.chat_server import chat_server
from tests.files import portrait
from tests.studio import launched
from tests.test_enhance import LINE, scene_json

WAIT_MS = 10_000
GENERATE_MS = 120_000  # the tiny engine on two CPU cores, a 1-second clip at 256p


def _field(page, elem_id: str):
    return page.locator(elem_id).locator("textarea, input").first


def _wait_value(page, elem_id: str, text: str, timeout_ms: int | None = None) -> None:
    """Wait until the text field in `elem_id` exists and its value contains `text`."""
    page.wait_for_function(
        "([id, text]) => { const f = document.querySelector(`${id} textarea, ${id} input`);"
        " return f !== null && f.value.includes(text); }",
        arg=[elem_id, text],
        timeout=timeout_ms,
    )


def _generate_one_second(page, takes: int) -> None:
    seconds = page.locator("#seconds input[type=number]")
    seconds.fill("1")
    seconds.press("Enter")
    page.locator("#generate").click()
    page.wait_for_function(f"() => document.querySelectorAll('#takes img').length === {takes}", timeout=GENERATE_MS)


def test_enhance_edit_generate_then_a_card_across_browsers(tiny_engine, tmp_path, monkeypatch) -> None:
    require_chromium()
    face = portrait(tmp_path / "face.png")
    demo = studio_app.build_demo(EngineSlot.ready(tiny_engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", MODEL_ENV):
        monkeypatch.delenv(name, raising=False)
    with chat_server() as llm, launched(demo) as url:
        with browser_page(url, WAIT_MS, viewport={"width": 1400, "height": 1600}) as page:
            page.wait_for_selector("#generate:not([disabled])")
            idea = "a baker says the shop opens at seven"
            _field(page, "#prompt").fill(idea)
            page.locator("#enhance").click()  # not configured yet: the page says how to turn it on
            page.get_by_text("The prompt enhancer is off").first.wait_for()
            assert "OPENAI_BASE_URL" in page.get_by_text("The prompt enhancer is off").first.inner_text()

            monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
            monkeypatch.setenv(MODEL_ENV, "browser-model")
            llm.replies = [scene_json()]
            page.locator("#enhance").click()
            rewrite = _field(page, "#enhanced-prompt")
            _wait_value(page, "#enhanced-prompt", "Dialogue:")
            assert f'"{LINE}"' in rewrite.input_value()
            assert _field(page, "#prompt").input_value() == idea  # nothing replaced before the user says so
            assert "Dialogue" in page.locator("#enhance-diff").inner_text()
            rewrite.fill(rewrite.input_value().replace("<Quiet café ambience>", "<Rain on the window>"))
            page.locator("#enhance-use").click()
            _wait_value(page, "#prompt", "Rain on")
            _generate_one_second(page, takes=1)

            # The current inputs as a card; a reload keeps it.
            page.locator("#portrait input[type=file]").set_input_files(str(face))
            page.wait_for_selector("#portrait img")
            _field(page, "#db-description").fill("A woman with curly auburn hair and a green apron.")
            page.locator("#cards").get_by_text("Character cards").click()
            _field(page, "#card-name").fill("Anna")
            page.locator("#card-save").click()
            page.wait_for_selector("#card-note:has-text('Saved card')")
            page.reload()
            page.wait_for_selector("#generate:not([disabled])")
            page.locator("#cards").get_by_text("Character cards").click()
            _wait_value(page, "#card-pick", "Anna")
            page.locator("#card-export").click()
            link = page.locator("#card-file a").first
            link.wait_for()
            card_file = tmp_path / "Anna.zip"
            card_file.write_bytes(httpx.get(httpx.URL(url).join(link.get_attribute("href")), timeout=30).content)

        # A fresh browser (no stored cards) imports the file and generates with the card.
        with browser_page(url, WAIT_MS, viewport={"width": 1400, "height": 1600}) as page:
            page.wait_for_selector("#generate:not([disabled])")
            page.locator("#cards").get_by_text("Character cards").click()
            assert page.locator("#card-pick input").input_value() == ""
            page.locator("#card-import input[type=file]").set_input_files(str(card_file))
            page.wait_for_selector("#card-note:has-text('Imported card')")
            _wait_value(page, "#card-pick", "Anna")
            page.locator("#card-use").click()
            page.wait_for_selector("#portrait img")
            _wait_value(page, "#db-description", "auburn")
            _field(page, "#prompt").fill('A woman says: "Hello." Dialogue: <A woman, English>: "Hello."')
            _generate_one_second(page, takes=1)  # this browser's own takes
    assert len(llm.requests) == 1
