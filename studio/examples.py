"""The studio's example rows: the prompt examples of `magihuman.prompts`, and one with the example portrait."""

from __future__ import annotations

from pathlib import Path

from magihuman.prompts import EXAMPLES, PromptExample

ASSETS = Path(__file__).resolve().parent.parent / "assets"

# Its description matches the public-domain photograph in assets/portraits.
PORTRAIT_EXAMPLE = PromptExample(
    title="Astronaut (English, with portrait)",
    description=(
        "A woman in her late thirties with short light-brown hair and a calm, confident smile sits in an orange "
        "flight suit in front of an American flag and a model of the space shuttle. She looks straight into the "
        'camera and says, "Liftoff is the loudest quiet moment of your life." Her lips part and round with each '
        "word, her jaw moves in small even steps, and her eyebrows lift slightly on the last words; her voice is "
        "clear, mid-pitched and measured. Static medium close-up at eye level, even studio lighting, the "
        "background softly in focus."
    ),
    speaker="An astronaut in an orange suit",
    language="English",
    line="Liftoff is the loudest quiet moment of your life.",
    background=None,
)
EXAMPLE_ROWS: list[tuple[Path | None, PromptExample]] = [
    (ASSETS / "portraits" / "eileen_collins.jpg", PORTRAIT_EXAMPLE),
    *((None, ex) for ex in EXAMPLES),
]


def example_values() -> list[list]:
    """One row per example: portrait, prompt, then the dialogue builder's description, speaker, language,
    line and background."""
    return [
        [
            str(path) if path else None,
            ex.prompt(),
            ex.description,
            ex.speaker,
            ex.language,
            ex.line,
            ex.background or "",
        ]
        for path, ex in EXAMPLE_ROWS
    ]


def example_labels() -> list[str]:
    return [ex.title for _, ex in EXAMPLE_ROWS]
