"""Words: what the take says (faster-whisper, CPU int8) against the `Dialogue:` lines of its prompt.

CER for CJK languages (the prompt format spaces their characters apart, which are not words), WER otherwise;
both sides normalised first, as ASR benchmarks do.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from magihuman.prompts import get_language, parse_prompt
from magihuman.score.clip import SAMPLE_RATE

DEFAULT_ASR_MODEL = "base"  # multilingual, 145 MB; `large-v3` is the choice for numbers comparable to papers
ASR_MODEL_ENV = "MAGIHUMAN_ASR_MODEL"
CER_LANGUAGES = frozenset({"Mandarin", "Cantonese", "Japanese", "Korean"})
WHISPER_CODES = {
    "Mandarin": "zh",
    "Cantonese": "yue",
    "English": "en",
    "Japanese": "ja",
    "Korean": "ko",
    "German": "de",
    "French": "fr",
}
_SAME_LANGUAGE = {"yue": {"yue", "zh"}}  # a model without a Cantonese token hears it as Chinese
TOKENS_PER_SECOND = 15  # fast speech in a CJK language is ~10 tokens/s; more is a decoding loop
_LOCK = threading.Lock()  # one transcription at a time: a CTranslate2 model keeps one pool of CPU threads


@dataclass(frozen=True)
class Expected:
    """What the prompt asks to be said: its lines joined, their language (None when lines mix languages)."""

    text: str
    language: str | None


@dataclass(frozen=True)
class Heard:
    transcript: str
    language: str  # Whisper's code, e.g. "en"
    language_probability: float


def expected_speech(prompt: str) -> Expected | None:
    """The `Dialogue:` lines of a prompt in the official format; a prompt with no blocks at all is taken as
    the line itself (`--prompt "Hello there"`); a formatted prompt without dialogue expects nothing."""
    description, lines, _ = parse_prompt(prompt)
    if lines:
        languages = {line.language for line in lines}
        language = languages.pop() if len(languages) == 1 else None
        if language is not None:
            try:
                language = get_language(language).name
            except ValueError:
                language = None
        return Expected(" ".join(line.text for line in lines), language)
    if "Background Sound" in prompt or not description:
        return None
    return Expected(description, None)


def asr_model_name() -> str:
    return os.environ.get(ASR_MODEL_ENV) or DEFAULT_ASR_MODEL


@lru_cache(maxsize=2)
def _load_model(name: str, pid: int):
    """Keyed by pid: a forked process loads its own (CTranslate2's thread pool does not survive a fork)."""
    from faster_whisper import WhisperModel

    if not Path(name).is_dir():
        print(
            f"scorecard: loading ASR model {name!r} (downloaded into the Hugging Face cache on first use)",
            file=sys.stderr,
        )
    try:
        return WhisperModel(name, device="cpu", compute_type="int8", cpu_threads=2)
    except Exception as exc:  # noqa: BLE001  (hub, file and CTranslate2 errors alike: the card says why)
        raise RuntimeError(
            f"the ASR model {name!r} could not be loaded ({type(exc).__name__}: {exc}); set {ASR_MODEL_ENV} to a "
            f"local faster-whisper (CTranslate2) folder, or allow its download once"
        ) from exc


def asr_model():
    return _load_model(asr_model_name(), os.getpid())


def transcribe(audio: np.ndarray, language: str | None) -> Heard:
    """Transcribe 16 kHz mono audio in `language` (None: the one heard). The language heard is reported apart
    (a wrong one is flagged) while the words are read in the requested one, as ASR benchmarks do."""
    model = asr_model()
    with _LOCK:
        if model.model.is_multilingual:
            detected, probability, _ = model.detect_language(audio)
            code = _model_code(model, language) if language else detected
        else:
            detected, probability, code = "en", 1.0, "en"
        segments, _ = model.transcribe(
            audio,
            language=code,
            beam_size=5,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            # A hallucination loop on a hard clip ("Z1,Z1,Z1,...") would otherwise run to Whisper's 448-token cap.
            max_new_tokens=min(440, 20 + round(TOKENS_PER_SECOND * len(audio) / SAMPLE_RATE)),
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
    return Heard(text, detected, float(probability))


def _model_code(model, language: str) -> str:
    code = WHISPER_CODES[language]
    return code if code in model.supported_languages else "zh"  # Cantonese on a model without `yue`


def language_matches(requested: str, heard_code: str) -> bool:
    wanted = WHISPER_CODES[requested]
    return heard_code in _SAME_LANGUAGE.get(wanted, {wanted})


# --- Normalisation and error rates ---

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
_ONES += "seventeen eighteen nineteen"
_ONES_WORDS = _ONES.split()
_TENS_WORDS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SPELLING = (
    (re.compile(r"(\w{2,})our(s|ed|ing)?\b"), r"\1or\2"),
    (re.compile(r"(\w{2,})is(e|ed|es|ing)\b"), r"\1iz\2"),
)


def english_number(n: int) -> str:
    """0 ≤ n < 10⁹ in English words ("eleven", "two hundred five"); larger numbers stay digits."""
    if n >= 10**9:
        return str(n)
    if n < 20:
        return _ONES_WORDS[n]
    if n < 100:
        return _TENS_WORDS[n // 10] + ("" if n % 10 == 0 else " " + _ONES_WORDS[n % 10])
    size, name = next((s, w) for s, w in ((10**6, "million"), (1000, "thousand"), (100, "hundred")) if n >= s)
    rest = n % size
    return f"{english_number(n // size)} {name}" + (f" {english_number(rest)}" if rest else "")


def normalise(text: str, language: str | None) -> str:
    """Lower case, no punctuation; English numbers spelled out, -our/-ise unified (both sides, so rules only merge)."""
    text = unicodedata.normalize("NFKC", text).lower()
    if language in (None, "English"):
        text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
        text = re.sub(r"\d+", lambda m: " " + english_number(int(m.group())) + " ", text)
        for pattern, replacement in _SPELLING:
            text = pattern.sub(replacement, text)
    kept = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text)
    return " ".join(kept.split())


def error_rate(expected: str, heard: str, language: str | None) -> tuple[str, float, list[dict[str, str]]]:
    """("wer" or "cer", the rate, a diff of {"op", "expected", "heard"} runs for marking differing words)."""
    import jiwer

    metric = "cer" if language in CER_LANGUAGES else "wer"
    ref, hyp = normalise(expected, language), normalise(heard, language)
    if metric == "cer":
        ref, hyp = " ".join(ref.replace(" ", "")), " ".join(hyp.replace(" ", ""))
    if not ref:
        return metric, (0.0 if not hyp else 1.0), []
    if not hyp:
        return metric, 1.0, [{"op": "delete", "expected": ref, "heard": ""}]
    out = jiwer.process_words(ref, hyp)
    ref_words, hyp_words = out.references[0], out.hypotheses[0]
    joiner = "" if metric == "cer" else " "
    diff = [
        {
            "op": chunk.type,
            "expected": joiner.join(ref_words[chunk.ref_start_idx : chunk.ref_end_idx]),
            "heard": joiner.join(hyp_words[chunk.hyp_start_idx : chunk.hyp_end_idx]),
        }
        for chunk in out.alignments[0]
    ]
    return metric, float(out.wer), diff
