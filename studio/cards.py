"""Character cards in the studio (README: Character cards): save, pick one or two, export, import. Cards live in
the browser (`gr.BrowserState`, media inlined), so the server keeps none of them.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from magihuman.cards import MAX_CARDS, Card, CardError, import_card, make_card
from magihuman.errors import InputError
from magihuman.prompts import speaker_subject

CARDS_KEY = "magihuman-studio-cards"
SCRATCH_FOLDERS = 64  # request folders kept for the page to fetch their files; older ones are deleted


def layout() -> SimpleNamespace:
    ui = SimpleNamespace()
    ui.cards = gr.BrowserState([], storage_key=CARDS_KEY)
    with gr.Accordion("Character cards", open=False, elem_id="cards"):
        gr.Markdown(
            "A card keeps a character's portrait, look, speaker tag, language, voice and seed together. Pick one "
            "to fill the inputs; pick a second card for a two-speaker scene (the portrait is the first card's)."
        )
        with gr.Row():
            ui.pick = gr.Dropdown(label="Card", choices=[], elem_id="card-pick")
            ui.second = gr.Dropdown(label="Second speaker (optional)", choices=[], elem_id="card-second")
        with gr.Row():
            ui.use = gr.Button("Use the card", variant="primary", elem_id="card-use")
            ui.export = gr.Button("Export the card file", elem_id="card-export")
            ui.delete = gr.Button("Delete the card", elem_id="card-delete")
        ui.file = gr.File(label="Card file", interactive=False, elem_id="card-file")
        with gr.Row():
            ui.name = gr.Textbox(label="Name for a new card", placeholder="e.g. Anna the baker", elem_id="card-name")
            ui.save = gr.Button("Save the current inputs as a card", elem_id="card-save")
        ui.upload = gr.File(label="Import a card file (.zip)", file_types=[".zip"], elem_id="card-import")
        ui.note = gr.Markdown(elem_id="card-note")
    return ui


def wire(demo: gr.Blocks, ui: SimpleNamespace, *, portrait, audio, dialogue: list, seed, random_seed) -> None:
    """Events, all private (cards are the page's own; the API takes the files themselves)."""
    private = {"api_visibility": "private"}
    description, speaker, language = dialogue[0], dialogue[1], dialogue[2]
    listing = {"fn": card_choices, "inputs": ui.cards, "outputs": [ui.pick, ui.second, ui.cards], **private}
    saved = ui.save.click(
        save_card,
        [ui.name, portrait, audio, description, speaker, language, seed, random_seed, ui.cards],
        [ui.cards, ui.note],
        **private,
    )
    saved.success(**listing)
    ui.use.click(
        use_cards,
        [ui.pick, ui.second, ui.cards],
        [portrait, audio, description, speaker, language, seed, random_seed, ui.note],
        **private,
    )
    ui.export.click(export_card, [ui.pick, ui.cards], ui.file, **private)
    ui.delete.click(delete_card, [ui.pick, ui.cards], [ui.cards, ui.note], **private).success(**listing)
    ui.upload.upload(import_card_file, [ui.upload, ui.cards], [ui.cards, ui.note, ui.upload], **private).success(
        **listing
    )
    demo.load(**listing, queue=False)


# ---------------------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------------------


def clean_cards(cards) -> list[dict]:
    """The browser's list as sent (untrusted): only records that are cards, one per name, at most MAX_CARDS."""
    kept, names = [], set()
    for record in cards if isinstance(cards, list) else []:
        try:
            card = Card.from_record(record)
        except CardError:
            continue
        if card.name not in names:
            names.add(card.name)
            kept.append(record)
    return kept[:MAX_CARDS]


def card_choices(cards):
    """(card picker, second-speaker picker, the cleaned list): after a page load and every change."""
    kept = clean_cards(cards)
    names = [record["name"] for record in kept]
    first = names[0] if names else None
    return (
        gr.update(choices=names, value=first),
        gr.update(choices=[("(none)", "")] + [(n, n) for n in names], value=""),
        kept,
    )


def save_card(name, portrait, audio, description, speaker, language, seed, random_seed, cards):
    """The current inputs as a card (a card of the same name is replaced)."""
    kept = clean_cards(cards)
    name = (name or "").strip()
    if not name:
        raise gr.Error("Name the card first.")
    if not random_seed and seed not in (None, "") and not float(seed).is_integer():
        raise gr.Error(f"The seed must be a whole number, not {seed}.")
    others = [record for record in kept if record["name"] != name]
    if len(others) >= MAX_CARDS:
        raise gr.Error(f"This browser keeps {MAX_CARDS} cards: delete one (export it first to keep it) and save again.")
    try:
        card = make_card(
            name,
            speaker=speaker or "",
            description=description or "",
            language=language or "",
            seed=None if random_seed or seed in (None, "") else int(seed),
            portrait=portrait or None,
            voice=audio or None,
        )
    except (InputError, ValueError) as exc:
        raise gr.Error(f"The card was not saved: {exc}") from None
    parts = [what for what, data in (("portrait", card.portrait), ("voice", card.voice)) if data is not None]
    parts += [f"seed {card.seed}"] if card.seed is not None else []
    return [card.to_record(), *others], f"Saved card **{_md(card.name)}** ({', '.join(parts) or 'no media'})."


def use_cards(pick, second, cards):
    """Fill the inputs from a card; a second card's character joins the builder's description (not its portrait)."""
    first = _find(pick, cards)
    other = _find(second, cards) if second and second != pick else None
    folder = SCRATCH.new()
    portrait, voice = first.write_portrait(folder), first.write_voice(folder)
    description, note = first.description, f"Using card **{_md(first.name)}**"
    if other is not None:
        # Both looks and who speaks which language, in the builder's description: the prompt and Enhance get both.
        speakers = [f"{speaker_subject(card.speaker)} speaks {card.language}." for card in (first, other)]
        description = " ".join(part for part in (first.description, other.description, *speakers) if part)
        note = (
            f"Using cards **{_md(first.name)}** and **{_md(other.name)}**: speakers {_md(first.speaker)} "
            f"({first.language}) and {_md(other.speaker)} ({other.language}); the portrait is {_md(first.name)}'s "
            "(upload a two-person image if you have one); Enhance writes both speakers' lines"
        )
    seeded = first.seed is not None
    return (
        str(portrait) if portrait else None,
        str(voice) if voice else None,
        description,
        first.speaker,
        first.language,
        first.seed if seeded else gr.update(),
        not seeded,
        note + ".",
    )


def export_card(pick, cards) -> str:
    return str(_find(pick, cards).export(SCRATCH.new()))


def delete_card(pick, cards):
    card = _find(pick, cards)
    return [record for record in clean_cards(cards) if record["name"] != card.name], f"Deleted {_md(card.name)}."


def import_card_file(path, cards):
    """Add the card in an uploaded card file (replacing a card of the same name); the upload box is cleared."""
    if not path:
        raise gr.Error("Choose a card file (.zip) to import.")
    try:
        card = import_card(path)
    except InputError as exc:
        raise gr.Error(f"The card file was refused: {exc}") from None
    others = [record for record in clean_cards(cards) if record["name"] != card.name]
    if len(others) >= MAX_CARDS:
        raise gr.Error(f"This browser keeps {MAX_CARDS} cards: delete one and import again.")
    return [card.to_record(), *others], f"Imported card **{_md(card.name)}**.", None


def _find(name, cards) -> Card:
    for record in clean_cards(cards):
        if record["name"] == name:
            return Card.from_record(record)
    raise gr.Error("Pick a card first (save one, or import a card file).")


def _md(text: str) -> str:
    """User text inside Markdown: no markup, no HTML."""
    return "".join("\\" + c if c in "\\`*_[]()<>#|!~" else c for c in text)


class ScratchFolders:
    """One new folder per request for the files it returns (the page fetches them after the handler returns,
    so they cannot be deleted at once); beyond `keep` folders the oldest are deleted."""

    def __init__(self, keep: int = SCRATCH_FOLDERS) -> None:
        self.keep = keep
        self._root: Path | None = None
        self._made = 0
        self._lock = threading.Lock()

    def new(self) -> Path:
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="magihuman-cards-"))
            self._made += 1
            folder = self._root / f"{self._made:08d}"
            folder.mkdir()
            for old in sorted(p for p in self._root.iterdir() if p.is_dir())[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        return folder


SCRATCH = ScratchFolders()
