"""Character cards: one person's portrait, look, language, voice and seed, kept together so that every take of
them starts from the same inputs.

A card is a record (a JSON-safe dict, media base64) kept in the browser, or a card file (a zip) to move it to
another studio. Both are untrusted when they come back: a card file is read in memory (never extracted by the
names it carries) under size limits, and its media go through the upload checks and are stored normalised
(JPEG, Ogg Opus), small enough for the browser's storage.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
from PIL import Image

from magihuman.config import MAX_SECONDS, MEDIA_LIMITS, REQUEST_LIMITS
from magihuman.errors import InputError
from magihuman.forksafe import MediaJob
from magihuman.media import load_audio, load_portrait
from magihuman.prompts import LANGUAGE_NAMES, clean_text, get_language

CARD_FORMAT = "magihuman-card/1"
MAX_CARDS = 8  # per browser: a few hundred kB each, well inside a browser's storage for a page
PORTRAIT_SIDE = 768  # px, the longer side: more than the 256p base stage looks at, small enough to keep
VOICE_RATE = 48_000  # Opus's own rate
VOICE_BITRATE = 64_000  # transparent enough for speech; ~80 kB for the 10 s a clip can use
MAX_NAME_CHARS, MAX_SPEAKER_CHARS, MAX_DESCRIPTION_CHARS = 80, 80, 2000


@dataclass(frozen=True)
class CardFileLimits:
    """What a card file may be. A studio's own card files are well under a megabyte."""

    max_file_bytes: int = 16 * 2**20
    max_members: int = 8
    max_member_bytes: int = 48 * 2**20  # unpacked: a long WAV recording fits, a zip bomb does not
    max_voice_seconds: float = 60.0  # longer recordings are refused, not silently cut: they are not a voice sample


CARD_FILE_LIMITS = CardFileLimits()
_NAMES = {"card.json", "portrait.jpg", "portrait.png", "voice.ogg", "voice.wav", "voice.mp3", "voice.m4a"}


class CardError(InputError):
    """A card or card file cannot be used; the message says why."""


@dataclass(frozen=True)
class Card:
    """A character. `speaker` is the dialogue tag (≈5 words, or a name); `seed` None means random."""

    name: str
    speaker: str
    description: str
    language: str
    seed: int | None = None
    portrait: bytes | None = None
    voice: bytes | None = None

    # --- records (the browser's form) ---

    def to_record(self) -> dict:
        return {
            "format": CARD_FORMAT,
            **self._fields(),
            "portrait": _b64(self.portrait),
            "voice": _b64(self.voice),
        }

    @classmethod
    def from_record(cls, record) -> Card:
        """A card from a browser's (untrusted) record; media only signature-checked (fully when used)."""
        if not isinstance(record, dict) or record.get("format") != CARD_FORMAT:
            raise CardError("this card was not made by this studio's card format; import its card file instead")
        card = _checked(record)
        portrait, voice = _unb64(record.get("portrait"), "portrait"), _unb64(record.get("voice"), "voice")
        if portrait is not None and not portrait.startswith(b"\xff\xd8"):
            raise CardError(f"the portrait of card {card.name!r} is not a JPEG; save the card again")
        if voice is not None and not voice.startswith(b"OggS"):
            raise CardError(f"the voice of card {card.name!r} is not Ogg audio; save the card again")
        return replace(card, portrait=portrait, voice=voice)

    def _fields(self) -> dict:
        return {
            "name": self.name,
            "speaker": self.speaker,
            "description": self.description,
            "language": self.language,
            "seed": self.seed,
        }

    # --- files ---

    def write_portrait(self, folder: Path) -> Path | None:
        return _write(folder / "portrait.jpg", self.portrait)

    def write_voice(self, folder: Path) -> Path | None:
        return _write(folder / "voice.ogg", self.voice)

    def export(self, folder: Path) -> Path:
        """The card file, `<name>.zip` in `folder`: card.json, portrait.jpg, voice.ogg."""
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name)[:40].strip("_") or "card"
        path = Path(folder) / f"{stem}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("card.json", json.dumps({"format": CARD_FORMAT, **self._fields()}, ensure_ascii=False))
            if self.portrait is not None:
                archive.writestr("portrait.jpg", self.portrait)
            if self.voice is not None:
                archive.writestr("voice.ogg", self.voice)
        return path


def make_card(
    name: str,
    *,
    speaker: str,
    description: str,
    language: str,
    seed: int | None = None,
    portrait: str | Path | None = None,
    voice: str | Path | None = None,
) -> Card:
    """A card from the studio's inputs, its uploads checked like any upload and normalised."""
    card = _checked({"name": name, "speaker": speaker, "description": description, "language": language, "seed": seed})
    return replace(
        card,
        portrait=_portrait_jpeg(portrait) if portrait else None,
        voice=_voice_ogg(voice) if voice else None,
    )


def import_card(path: str | Path, limits: CardFileLimits = CARD_FILE_LIMITS) -> Card:
    """The card in a card file, or CardError saying why it is refused."""
    path = Path(path)
    shown = path.name
    if not path.is_file():
        raise CardError(f"the card file {shown} was not found; upload it again")
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise CardError(f"{shown} is {size / 2**20:.1f} MB; a card file is at most {limits.max_file_bytes // 2**20} MB")
    if not zipfile.is_zipfile(path):
        raise CardError(f"{shown} is not a card file: card files are .zip files exported by a MagiHuman studio")
    try:
        with zipfile.ZipFile(path) as archive:
            members = _read_members(archive, shown, limits)
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, RuntimeError) as exc:
        raise CardError(f"{shown} is a damaged zip ({exc}); export the card again") from None
    if "card.json" not in members:
        raise CardError(f"{shown} has no card.json: it is not a card file")
    try:
        record = json.loads(members["card.json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"the card.json in {shown} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != CARD_FORMAT:
        raise CardError(f"the card.json in {shown} is not a {CARD_FORMAT} card")
    card = _checked(record)
    portrait_name = next((n for n in ("portrait.jpg", "portrait.png") if n in members), None)
    voice_name = next((n for n in sorted(members) if n.startswith("voice.")), None)
    with tempfile.TemporaryDirectory(prefix="magihuman-card-") as tmp:
        # The media checks read files; the names are ours (from _NAMES), never the archive's paths.
        portrait = voice = None
        if portrait_name:
            portrait = _portrait_jpeg(_write(Path(tmp) / portrait_name, members[portrait_name]))
        if voice_name:
            voice = _voice_ogg(_write(Path(tmp) / voice_name, members[voice_name]), limits.max_voice_seconds)
    return replace(card, portrait=portrait, voice=voice)


def _read_members(archive: zipfile.ZipFile, shown: str, limits: CardFileLimits) -> dict[str, bytes]:
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise CardError(f"{shown} holds {len(infos)} files; a card file holds at most {limits.max_members}")
    members: dict[str, bytes] = {}
    for info in infos:
        name = info.filename
        if "/" in name or "\\" in name or ".." in name or ":" in name or name.startswith("."):
            raise CardError(f"{shown} is refused: it contains the path {name[:80]!r}, which points outside the card")
        if name not in _NAMES:
            raise CardError(f"{shown} contains {name[:80]!r}; a card file holds only {', '.join(sorted(_NAMES))}")
        if info.file_size > limits.max_member_bytes:
            raise CardError(
                f"{shown} is refused: {name} unpacks to {info.file_size / 2**20:.0f} MB (at most "
                f"{limits.max_member_bytes // 2**20} MB): a zip bomb or not a card"
            )
        with archive.open(info) as member:
            data = member.read(limits.max_member_bytes + 1)  # the header's size may lie
        if len(data) > limits.max_member_bytes:
            raise CardError(f"{shown} is refused: {name} unpacks to more than its header says (a zip bomb)")
        members[name] = data
    return members


# --- Fields and media ---


def _checked(record: dict) -> Card:
    """The card's text fields and seed from an untrusted dict (no media)."""

    def text(key: str, limit: int, required: bool) -> str:
        value = record.get(key, "")
        if not isinstance(value, str):
            raise CardError(f"the card's {key} must be text")
        value = clean_text(value)
        if required and not value:
            raise CardError(f"the card needs a {key}")
        if len(value) > limit:
            raise CardError(f"the card's {key} has {len(value)} characters; at most {limit}")
        return value

    name = text("name", MAX_NAME_CHARS, True)
    language = record.get("language")
    try:
        language = get_language(language if isinstance(language, str) else "").name
    except ValueError:
        raise CardError(f"card {name!r}: language must be one of {', '.join(LANGUAGE_NAMES)}") from None
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise CardError(f"card {name!r}: the seed must be a whole number from 0, or empty")
    if seed is not None and seed > REQUEST_LIMITS.max_seed:
        raise CardError(f"card {name!r}: the seed must be at most {REQUEST_LIMITS.max_seed}")
    return Card(
        name=name,
        speaker=text("speaker", MAX_SPEAKER_CHARS, False) or name,
        description=text("description", MAX_DESCRIPTION_CHARS, False),
        language=language,
        seed=seed,
    )


def _portrait_jpeg(path: str | Path) -> bytes:
    image = load_portrait(path)  # header-first checks: size, pixel count, animation; then upright RGB
    image.thumbnail((PORTRAIT_SIDE, PORTRAIT_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _voice_ogg(path: str | Path, max_seconds: float = CARD_FILE_LIMITS.max_voice_seconds) -> bytes:
    """The recording's first MAX_SECONDS as mono Ogg Opus; refused when it lasts over `max_seconds`."""
    limits = replace(MEDIA_LIMITS, max_audio_seconds=max_seconds + 1)
    # Decoding stops one second past the limit, so an hour-long file costs no more than a minute.
    wave = load_audio(path, seconds=max_seconds + 1, sample_rate=VOICE_RATE, limits=limits)
    if len(wave) > max_seconds * VOICE_RATE:
        raise CardError(
            f"{Path(path).name} lasts more than {max_seconds:g} s; a card's voice is a short sample (a clip uses "
            f"at most {MAX_SECONDS} s): trim the recording"
        )
    return _encode_opus(wave[: MAX_SECONDS * VOICE_RATE])


def _encode_opus(wave: np.ndarray) -> bytes:
    out = io.BytesIO()
    # A media job: a fork (a ZeroGPU worker) waits until the encoder is closed (magihuman.forksafe).
    with MediaJob("encoding a card's voice"), av.open(out, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=VOICE_RATE, layout="mono")
        stream.bit_rate = VOICE_BITRATE
        samples = (np.clip(wave, -1, 1) * 32767).astype(np.int16)[None]  # (1, n) packed s16
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = VOICE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


def _unb64(value, what: str) -> bytes | None:
    if value is None:
        return None
    limit = 4 * MEDIA_LIMITS.max_image_bytes // 3  # a normalised card is far below this
    if not isinstance(value, str) or len(value) > limit:
        raise CardError(f"the card's {what} is not valid; save the card again")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise CardError(f"the card's {what} is not valid; save the card again") from None


def _write(path: Path, data: bytes | None) -> Path | None:
    if data is None:
        return None
    path.write_bytes(data)
    return path
