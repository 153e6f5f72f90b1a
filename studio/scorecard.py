"""The take scorecard in the studio: scored after each take, shown under the timing table and in the gallery.

Scoring never holds the GPU: its own event in its own concurrency group (`SCORE_JOBS`), so the next GPU job
starts meanwhile. It runs on one long-lived thread (`worker_thread`), not Gradio's: the ASR, VAD and DNSMOS
models and their CPU thread teams exist once per process, and a forked ZeroGPU worker starts its own thread.
Cards live on the server, keyed by take id; the browser's history records only carry the score number.
"""

from __future__ import annotations

import html
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from magihuman.cards import Card
from magihuman.errors import MagiHumanError
from magihuman.score import Scorecard, score_take
from magihuman.score.card import FLAG, HEARD
from magihuman.threads import worker_thread
from studio.cards import clean_cards
from studio.handlers import Studio, request_to_values
from studio.history import clean_history

SCORE_JOBS = "score"  # the concurrency group of scoring events, apart from the GPU's
SCORE_TIMEOUT_S = 300  # a card takes seconds; this bounds a stuck model load
ORDERS = ("Newest first", "Best score first")
SCORING_OFF = "Scoring is off."
BEST_OF = (2, 8)  # seeds per "best of N" request
CARD_CSS = """
#scorecard table { font-size: 0.9em; }
#scorecard del { background: #fee2e2; color: #991b1b; }
#scorecard ins { background: #dcfce7; color: #166534; text-decoration: none; }
#scorecard .flag { color: #b45309; }
"""


class Scorer:
    """The cards of a studio's takes, and the events that make and show them."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self.takes = studio.takes
        self.cards: dict[str, Scorecard] = {}
        self._lock = threading.Lock()

    # --- scoring ----------------------------------------------------------------------------------------

    def card_for_take(self, take_id: str, enabled: bool = True, voice_card: Card | None = None):
        """The card of a take just made or picked: (HTML, JSON); compared with `voice_card`'s recording if any."""
        if not enabled:
            return SCORING_OFF, None
        card = self._card_of(take_id, voice_card)
        return card_html(card), _json(card)

    def score(
        self,
        take_id: str | None = None,
        video: str | None = None,
        prompt: str | None = None,
        audio: str | None = None,
    ):
        """Score a take of /generate by its take_id, or an uploaded video with its prompt. Returns the card as HTML
        and as JSON: WER or CER against the prompt's Dialogue lines, transcript, mouth-voice offset, DNSMOS, flags.

        Args:
            take_id: the take_id that /generate returned (the latest 32 takes are kept); or leave it empty
            video: a video with sound to score instead of a take
            prompt: the prompt of the uploaded video (ignored for a take: its own prompt is used)
            audio: optional recording of the voice the take should have: adds voice_similarity (0-1)
        """
        if video:
            card = self._compute(video, prompt or "", audio or None)
        elif take_id and audio:  # a card of its own: the take's card in the gallery stays as it was
            stored = self._stored(take_id)
            card = self._compute(str(stored.best_video()[0]), stored.take.request.prompt, audio)
        elif take_id:
            card = self._card_of(take_id)
        else:
            raise gr.Error("Give a take_id from /generate or upload a video to score.")
        return card_html(card), _json(card)

    def _stored(self, take_id: str):
        stored = self.takes.get(take_id)
        if stored is None:
            raise gr.Error("No such take to score: generate one first (the latest 32 takes are kept).")
        return stored

    def _card_of(self, take_id: str, voice_card: Card | None = None) -> Scorecard:
        stored = self._stored(take_id)
        with self._lock:
            known = self.cards.get(take_id)
        if known is not None:  # an upscale keeps the take's audio, words and timing: its card stands
            return known
        reference = None
        if voice_card is not None:  # into the take's own folder: it lives (and is deleted) with the take
            (folder := stored.take.folder / "card-voice").mkdir(exist_ok=True)
            reference = voice_card.write_voice(folder)
        card = self._compute(str(stored.best_video()[0]), stored.take.request.prompt, reference)
        if voice_card is not None:
            card.voice_reference = f"the recording of card {voice_card.name!r}"
        with self._lock:
            self.cards[take_id] = card
            for gone in [key for key in self.cards if self.takes.get(key) is None]:
                del self.cards[gone]
        return card

    def _compute(self, video: str, prompt: str, reference: str | Path | None = None) -> Scorecard:
        future = worker_thread("scorecard").submit(score_take, video, prompt, reference)
        try:
            return future.result(timeout=SCORE_TIMEOUT_S)
        except FutureTimeout:
            raise gr.Error(f"Scoring the take took more than {SCORE_TIMEOUT_S} s; try again later.") from None
        except MagiHumanError as exc:
            raise gr.Error(str(exc)) from exc

    # --- best of N ---------------------------------------------------------------------------------------

    def best_of(self, take_id: str, n: int = 4, request: gr.Request = None, progress: gr.Progress = gr.Progress()):
        """Generate seeds + 1, + 2, ... of an earlier take's request until there are `n` takes; returns their ids.

        Args:
            take_id: the take_id that /generate returned
            n: how many takes of the request in all, the earlier one included (2-8)
        """
        stored = self.takes.get(take_id or "")
        if stored is None:
            raise gr.Error("Generate a take first: best of N makes more seeds of the take shown.")
        if not isinstance(n, int | float) or not BEST_OF[0] <= n <= BEST_OF[1] or int(n) != n:
            raise gr.Error(f"Best of N takes a whole N from {BEST_OF[0]} to {BEST_OF[1]}.")
        values = request_to_values(stored.take.request)
        ids = [take_id]
        for offset in range(1, int(n)):
            answer = self.studio.generate(
                **{**values, "seed": values["seed"] + offset}, request=request, progress=progress
            )
            ids.append(answer[4])
        return ids

    def rank(self, take_ids, history, enabled: bool = True):
        """Score a best-of-N request's takes and put them first in the history, best first."""
        ids = [i for i in take_ids if isinstance(i, str) and self.takes.get(i) is not None] if take_ids else []
        if not ids:
            raise gr.Error("Those takes are no longer on the server.")
        if not enabled:
            return SCORING_OFF, None, self._first(ids, history), ids[0], gr.update()
        cards = {take_id: self._card_of(take_id) for take_id in ids}
        ids.sort(key=lambda take_id: -_number(cards[take_id].score, float("-inf")))
        best = cards[ids[0]]
        return card_html(best), _json(best), self._first(ids, history), ids[0], ORDERS[1]

    def _first(self, ids: list[str], history) -> list[dict]:
        for take_id in reversed(ids):
            history = self.studio.remember(take_id, history)
        return history

    # --- the gallery ------------------------------------------------------------------------------------

    def ordered(self, history, order: str = ORDERS[0]) -> list[dict]:
        """The browser's history with each record's score (where its take has a card), in `order`."""
        records = []
        for rec in clean_history(history):
            with self._lock:
                card = self.cards.get(rec["id"])
            records.append({**rec, "score": card.score} if card is not None else rec)
        if order == ORDERS[1]:
            return sorted(records, key=lambda rec: -_number(rec.get("score"), float("-inf")))
        return sorted(records, key=lambda rec: -_number(rec.get("number"), 0))


def voice_card_used(pick, cards) -> Card | None:
    """The character card "Use the card" just applied, when it has a voice recording (else None)."""
    for record in clean_cards(cards):
        if record["name"] == pick:
            card = Card.from_record(record)
            return card if card.voice is not None else None
    return None


def _number(value, missing: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else missing


def _json(card: Scorecard) -> dict:
    return asdict(card)


def gallery_listing(scorer: Scorer):
    """The studio's gallery listing (`Studio.gallery`) of the history with scores, in the chosen order."""

    def gallery(history, order: str = ORDERS[0]):
        return scorer.studio.gallery(scorer.ordered(history, order))

    return gallery


# --- The card as HTML (every text escaped: transcripts and prompts are user or model text) ---


def card_html(card: Scorecard) -> str:
    """The card's rows (`Scorecard.rows`, the terminal's too) as a table, differing words and flags marked."""
    e = html.escape
    rows = []
    for name, text in card.rows():
        if name == HEARD:
            value = f"{_marked(card)} <small>({e(card.language or '-')})</small>"
        elif name == FLAG:
            value = f"<span class='flag'>{e(text)}</span>"
        else:
            value = e(text)
        rows.append(f"<tr><th>{e(name)}</th><td>{value}</td></tr>")
    score = "–" if card.score is None else f"{card.score:.0f} / 100"
    return f"<div class='scorecard'><b>Scorecard: {score}</b><table>{''.join(rows)}</table></div>"


def _marked(card: Scorecard) -> str:
    """The transcript with its differences from the expected line: missing words struck, extra ones marked."""
    if not card.diff:
        return html.escape(repr(card.transcript))
    out = []
    for run in card.diff:
        expected, heard = html.escape(run["expected"]), html.escape(run["heard"])
        if run["op"] == "equal":
            out.append(heard)
        else:
            out.append((f"<del>{expected}</del>" if expected else "") + (f"<ins>{heard}</ins>" if heard else ""))
    return " ".join(out)


# --- Layout and events (app.py calls these) ---


def card_controls(p: SimpleNamespace) -> None:
    """Under the timing table: the switch and the card."""
    p.score_on = gr.Checkbox(True, label="Score each take (words, sync, sound; on the CPU)", elem_id="score-on")
    p.card = gr.HTML(elem_id="scorecard")
    p.voice_card = gr.State(None)  # the character card last used, when it has a voice: takes are compared with it
    with gr.Accordion("Scorecard as JSON", open=False):
        p.card_json = gr.JSON(label="Scorecard", elem_id="scorecard-json")


def order_control(p: SimpleNamespace) -> None:
    """In the takes gallery: newest first or best score first."""
    p.order = gr.Radio(list(ORDERS), value=ORDERS[0], label="Order takes", elem_id="takes-order")


def best_of_controls(p: SimpleNamespace) -> None:
    """Under the Generate button: more seeds of the take shown, ranked by their cards."""
    with gr.Row():
        p.best_n = gr.Slider(*BEST_OF, value=4, step=1, label="Takes in all", elem_id="best-n")
        p.best_of = gr.Button("Best of N seeds of this take", elem_id="best-of")
    p.best_ids = gr.JSON(visible=False)


def score_controls(p: SimpleNamespace) -> None:
    """Score an uploaded video (what /score does in the page)."""
    with gr.Accordion("Score a video", open=False, elem_id="score-upload"):
        p.score_video = gr.Video(label="A video with sound", sources=["upload"], elem_id="score-video")
        p.score_prompt = gr.Textbox(label="Its prompt (or the line it should say)", lines=2, elem_id="score-prompt")
        p.score_audio = gr.Audio(
            label="A recording of the voice it should have (optional)",
            sources=["upload"],
            type="filepath",
            elem_id="score-audio",
        )
        p.score_button = gr.Button("Score this video", elem_id="score-button")


def wire_scoring(
    p: SimpleNamespace, scorer: Scorer, takes_done: list, takes_shown: list, listing: dict, gpu_job: dict
) -> None:
    """Score each finished take (`takes_done`) off the GPU queue and list the gallery again; show the card of a
    take picked (`takes_shown`); `/score`; best of N (seeds on the GPU queue, ranked on the scoring one)."""
    private = {"api_visibility": "private"}
    scoring = {"concurrency_limit": 1, "concurrency_id": SCORE_JOBS}
    card = {"fn": scorer.card_for_take, "inputs": [p.take_id, p.score_on], "outputs": [p.card, p.card_json]}
    made = {**card, "inputs": [p.take_id, p.score_on, p.voice_card]}  # a new take: its card's voice, if any
    for done in takes_done:
        done.success(**made, **scoring, **private).success(**listing, **private)
    p.cards.use.click(voice_card_used, [p.cards.pick, p.cards.cards], p.voice_card, **private)
    for shown in takes_shown:
        shown.success(**card, **scoring, **private)
    p.order.change(**listing, **private)
    ranked = p.best_of.click(scorer.best_of, [p.take_id, p.best_n], p.best_ids, api_name="best_of", **gpu_job)
    ranked = ranked.success(
        scorer.rank,
        [p.best_ids, p.history, p.score_on],
        [p.card, p.card_json, p.history, p.take_id, p.order],
        **scoring,
        **private,
    )
    ranked.success(**listing, **private)
    p.score_button.click(
        scorer.score,
        [p.take_id, p.score_video, p.score_prompt, p.score_audio],
        [p.card, p.card_json],
        api_name="score",
        **scoring,
    )
