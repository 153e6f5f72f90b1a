"""Character cards: the card format (records and card files), the studio's card handlers from saving to a
generate with the card's portrait and voice, and hostile card files refused with their reason."""

from __future__ import annotations

import json
import struct
import wave
import zipfile
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from gradio_client import Client

import app as studio_app
from magihuman.cards import MAX_CARDS, Card, CardError, import_card, make_card
from magihuman.config import MAX_SECONDS
from magihuman.errors import InputError
from studio.cards import card_choices, clean_cards, delete_card, export_card, import_card_file, save_card, use_cards
from studio.runtime import EngineSlot
from tests.files import portrait, wav
from tests.studio import generate, launched, paths


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("card-media")
    return {"portrait": portrait(folder / "face.png"), "voice": wav(folder / "speech.wav", seconds=12)}


def _seconds(path: str | Path) -> float:
    with av.open(str(path)) as container:
        return container.duration / 1e6


def test_a_card_survives_the_browser_and_a_card_file(media, tmp_path) -> None:
    card = make_card(
        "Anna the baker",
        speaker="Woman in green linen apron",
        description="A woman in her thirties with curly auburn hair.",
        language="german",
        seed=42,
        portrait=media["portrait"],
        voice=media["voice"],
    )
    assert card.language == "German" and card.portrait[:2] == b"\xff\xd8" and card.voice[:4] == b"OggS"
    assert abs(_seconds(card.write_voice(tmp_path)) - MAX_SECONDS) < 0.1  # 12 s recorded, a clip uses 10
    assert Card.from_record(json.loads(json.dumps(card.to_record()))) == card  # BrowserState keeps JSON

    loaded = import_card(card.export(tmp_path))
    assert (loaded.name, loaded.speaker, loaded.description, loaded.language, loaded.seed) == (
        card.name,
        card.speaker,
        card.description,
        card.language,
        card.seed,
    )
    with av.open(str(loaded.write_portrait(tmp_path))) as image:
        assert (image.streams.video[0].width, image.streams.video[0].height) == (320, 400)
    assert abs(_seconds(loaded.write_voice(tmp_path)) - MAX_SECONDS) < 0.1


def test_a_card_needs_a_name_and_a_known_language(media) -> None:
    with pytest.raises(CardError, match="needs a name"):
        make_card(" ", speaker="", description="", language="English")
    with pytest.raises(CardError, match="language must be one of"):
        make_card("Bob", speaker="", description="", language="Klingon")
    with pytest.raises(CardError, match="seed must be a whole number"):
        make_card("Bob", speaker="", description="", language="English", seed=-1)
    assert make_card("Bob", speaker="", description="", language="English").speaker == "Bob"  # the name as tag
    for record in [
        None,
        {"format": "other"},
        {**make_card("Bob", speaker="", description="", language="English").to_record(), "portrait": "not base64!"},
    ]:
        with pytest.raises(CardError):
            Card.from_record(record)


# ---------------------------------------------------------------------------------------------------------
# Hostile card files
# ---------------------------------------------------------------------------------------------------------

CARD_JSON = json.dumps({"format": "magihuman-card/1", "name": "X", "language": "English"})


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width`×`height` pixels and holds none: enough for a header-first check to refuse."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def _hour_of_audio(path: Path) -> Path:
    """An hour of an 8 kHz 8-bit tone: 28.8 MB unpacked, a few hundred kB zipped."""
    period = (128 + 60 * np.sin(2 * np.pi * np.arange(40) / 40)).astype(np.uint8).tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(period * (3600 * 8000 // 40))
    return path


def test_hostile_card_files_are_refused_with_the_reason(tmp_path) -> None:
    text = tmp_path / "card.zip"
    text.write_text("not a zip at all")
    big = tmp_path / "big.zip"
    with open(big, "wb") as out:
        out.truncate(17 * 2**20)
    cases = [
        (text, "not a card file"),
        (big, "17.0 MB; a card file is at most 16 MB"),
        (_zip(tmp_path / "escape.zip", {"card.json": CARD_JSON, "../../.bashrc": b"evil"}), "points outside"),
        (_zip(tmp_path / "abs.zip", {"card.json": CARD_JSON, "/etc/passwd": b"evil"}), "points outside"),
        (_zip(tmp_path / "extra.zip", {"card.json": CARD_JSON, "run.sh": b"x"}), "holds only"),
        (_zip(tmp_path / "nojson.zip", {"portrait.jpg": b"x"}), "no card.json"),
        (
            _zip(tmp_path / "huge-image.zip", {"card.json": CARD_JSON, "portrait.png": _png_header(10_000, 10_000)}),
            "10000×10000 pixels",
        ),
        (_zip(tmp_path / "bomb.zip", {"card.json": CARD_JSON, "voice.wav": bytes(100 * 2**20)}), "unpacks to 100 MB"),
        (
            _zip(
                tmp_path / "hour.zip",
                {"card.json": CARD_JSON, "voice.wav": _hour_of_audio(tmp_path / "h.wav").read_bytes()},
            ),
            "lasts more than 60 s",
        ),
        (_zip(tmp_path / "badjson.zip", {"card.json": b"{"}), "not valid JSON"),
    ]
    for path, reason in cases:
        with pytest.raises(InputError, match=reason):
            import_card(path)
        with pytest.raises(Exception, match=reason):  # the studio's import says the same, as a gr.Error
            import_card_file(str(path), [])


# ---------------------------------------------------------------------------------------------------------
# The studio: save, reload, export, import elsewhere, use in a generate
# ---------------------------------------------------------------------------------------------------------


def test_cards_in_the_studio_from_save_to_a_generate(tiny_engine, media) -> None:
    # Save the current inputs: the page's BrowserState is the list these handlers return.
    cards, note = save_card(
        "Anna", str(media["portrait"]), str(media["voice"]), "A woman.", "Woman in apron", "French", 7, False, []
    )
    assert "Saved card **Anna** (portrait, voice, seed 7)" in note
    cards, _ = save_card("Ben", None, None, "A man with a beard.", "Bearded man", "German", None, True, cards)
    pick, second, kept = card_choices(json.loads(json.dumps(cards)))  # a reload sends the stored JSON back
    assert pick["choices"] == ["Ben", "Anna"] and kept == cards
    assert clean_cards([*cards, {"name": "junk"}, "junk"]) == cards

    # Export, then import into another browser's (empty) list.
    card_file = export_card("Anna", cards)
    elsewhere, note, _ = import_card_file(card_file, [])
    assert "Imported card **Anna**" in note
    values = use_cards("Anna", "", elsewhere)
    card_portrait, card_voice, description, speaker, language, seed, random_seed, _ = values
    assert (description, speaker, language, seed, random_seed) == ("A woman.", "Woman in apron", "French", 7, False)

    two = use_cards("Anna", "Ben", cards)
    assert two[2] == "A woman. A man with a beard. The woman in apron speaks French. The bearded man speaks German."
    assert "Bearded man (German)" in two[-1]
    assert [record["name"] for record in delete_card("Ben", cards)[0]] == ["Anna"]
    with pytest.raises(Exception, match=f"keeps {MAX_CARDS} cards"):
        full = [Card(f"c{i}", "s", "", "English").to_record() for i in range(MAX_CARDS)]
        save_card("new", None, None, "", "", "English", None, True, full)

    # The card's portrait and voice make a take like any upload.
    demo = studio_app.build_demo(EngineSlot.ready(tiny_engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    with launched(demo, show_error=True) as url:
        client = Client(url, verbose=False, download_files=False)
        result = generate(client, prompt="A woman says bonjour.", portrait=card_portrait, audio=card_voice, seed=seed)
    assert result[2] == 7 and paths(result[1])[0].endswith(".mp4")
