"""The scorecard's voice part with its real encoder weights (Resemblyzer's wheel), offline: espeak-ng voices on
different lines, the mel front end, `--audio` in the CLI, a missing package, and the studio comparing a take
with the voice of the character card it was made from."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest

from magihuman.__main__ import main
from magihuman.errors import InputError
from magihuman.media import load_audio
from magihuman.score import score_take
from magihuman.score.clip import SAMPLE_RATE
from magihuman.score.voice import _hz_to_mel, _mel_filters, _mel_to_hz, mel_frames, voice_embedding
from studio.cards import save_card
from studio.handlers import Studio
from studio.runtime import EngineSlot
from studio.scorecard import Scorer, card_html, voice_card_used
from tests.scoring import espeak_wav, portrait_take

LINES = (
    "The harbour master counted eleven boats before the morning fog rolled in.",
    "Please bring my green umbrella to the station tomorrow.",
)
VOICE, OTHER_VOICE = "en-us", "en-us+f3"  # espeak-ng's default male voice and a female variant


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """(voice, line index) -> a 16 kHz WAV of espeak-ng saying that line in that voice."""
    folder = tmp_path_factory.mktemp("voices")
    made = {}
    for voice in (VOICE, OTHER_VOICE):
        for index, line in enumerate(LINES):
            made[voice, index] = espeak_wav(line, voice, folder / f"{voice.replace('+', '-')}-{index}.wav")
    return made


def _hide_packages(monkeypatch) -> set[str]:
    """Packages the scorecard will find missing: at first those of the words, sync and sound parts (tests/
    test_score.py's subjects; only timing and voice run here, which keeps this file fast); add to the returned
    set to hide more."""
    real, hidden = importlib.util.find_spec, {"faster_whisper", "cv2", "speechmos"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    return hidden


def _embedding(path) -> np.ndarray:
    return voice_embedding(load_audio(path, sample_rate=SAMPLE_RATE))


def test_the_same_voice_scores_clearly_higher_than_another(recordings):
    a, b = _embedding(recordings[VOICE, 0]), _embedding(recordings[VOICE, 1])
    other = _embedding(recordings[OTHER_VOICE, 1])
    same, different = float(a @ b), float(a @ other)
    print(f"\nvoice similarity: same voice, other line {same:.3f}; other voice {different:.3f}")
    assert np.linalg.norm(a) == pytest.approx(1, abs=1e-5) and (a >= 0).all()
    assert same >= 0.8 and different <= 0.75 and same - different >= 0.15


def test_mel_front_end_puts_a_tone_in_its_band():
    seconds = 1.0
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    mel = mel_frames((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    assert mel.shape == (len(t) // 160 + 1, 40)
    centres = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), 42))[1:-1]
    assert int(np.argmax(mel[50])) == int(np.argmin(np.abs(centres - 1000)))
    assert _hz_to_mel(1000.0) == pytest.approx(15.0) and _mel_to_hz(_hz_to_mel(3210.0)) == pytest.approx(3210.0)
    assert _mel_filters().shape == (40, 201) and (_mel_filters().sum(axis=1) > 0).all()


def test_cli_reports_voice_similarity_and_a_missing_package(recordings, tmp_path, capsys, monkeypatch):
    hidden = _hide_packages(monkeypatch)
    take = portrait_take(tmp_path / "take.mp4", load_audio(recordings[VOICE, 0], sample_rate=44_100))
    assert main(["score", str(take), "--prompt", LINES[0], "--audio", str(recordings[VOICE, 1]), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    print(f"\nCLI voice_similarity, same voice on another line: {card['voice_similarity']}")
    assert "voice" not in card["unavailable"] and card["voice_reference"] == recordings[VOICE, 1].name
    assert card["voice_similarity"] >= 0.8

    hidden.add("resemblyzer")
    card = score_take(take, prompt=LINES[0], audio=recordings[VOICE, 1])
    assert card.voice_similarity is None and "--no-deps resemblyzer" in card.unavailable["voice"]
    assert card.speech_start_s is not None  # the other parts still ran
    with pytest.raises(InputError, match="missing.wav was not found"):
        score_take(take, audio=tmp_path / "missing.wav")


def test_studio_compares_a_take_with_its_cards_voice(tmp_path, recordings, monkeypatch):
    """A lip-sync take carries its recording: against the card whose voice that is (another line), it scores
    clearly higher than against a card with another voice. "Use the card" hands over only cards with a voice."""
    cards, _ = save_card("Anna", None, str(recordings[VOICE, 1]), "", "A woman", "English", None, True, [])
    cards, _ = save_card("Bea", None, str(recordings[OTHER_VOICE, 1]), "", "A woman", "English", None, True, cards)
    cards, _ = save_card("Mute", None, None, "", "A man", "English", None, True, cards)
    anna, bea = voice_card_used("Anna", cards), voice_card_used("Bea", cards)
    assert anna.name == "Anna" and bea.voice is not None and voice_card_used("Mute", cards) is None

    _hide_packages(monkeypatch)
    scorer = Scorer(Studio(EngineSlot(lambda status: None)))  # never started: no engine needed
    similarity = {}
    for card in (anna, bea):
        folder = tmp_path / card.name
        folder.mkdir()
        video = portrait_take(folder / "take.mp4", load_audio(recordings[VOICE, 0], sample_rate=44_100))
        take = SimpleNamespace(request=SimpleNamespace(prompt=LINES[0]), folder=folder, base_video_path=video)
        take_id = scorer.takes.add(SimpleNamespace(take=take, timings={}, video_path=video, sr_video_path=None))
        page, data = scorer.card_for_take(take_id, True, card)
        assert data["voice_reference"] == f"the recording of card {card.name!r}"
        assert (folder / "card-voice" / "voice.ogg").is_file()  # with the take: deleted with it
        assert f"card &#x27;{card.name}&#x27;" in page and page == card_html(scorer.cards[take_id])
        similarity[card.name] = data["voice_similarity"]
    print(f"\ntake vs card voices: {similarity}")
    assert similarity["Anna"] - similarity["Bea"] >= 0.15, similarity

    # /score with a recording: a card of its own, against that file; the take's card in the gallery stays.
    _, data = scorer.score(take_id, audio=str(recordings[VOICE, 1]))
    assert data["voice_reference"] == recordings[VOICE, 1].name
    assert data["voice_similarity"] - similarity["Bea"] >= 0.15
    assert scorer.cards[take_id].voice_reference == "the recording of card 'Bea'"
