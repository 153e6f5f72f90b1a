"""Prompt building in the model's "Enhanced Prompt" format, shared by the UI and the CLI.

The model has no language flag and no dialogue field: everything it knows about the speech is in the text.
The format is an English main body that quotes every spoken line inline, then

    Dialogue:
    <character description, Language>: "line"

    Background Sound:
    <description> | <No prominent background sound>

with every spoken line appearing exactly twice and CJK text written with a space between every character.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from magihuman.config import REQUEST_LIMITS, TEXT_ENCODER
from magihuman.take_plan import MAX_TAKE_SECONDS


@dataclass(frozen=True)
class Language:
    name: str
    cjk_spaced: bool
    # characters/s for CJK, else syllables/s: rough rates for a friendly warning, not facts about the model
    units_per_second: float
    silent_final_e: bool = False  # "make", "livre": a final e adds no syllable when estimating


LANGUAGES: tuple[Language, ...] = (
    Language("Mandarin", cjk_spaced=True, units_per_second=4.5),
    Language("Cantonese", cjk_spaced=True, units_per_second=5.0),
    Language("English", cjk_spaced=False, units_per_second=4.0, silent_final_e=True),
    # Kanji often carry two morae and kana one; ~6 characters/s is a relaxed ~7-8 morae/s.
    Language("Japanese", cjk_spaced=True, units_per_second=6.0),
    Language("Korean", cjk_spaced=True, units_per_second=5.0),
    Language("German", cjk_spaced=False, units_per_second=4.0),
    Language("French", cjk_spaced=False, units_per_second=5.0, silent_final_e=True),
)
LANGUAGE_NAMES: tuple[str, ...] = tuple(lang.name for lang in LANGUAGES)


def get_language(name: str) -> Language:
    wanted = name.strip().lower()
    for lang in LANGUAGES:
        if lang.name.lower() == wanted:
            return lang
    raise ValueError(f"unknown language {name!r}; choose one of {', '.join(LANGUAGE_NAMES)}")


# Invisible format characters that only confuse the tokenizer: zero-width space, LRM/RLM, bidi embeddings,
# overrides and isolates, word joiner, BOM, soft hyphen. The zero-width joiner stays (emoji sequences).
_INVISIBLE = frozenset("\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff\u00ad")

_CJK_RANGES = (
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3040, 0x309F),  # Hiragana
    (0x30A0, 0x30FF),  # Katakana (its middle dot ・ is punctuation and filtered out by category)
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK Unified Ideographs extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9D),  # half-width Katakana
    (0x20000, 0x3134F),  # CJK extensions B-G
)


def is_cjk(char: str) -> bool:
    if unicodedata.category(char).startswith("P"):
        return False
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def clean_text(text: str) -> str:
    """NFC, without control and invisible characters, every whitespace run one space."""
    # NFC so that decomposed Hangul (as some keyboards and macOS file names produce) becomes syllables.
    text = unicodedata.normalize("NFC", text)
    kept = []
    for char in text:
        if char.isspace():
            kept.append(" ")
        elif unicodedata.category(char) not in ("Cc", "Cs") and char not in _INVISIBLE:
            kept.append(char)
    return " ".join("".join(kept).split())


def space_cjk(text: str) -> str:
    """One space between adjacent characters where either is a CJK letter, punctuation attached as in the
    official examples (`一 辈 子，还 带`, `我 用 iPhone 拍 的`). Idempotent."""
    text = clean_text(text)
    out: list[str] = []
    for char in text:
        if out and _needs_space(out[-1], char):
            out.append(" ")
        out.append(char)
    return "".join(out)


def _needs_space(prev: str, char: str) -> bool:
    if prev == " " or char == " ":
        return False
    if not (is_cjk(prev) or is_cjk(char)):
        return False
    # Punctuation hugs its neighbours; combining marks and joiners belong to the character before them.
    for c in (prev, char):
        if unicodedata.category(c).startswith("P"):
            return False
    return unicodedata.category(char)[0] not in ("M", "C")


NO_BACKGROUND = "No prominent background sound"
DEFAULT_SPEAKER = "Speaker"

# Descriptive speakers get an article ("The young woman says"); names do not ("Marie Curie says").
_COMMON_NOUNS = frozenset("man woman boy girl person speaker host narrator child lady gentleman guy".split())
_SENTENCE_END = ".!?…。！？\"'”’)»」』"
_DOUBLE_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"'})


@dataclass(frozen=True)
class DialogueLine:
    speaker: str
    language: str
    text: str


def build_prompt(description: str, lines: list[DialogueLine], background: str | None) -> str:
    """A prompt in the official format; an unquoted line gets an appended `The woman says: "..."` so each line
    appears exactly twice. Nothing is escaped: this is model text, not HTML."""
    body = space_cjk(description).translate(_DOUBLE_QUOTES)
    tagged: list[tuple[str, Language, str]] = []
    for line in lines:
        lang = get_language(line.language)
        text = _clean_line(line.text)
        if text:
            speaker = space_cjk(line.speaker).replace("<", "").replace(">", "").strip() or DEFAULT_SPEAKER
            tagged.append((speaker, lang, text))

    inline = [
        f'{_subject(speaker)} says: "{text}"' + ("" if text.endswith(tuple(_SENTENCE_END)) else ".")
        for speaker, _, text in tagged
        if f'"{text}"' not in body
    ]
    if inline:
        if body and not body.endswith(tuple(_SENTENCE_END)):
            body += "."
        body = " ".join([body, *inline]) if body else " ".join(inline)

    blocks = [body] if body else []
    if tagged:
        rows = [f'<{speaker}, {lang.name}>: "{text}"' for speaker, lang, text in tagged]
        blocks.append("\n".join(["Dialogue:", *rows]))
    sound = space_cjk(background or "").strip("<> ") or NO_BACKGROUND
    blocks.append(f"Background Sound:\n<{sound}>")
    return "\n\n".join(blocks)


def _clean_line(text: str) -> str:
    """A spoken line, CJK-spaced, without wrapping quotes; inner double quotes become single quotes so that
    the `"line"` in the Dialogue block stays unambiguous."""
    text = space_cjk(text).translate(_DOUBLE_QUOTES)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text.replace('"', "'")


def speaker_subject(speaker: str) -> str:
    return _subject(speaker)


def _subject(speaker: str) -> str:
    words = speaker.split()
    first = words[0].lower()
    if first in ("a", "an", "the"):
        return speaker[0].upper() + speaker[1:]
    if all(not w[:1].islower() for w in words) and first not in _COMMON_NOUNS:
        return speaker
    return "The " + speaker[0].lower() + speaker[1:]


_DIALOGUE_ROW = re.compile(r'^<(?P<speaker>.+),\s*(?P<language>[^,<>]+)>\s*:\s*"(?P<text>.*)"\s*$')
_HEADER = re.compile(r"^\s*(Dialogue|Background Sound)\s*:\s*$", re.MULTILINE)


def parse_prompt(prompt: str) -> tuple[str, list[DialogueLine], str | None]:
    """(description, lines, background) for `build_prompt`. Lenient: rows that do not match are ignored."""
    parts = _HEADER.split(prompt)  # [body, name, content, name, content, ...]
    description = parts[0].strip()
    lines: list[DialogueLine] = []
    background = None
    for name, content in zip(parts[1::2], parts[2::2], strict=True):
        if name == "Dialogue":
            for row in content.splitlines():
                match = _DIALOGUE_ROW.match(row.strip())
                if match:
                    lines.append(DialogueLine(match["speaker"].strip(), match["language"].strip(), match["text"]))
        else:
            sound = content.strip().strip("<>").strip()
            # The official example writes "...background sound effects".
            background = None if sound.lower().startswith(NO_BACKGROUND.lower()) or not sound else sound
    return description, lines, background


_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script)
_VOWEL_GROUP = re.compile(r"[aeiouyàâäáãåæéèêëíìîïóòôöõøœúùûüÿ]+")
_SENTENCE_PAUSE = re.compile(r"[.!?…]+(?=\s)|[。！？]+")
_CLAUSE_PAUSE = re.compile(r"[,;:](?=\s)|[，、；：]")
SENTENCE_PAUSE_S, CLAUSE_PAUSE_S, TURN_GAP_S = 0.3, 0.15, 0.3
WARNING_SLACK_S = 0.5  # the rates are rough: only warn when the overshoot is clear


def estimate_speech_seconds(text: str, language: str) -> float:
    """Rough seconds to say `text` comfortably, pauses at breaks included."""
    lang = get_language(language)
    text = clean_text(text)
    units = 0
    for word in _WORD.findall(text):
        cjk = sum(is_cjk(c) for c in word)
        units += cjk
        if cjk < len(word):
            units += _syllables("".join(c for c in word if not is_cjk(c)).lower(), lang.silent_final_e)
    units += sum(c.isdigit() for c in text)
    inner = text.rstrip(_SENTENCE_END + ",;:，、；： ")  # the pause after the last word is not speech
    pauses = SENTENCE_PAUSE_S * len(_SENTENCE_PAUSE.findall(inner)) + CLAUSE_PAUSE_S * len(_CLAUSE_PAUSE.findall(inner))
    return units / lang.units_per_second + (pauses if units else 0.0)


def _syllables(word: str, silent_final_e: bool) -> int:
    groups = len(_VOWEL_GROUP.findall(word))
    if silent_final_e and groups > 1 and word.endswith("e") and not word.endswith(("le", "ee")):
        groups -= 1
    # Elisions such as French "c'" and "l'" count nothing; a vowel-less word ("hmm", "Brr") still takes a beat.
    return groups if groups or len(word) < 2 else 1


def line_length_warning(lines: list[DialogueLine], seconds: float) -> str | None:
    """A friendly warning when the lines likely need more time than a clip of `seconds`, else None."""
    spoken = [line for line in lines if clean_text(line.text)]
    needed = sum(estimate_speech_seconds(line.text, line.language) for line in spoken)
    needed += TURN_GAP_S * max(len(spoken) - 1, 0)
    if needed <= seconds + WARNING_SLACK_S:
        return None
    what = "the line" if len(spoken) == 1 else "the lines"
    if seconds < MAX_TAKE_SECONDS:  # past MAX_SECONDS the clip becomes a long take, made window by window
        fix = f"shorten {what} or raise the duration"
    else:
        fix = f"shorten {what} (takes are at most {MAX_TAKE_SECONDS} s)"
    return f"The dialogue needs about {math.ceil(needed)} s of speech; the clip is {seconds:g} s: {fix}."


def prompt_length_warning(prompt: str, count_tokens: Callable[[str], int] | None = None) -> str | None:
    """A warning when the prompt is over the request limit or the encoder's token cap, else None. The cap
    matters: the Dialogue and Background Sound blocks come last, so they are the first text cut."""
    if len(prompt) > REQUEST_LIMITS.max_prompt_chars:
        return f"The prompt has {len(prompt)} characters; the limit is {REQUEST_LIMITS.max_prompt_chars}."
    if count_tokens is not None:
        tokens = count_tokens(prompt)
        if tokens > TEXT_ENCODER.max_tokens:
            return (
                f"The prompt is {tokens} tokens; the model reads only the first {TEXT_ENCODER.max_tokens}, so "
                "the end (the Dialogue and Background Sound blocks) is cut: shorten the description."
            )
    return None


@dataclass(frozen=True)
class PromptExample:
    """An example in structured form, for the dialogue builder; its description already quotes the line."""

    title: str
    description: str
    speaker: str
    language: str
    line: str
    background: str | None

    def prompt(self) -> str:
        return build_prompt(self.description, [DialogueLine(self.speaker, self.language, self.line)], self.background)


EXAMPLES: tuple[PromptExample, ...] = (
    PromptExample(
        title="Café owner (English)",
        description=(
            "A woman in her early thirties with curly auburn hair tied back and a green linen apron stands behind "
            "a wooden café counter, facing the camera. Her disposition is warm and quietly proud. Her cheeks rise "
            'into a smile before she speaks, and she says, "We open at seven, and the first croissant is always '
            'on the house." Her lips round and stretch with each vowel while her jaw moves in small, even steps; '
            "her voice is bright, mid-pitched and unhurried. She finishes with a short nod, eyebrows lifting. "
            "Static medium close-up at eye level; soft morning daylight from a window on the left puts warm "
            "highlights in her hair, and a shallow depth of field blurs the shelves of jars behind her."
        ),
        speaker="Woman in green linen apron",
        language="English",
        line="We open at seven, and the first croissant is always on the house.",
        background="Quiet café ambience with a coffee machine hissing softly",
    ),
    PromptExample(
        title="Calligraphy teacher (Mandarin)",
        description=(
            "An elderly man with short white hair and round wire glasses, wearing a navy cotton jacket, sits "
            "upright at a desk in a study lined with hanging scrolls. His disposition is calm and kindly. He rests "
            'his hands on the desk, lowers his gaze briefly, then looks into the lens and says, "写字和做人一样，'
            '慢一点，心要正。" His lips form short, precise shapes, the corners drawing back on each syllable; his '
            "voice is low, steady and measured, with a slight pause at each comma. A faint smile deepens the lines "
            "around his eyes. Static close-up at eye level; warm lamplight from the right leaves a soft shadow on "
            "the left side of his face, and the scrolls behind him are gently out of focus."
        ),
        speaker="Elderly man in wire glasses",
        language="Mandarin",
        line="写字和做人一样，慢一点，心要正。",
        background=None,
    ),
    PromptExample(
        title="Bike mechanic (German)",
        description=(
            "A man in his late twenties with a short beard and a grey beanie, wearing a denim work shirt with "
            "rolled sleeves, stands in a small bicycle workshop, facing the camera. His disposition is cheerful and "
            'matter-of-fact. He keeps his shoulders still, raises his eyebrows and says, "Kette ölen, Reifen '
            'prüfen, und dann ab in die Berge!" His jaw drops firmly on the open vowels and his lips press together '
            "before each p; his voice is energetic and slightly fast, rising in pitch at the end. He grins, showing "
            "his teeth. Static medium shot at chest height; cool daylight from an open garage door, tools on a "
            "pegboard behind him in soft focus."
        ),
        speaker="Bearded man in grey beanie",
        language="German",
        line="Kette ölen, Reifen prüfen, und dann ab in die Berge!",
        background="Muffled street traffic outside the workshop",
    ),
    PromptExample(
        title="Inn hostess (Japanese)",
        description=(
            "A young woman with black hair in a low bun, wearing a pale blue kimono, kneels at the entrance of a "
            "traditional inn, facing the camera. Her disposition is gentle and welcoming. She bows her head "
            'slightly, straightens, and says, "ようこそお越しくださいました。どうぞごゆっくり。" Her lips move '
            "in small, soft shapes with little jaw opening; her voice is light, polite and slow, falling gently at "
            "the end of each phrase. Her eyes narrow into a calm smile. Static medium close-up slightly below eye "
            "level; soft diffuse light through paper screens, warm wooden tones, shallow depth of field."
        ),
        speaker="Young woman in blue kimono",
        language="Japanese",
        line="ようこそお越しくださいました。どうぞごゆっくり。",
        background="A faint wind chime and distant birdsong",
    ),
    PromptExample(
        title="Street-food vendor (Korean)",
        description=(
            "A young man with a neat undercut and a black apron stands behind a steaming street-food stall at "
            "night, facing the camera. His disposition is lively and confident. He leans his head forward a "
            'little, eyebrows raised, and calls out, "떡볶이 방금 나왔어요, 따뜻할 때 드세요!" His mouth opens wide '
            "on each syllable and his cheeks lift; his voice is loud, upbeat and quick, with a playful rise at the "
            "end. Steam drifts past his face. Static medium shot at eye level; warm orange light from the stall's "
            "bulbs, neon signs blurred into bokeh behind him."
        ),
        speaker="Young street-food vendor in apron",
        language="Korean",
        line="떡볶이 방금 나왔어요, 따뜻할 때 드세요!",
        background="Busy night-market chatter and sizzling food",
    ),
    PromptExample(
        title="Bookseller (French)",
        description=(
            "A woman in her sixties with a silver bob and red-framed glasses, wearing a cream cardigan, sits in a "
            "cosy bookshop with a closed paperback on her lap. Her disposition is thoughtful and amused. She tilts "
            "her head slightly, taps the book once with a finger, and says, \"Un bon livre, c'est un ami qui ne "
            'vous juge jamais." Her lips push forward on the rounded vowels while her jaw moves lightly; her voice '
            "is soft, warm and mid-paced, with a gentle laugh in the last word. Static close-up at eye level; "
            "golden afternoon light from a side window, rows of books softly out of focus behind her."
        ),
        speaker="Woman with red-framed glasses",
        language="French",
        line="Un bon livre, c'est un ami qui ne vous juge jamais.",
        background="Soft rain against the shop window",
    ),
)
EXAMPLE_PROMPTS: tuple[str, ...] = tuple(example.prompt() for example in EXAMPLES)
