"""The scorecard of one take and `score_take`, which fills it part by part.

Each part needs its own optional package and model; one that cannot run is recorded in `unavailable` with the
reason, and the others still run.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from magihuman.media import MEDIA_LIMITS, load_audio
from magihuman.score.clip import MAX_TAKE_SECONDS, SAMPLE_RATE, TakeMedia, read_take
from magihuman.score.sync import MIN_CONFIDENCE

_NEEDS = {
    "words": (("faster_whisper", "faster-whisper"), ("jiwer", "jiwer")),
    "timing": (("silero_vad", "silero-vad"),),
    "sound": (("onnxruntime", "onnxruntime"), ("speechmos", "speechmos")),
    "sync": (("cv2", "opencv-python-headless<5"),),
    "voice": (("resemblyzer", "resemblyzer"),),
}
# How to install a part's packages, where it is not requirements-score.txt: resemblyzer's own dependencies
# (librosa, numba, an old `typing`) are not wanted, only the encoder weights its wheel ships.
_INSTALL = {"voice": "pip install --no-deps resemblyzer==0.1.4"}
FLAG_PENALTY = 10  # points per flag in `score`
HEARD, FLAG = "Heard", "Flag"  # the row names that views mark up
# A voice reference: its first minute is used (a longer recording is cut there, not refused).
REFERENCE_LIMITS = replace(MEDIA_LIMITS, max_audio_seconds=MAX_TAKE_SECONDS)


@dataclass
class Scorecard:
    """How a take did. Rates are 0-1 (lower is better), DNSMOS 1-5, offsets in video frames (positive: the
    voice comes after the mouth). `score` (0-100) ranks takes: see `overall_score`."""

    video_seconds: float
    audio_seconds: float
    fps: float
    expected: str | None = None  # the Dialogue lines the transcript is compared with
    requested_language: str | None = None
    transcript: str | None = None
    language: str | None = None  # Whisper's code for what it heard, e.g. "en"
    language_probability: float | None = None
    wer: float | None = None
    cer: float | None = None
    diff: list[dict[str, str]] = field(default_factory=list)  # word runs: op, expected, heard
    speech_start_s: float | None = None
    speech_end_s: float | None = None
    face_found: bool | None = None
    offset_frames: int | None = None
    offset_confidence: float | None = None
    dnsmos: dict[str, float] | None = None  # overall, signal, background
    voice_similarity: float | None = None  # 0-1 cosine of speaker embeddings, take vs the reference recording
    voice_reference: str | None = None  # what the voice was compared with: a file name, or a character card
    flags: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # part -> why it did not run
    seconds: dict[str, float] = field(default_factory=dict)  # time each part took
    score: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    @property
    def error_rate(self) -> float | None:
        return self.wer if self.wer is not None else self.cer

    def rows(self) -> list[tuple[str, str]]:
        """The card as (name, plain text) rows, for every view (the terminal, the studio)."""
        rows = []
        if self.error_rate is not None:
            name = "WER" if self.wer is not None else "CER"
            rows.append((name, f"{self.error_rate:.1%} against the Dialogue lines"))
        if self.transcript is not None:
            rows.append((HEARD, repr(self.transcript) + (f" ({self.language})" if self.language else "")))
        if self.expected is not None:
            rows.append(("Expected", repr(self.expected)))
        if self.speech_start_s is not None:
            span = f"{self.speech_start_s:.2f}-{self.speech_end_s:.2f} s"
            rows.append(("Speech", f"{span} of {self.audio_seconds:.2f} s"))
        if self.face_found is False:
            rows.append(("Sync", "no face found"))
        elif self.face_found:
            rows.append(("Sync", f"offset {self.offset_frames:+d} frames, confidence {self.offset_confidence:.2f}"))
        if self.dnsmos is not None:
            mos = self.dnsmos
            parts = ", ".join(f"{name} {mos[name]:.2f}" for name in ("overall", "signal", "background"))
            rows.append(("DNSMOS", parts))
        if self.voice_similarity is not None:
            reference = self.voice_reference or "the reference recording"
            rows.append(("Voice", f"similarity {self.voice_similarity:.2f} (0-1) to {reference}"))
        rows += [(FLAG, flag) for flag in self.flags]
        rows += [(part.capitalize(), reason) for part, reason in self.unavailable.items()]
        return rows


def missing_package(part: str) -> str | None:
    """Why `part` cannot run for want of a package ("not available: ..."), or None when all are installed."""
    for module, pip_name in _NEEDS[part]:
        if importlib.util.find_spec(module) is None:
            install = _INSTALL.get(part, "pip install -r requirements-score.txt")
            return f"not available: the {pip_name!r} package is not installed ({install})"
    if part == "sync":
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            return "not available: this OpenCV has no Haar face detector (install opencv-python-headless<5)"
    return None


def score_take(video: str | Path, prompt: str = "", audio: str | Path | None = None) -> Scorecard:
    """Score a take (an MP4 with sound) against its `prompt` and, given `audio`, its voice against that recording."""
    take = read_take(video)
    reference = None if audio is None else load_audio(audio, sample_rate=SAMPLE_RATE, limits=REFERENCE_LIMITS)
    card = Scorecard(round(take.video_seconds, 3), round(take.audio_seconds, 3), round(take.fps, 3))
    speech = _run_part(card, "timing", lambda: _timing(card, take))
    _run_part(card, "words", lambda: _words(card, take, prompt, speech))
    _run_part(card, "sync", lambda: _sync(card, take, speech))
    _run_part(card, "sound", lambda: _sound(card, take))
    if reference is not None:
        card.voice_reference = Path(audio).name
        _run_part(card, "voice", lambda: _voice(card, take, reference, speech))
    card.score = overall_score(card)
    return card


def _run_part(card: Scorecard, part: str, run: Callable[[], object]) -> object:
    reason = missing_package(part)
    if reason is not None:
        card.unavailable[part] = reason
        return None
    start = time.perf_counter()
    try:
        return run()
    except (OSError, RuntimeError, ValueError) as exc:  # a model that cannot be found or loaded
        card.unavailable[part] = f"not available: {type(exc).__name__}: {exc}"
        return None
    finally:
        card.seconds[part] = round(time.perf_counter() - start, 3)


def _timing(card: Scorecard, take: TakeMedia):
    from magihuman.score.timing import speech_span

    span = speech_span(take.audio)
    card.speech_start_s = None if span.start is None else round(span.start, 3)
    card.speech_end_s = None if span.end is None else round(span.end, 3)
    card.flags += span.flags(take.audio_seconds)
    return span


def _words(card: Scorecard, take: TakeMedia, prompt: str, speech) -> None:
    from magihuman.score.words import error_rate, expected_speech, language_matches, transcribe

    expected = expected_speech(prompt)
    if expected is not None:
        card.expected, card.requested_language = expected.text, expected.language
    if speech is not None and not speech.segments:
        card.transcript = ""  # Whisper invents words in silence; the VAD heard none
    else:
        heard = transcribe(take.audio, expected.language if expected else None)
        card.transcript, card.language = heard.transcript, heard.language
        card.language_probability = round(heard.language_probability, 3)
        if expected and expected.language and not language_matches(expected.language, heard.language):
            card.flags.append(f"heard language {heard.language!r}, asked for {expected.language}")
    if expected is not None:
        metric, rate, card.diff = error_rate(expected.text, card.transcript, expected.language)
        setattr(card, metric, round(rate, 3))


def _sync(card: Scorecard, take: TakeMedia, speech) -> None:
    from magihuman.score.sync import estimate_sync

    estimate = estimate_sync(take)
    card.face_found, card.offset_frames, card.offset_confidence = (
        estimate.face_found,
        estimate.offset_frames,
        estimate.confidence,
    )
    if estimate.face_found is False or speech is None or speech.segments:  # without speech there is no sync
        card.flags += estimate.flags()


def _sound(card: Scorecard, take: TakeMedia) -> None:
    from magihuman.score.sound import dnsmos

    mos = dnsmos(take.audio)
    card.dnsmos = {
        "overall": round(mos.overall, 3),
        "signal": round(mos.signal, 3),
        "background": round(mos.background, 3),
    }


def _voice(card: Scorecard, take: TakeMedia, reference, speech) -> None:
    from magihuman.score.voice import voice_similarity

    if speech is not None and not speech.segments:
        return  # "no speech" is flagged already; a voice without speech cannot be compared
    card.voice_similarity = round(voice_similarity(take.audio, reference), 3)


def overall_score(card: Scorecard) -> float | None:
    """A 0-100 number for sorting takes (a heuristic, not a calibrated measure): the mean of the parts that ran,
    each 0-1, minus `FLAG_PENALTY` per flag."""
    parts = []
    if card.error_rate is not None:
        parts.append(1 - min(card.error_rate, 1.0))
    if card.dnsmos is not None:
        parts.append(min(max((card.dnsmos["overall"] - 1) / 4, 0.0), 1.0))
    if card.face_found is not None:
        clear = card.face_found and card.offset_confidence >= MIN_CONFIDENCE
        parts.append(max(0.0, 1 - abs(card.offset_frames) / 5) if clear else 0.0)
    if not parts:
        return None
    return round(max(0.0, 100 * sum(parts) / len(parts) - FLAG_PENALTY * len(card.flags)), 1)
