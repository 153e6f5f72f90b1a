"""The scorecard in headless Chromium with the tiny engine: a take's card appears under the timing table, the
gallery captions carry the score, and "Best score first" orders the gallery by it."""

from __future__ import annotations

import re

from tests.browser import browser_page

WAIT_MS = 10_000
GENERATE_MS = 180_000  # the tiny engine on two CPU cores, then the card
CAPTIONS = "() => [...document.querySelectorAll('#takes img')].map((img) => img.closest('button').innerText)"


def _scores(page) -> list[float]:
    return [float(re.search(r"score (\d+)", caption).group(1)) for caption in page.evaluate(CAPTIONS)]


def test_the_card_shows_after_a_take_and_the_gallery_sorts_by_score(studio_url) -> None:
    with browser_page(studio_url, WAIT_MS, viewport={"width": 1400, "height": 1600}) as page:
        page.wait_for_selector("#generate:not([disabled])")
        page.locator("#prompt textarea").fill('Dialogue:\n<A woman, English>: "Hello there."')
        seconds = page.locator("#seconds input[type=number]")
        seconds.fill("1")
        seconds.press("Enter")
        for count in (1, 2):
            page.locator("#generate").click()
            page.wait_for_function(
                "(n) => [...document.querySelectorAll('#takes img')].filter("
                "(img) => img.closest('button').innerText.includes(' score ')).length === n",
                arg=count,
                timeout=GENERATE_MS,
            )
        card = page.locator("#scorecard").inner_text()
        assert "Scorecard:" in card and "DNSMOS" in card, card
        assert "WER" in card  # against the prompt's Dialogue line

        page.locator("#takes-order").get_by_text("Best score first").click()
        page.wait_for_function("() => document.querySelector('#takes-order input[value=\"Best score first\"]').checked")
        scores = _scores(page)
        assert len(scores) == 2 and scores == sorted(scores, reverse=True), scores
