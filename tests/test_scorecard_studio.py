"""The scorecard in the studio: `/score` for a take and an upload, scoring beside (never in front of) the GPU
queue, the gallery's score captions and order, the switch, and the card's escaping."""

from __future__ import annotations

import threading
import time

import pytest
from gradio_client import Client, handle_file

import app as studio_app
import studio.scorecard as scorecard
from magihuman.score import Scorecard
from studio.runtime import EngineSlot
from studio.scorecard import ORDERS, SCORING_OFF, card_html
from tests.scoring import portrait_take, speak
from tests.studio import generate, launched


@pytest.fixture(scope="module")
def server(tiny_engine):
    demo = studio_app.build_demo(EngineSlot.ready(tiny_engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    with launched(demo, show_error=True) as url:
        yield demo, url


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False, download_files=False)


def test_score_a_take_and_an_upload(server, client, tmp_path) -> None:
    take_id = generate(client, seed=5, steps=2)[4]
    html, card = client.predict(take_id=take_id, api_name="/score")
    assert "Scorecard" in html and card["video_seconds"] > 0.9 and card["dnsmos"] is not None
    for key in ("transcript", "speech_start_s", "offset_frames", "offset_confidence", "flags", "unavailable"):
        assert key in card
    assert server[0].scorer.cards[take_id].score == card["score"]  # kept for the gallery

    upload = portrait_take(tmp_path / "hello.mp4", speak("Hello there.", "en-us", tmp_path))
    _, uploaded = client.predict(video=handle_file(str(upload)), prompt="Hello there.", api_name="/score")
    assert uploaded["face_found"] is True and uploaded["expected"] == "Hello there."
    with pytest.raises(Exception, match="take_id|upload"):
        client.predict(api_name="/score")


def test_scoring_never_holds_the_gpu_queue(server, client, monkeypatch) -> None:
    """A take being scored does not delay the next GPU job: it starts and ends while the scorer is held."""
    started, release = threading.Event(), threading.Event()
    real = scorecard.score_take

    def held(video, prompt, audio=None):
        started.set()
        assert release.wait(120), "the test never released the scorer"
        return real(video, prompt, audio)

    monkeypatch.setattr(scorecard, "score_take", held)
    first = generate(client, seed=6, steps=2)[4]
    scoring = client.submit(take_id=first, api_name="/score")
    assert started.wait(60), "scoring did not start"
    try:
        t0 = time.monotonic()
        second = generate(client, seed=7, steps=2)[4]  # the GPU queue is free although a card is being made
        assert second != first and not scoring.done() and time.monotonic() - t0 < 100
    finally:
        release.set()
    assert scoring.result(timeout=120)[1]["video_seconds"] > 0


def test_gallery_shows_scores_and_sorts_by_them(server, client) -> None:
    demo = server[0]
    studio, scorer = demo.studio, demo.scorer
    ids = [generate(client, seed=20 + i, steps=2)[4] for i in range(3)]
    history = []
    for take_id in ids:
        history = studio.remember(take_id, history)
    for take_id, score in zip(ids, (40.0, 90.0, 10.0), strict=True):
        scorer.cards[take_id] = Scorecard(1.0, 1.0, 25.0, score=score)
    listing = scorecard.gallery_listing(scorer)
    items, _, _, kept = listing(history, ORDERS[1])
    assert [rec["id"] for rec in kept] == [ids[1], ids[0], ids[2]]
    assert [caption.split(" · score ")[1][:2] for _, caption in items] == ["90", "40", "10"]
    _, _, _, newest = listing(kept, ORDERS[0])
    assert [rec["id"] for rec in newest] == ids[::-1]


def test_the_switch_turns_scoring_off_and_the_card_escapes_text(server) -> None:
    assert server[0].scorer.card_for_take("any", enabled=False) == (SCORING_OFF, None)
    card = Scorecard(1.0, 1.0, 25.0, transcript="<script>x</script>", language="en", flags=["<b>"], score=1.0)
    page = card_html(card)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page


def test_best_of_three_keeps_three_takes_best_first(server, client) -> None:
    studio, scorer = server[0].studio, server[0].scorer
    first = generate(client, seed=30, steps=2)[4]
    ids = client.predict(take_id=first, n=3, api_name="/best_of")
    assert len(ids) == 3 and ids[0] == first
    assert [studio.takes.get(take_id).take.seed for take_id in ids] == [30, 31, 32]
    assert all(studio.takes.get(take_id).take.request.steps == 2 for take_id in ids)  # the same request
    _, card, history, best, order = scorer.rank(ids, [{"id": "older", "number": 0}], True)
    assert order == ORDERS[1] and [rec["id"] for rec in history[:3]] == sorted(
        ids, key=lambda take_id: -scorer.cards[take_id].score
    )
    assert best == history[0]["id"] and card["score"] == scorer.cards[best].score
    with pytest.raises(Exception, match="maximum value 8|from 2 to 8"):
        client.predict(take_id=first, n=9, api_name="/best_of")
