"""The take scorecard with its real models, offline: espeak-ng speech under the example portrait, a drawn
mouth that follows (or lags) the voice, silence and cut-off speech; the CLI and its errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from magihuman.__main__ import main
from magihuman.errors import InputError
from magihuman.prompts import DialogueLine, build_prompt
from magihuman.score import score_take
from magihuman.score.clip import read_take
from magihuman.score.sync import MIN_CONFIDENCE, estimate_sync
from magihuman.score.timing import speech_span
from magihuman.score.words import ASR_MODEL_ENV, error_rate, normalise
from tests.scoring import FPS, RATE, envelope, portrait_take, speak, whisper_base_folder

ENGLISH = "The harbour master counted eleven boats before the morning fog rolled in."
ENGLISH_OTHER = "Please bring my green umbrella to the station tomorrow."
GERMAN = "Ich habe heute keine Zeit."
GERMAN_OTHER = "Der Zug nach Berlin fährt um acht Uhr ab."


def _prompt(line: str, language: str) -> str:
    return build_prompt("A woman speaks to the camera.", [DialogueLine("The woman", language, line)], None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Whisper base from its wheels, named by the variable the scorecard reads, for this module only."""
    root = tmp_path_factory.mktemp("score")
    patch = pytest.MonkeyPatch()
    patch.setenv(ASR_MODEL_ENV, str(whisper_base_folder(root / "whisper-base")))
    yield root
    patch.undo()


@pytest.fixture(scope="module")
def english(folder):
    return speak(ENGLISH, "en-us", folder)


@pytest.fixture(scope="module")
def english_card(folder, english):
    card = score_take(portrait_take(folder / "english.mp4", english), prompt=_prompt(ENGLISH, "English"))
    print("\nscorecard of the espeak English clip:\n" + card.to_json())
    return card


def test_english_line_is_heard(english_card):
    card = english_card
    assert card.unavailable == {}
    assert card.wer <= 0.3, card.transcript
    assert card.cer is None and card.language == "en" and card.requested_language == "English"
    metric, wrong, _ = error_rate(ENGLISH_OTHER, card.transcript, "English")
    assert metric == "wer" and wrong >= 0.7, card.transcript
    assert 0 <= card.speech_start_s < 0.5 and card.speech_end_s <= card.audio_seconds
    assert card.face_found is True
    assert 1 <= card.dnsmos["overall"] <= 5 and 1 <= card.dnsmos["signal"] <= 5
    keys = json.loads(card.to_json()).keys()
    for key in ("wer", "transcript", "language", "speech_start_s", "speech_end_s", "offset_frames", "dnsmos"):
        assert key in keys


def test_german_line_is_heard(folder):
    take = portrait_take(folder / "german.mp4", speak(GERMAN, "de", folder))
    card = score_take(take, prompt=_prompt(GERMAN, "German"))
    print("\nscorecard of the espeak German clip:\n" + card.to_json())
    assert card.wer <= 0.3, card.transcript
    assert error_rate(GERMAN_OTHER, card.transcript, "German")[1] >= 0.7


def test_mouth_following_the_voice_is_in_sync_and_a_delay_is_measured(folder, english):
    frames = round(len(english) / RATE * FPS)
    mouth = envelope(english, frames)  # the mouth opens with the loudness of the speech
    in_sync = estimate_sync(read_take(portrait_take(folder / "talk.mp4", english, mouth=mouth)))
    assert in_sync.face_found and abs(in_sync.offset_frames) <= 1 and in_sync.confidence > MIN_CONFIDENCE
    assert in_sync.flags() == []
    late = np.concatenate([np.zeros(int(0.2 * RATE), np.float32), english])  # the voice 200 ms = 5 frames late
    delayed = estimate_sync(read_take(portrait_take(folder / "talk-late.mp4", late, seconds=frames / FPS, mouth=mouth)))
    assert abs(delayed.offset_frames - 5) <= 1 and delayed.confidence > MIN_CONFIDENCE
    assert delayed.flags() == [f"mouth and voice {delayed.offset_frames:+d} frames apart"]


def test_still_face_and_no_face(folder, english, english_card):
    assert english_card.offset_confidence == 0.0  # the plain portrait never moves its mouth
    assert "mouth does not follow the voice" in english_card.flags
    no_face = estimate_sync(read_take(portrait_take(folder / "grey.mp4", english, face=False)))
    assert no_face.face_found is False and no_face.flags() == ["no face found"]


def test_silence_is_flagged(folder):
    take = portrait_take(folder / "silent.mp4", np.zeros(2 * RATE, np.float32))
    card = score_take(take, prompt=_prompt("Hello there.", "English"))
    assert card.flags == ["no speech"]
    assert card.speech_start_s is None and card.transcript == "" and card.wer == 1.0


def test_speech_cut_at_the_end_is_flagged(english):
    whole = speech_span(_at_16k(english))
    cut = speech_span(_at_16k(english[: int(2.5 * RATE)]))
    assert whole.flags(len(english) / RATE) == []
    assert cut.flags(2.5) == ["speech cut off at the end"]


def _at_16k(audio: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(audio, 160, 441).astype(np.float32)


def test_normalisation_and_cer():
    assert normalise("The Harbour, 11 boats!", "English") == normalise("the harbor eleven boats", "English")
    assert normalise("1,250 colours", "English") == "one thousand two hundred fifty colors"
    metric, rate, diff = error_rate("今 天 天 气 很 好 。", "今天天气很好", "Mandarin")
    assert (metric, rate) == ("cer", 0.0) and diff[0]["op"] == "equal"
    metric, rate, diff = error_rate("今 天 天 气 很 好", "今天下雨", "Mandarin")
    assert metric == "cer" and rate == pytest.approx(4 / 6)
    assert [d["op"] for d in error_rate("a b c", "a x c", "English")[2]] == ["equal", "substitute", "equal"]


def test_missing_package_is_reported_and_the_rest_still_runs(folder, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "faster_whisper" else real(name, *a)
    )
    take = portrait_take(folder / "quiet.mp4", np.zeros(RATE, np.float32))
    card = score_take(take, prompt="Hello.")
    assert "faster-whisper" in card.unavailable["words"] and card.unavailable["words"].startswith("not available")
    assert card.transcript is None and card.dnsmos is not None and card.flags == ["no speech"]


def test_cli_prints_the_card_and_refuses_bad_files(folder, english_card, capsys, tmp_path):
    take = folder / "english.mp4"
    assert main(["score", str(take), "--prompt", ENGLISH, "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["wer"] == english_card.wer and card["offset_frames"] == english_card.offset_frames
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert main(["score", str(text), "--prompt", ENGLISH]) == 2
    assert "not a video file" in capsys.readouterr().err
    silent_video = tmp_path / "mute.mp4"
    from magihuman.media import write_mp4

    write_mp4(silent_video, np.zeros((5, 64, 64, 3), np.uint8), preset="ultrafast")
    with pytest.raises(InputError, match="no audio track"):
        score_take(silent_video)
    with pytest.raises(InputError, match="more than the 1 s"):
        read_take(take, max_seconds=1)
