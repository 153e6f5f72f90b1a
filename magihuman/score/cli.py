"""`python -m magihuman score VIDEO --prompt TEXT [--audio REF] [--json]`: print a take's scorecard."""

from __future__ import annotations

import argparse
from pathlib import Path

from magihuman.score.card import Scorecard, score_take


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="the take: a video with sound (MP4, WebM, MOV)")
    parser.add_argument(
        "--prompt",
        default="",
        help="the generation prompt, whose Dialogue lines are the expected speech, or just the expected line "
        "(@FILE reads it from a file)",
    )
    parser.add_argument(
        "--audio",
        type=Path,
        help="a recording of the voice the take should have (any file with sound): adds voice_similarity",
    )
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def run_score(args: argparse.Namespace) -> None:
    prompt = Path(args.prompt[1:]).read_text() if args.prompt.startswith("@") else args.prompt
    card = score_take(args.video, prompt=prompt, audio=args.audio)
    print(card.to_json() if args.json else card_text(card))


def card_text(card: Scorecard) -> str:
    """The card as aligned lines for a terminal."""
    rows = card.rows() + ([("Score", f"{card.score:.1f} / 100")] if card.score is not None else [])
    return "\n".join(f"{name:<9} {value}" for name, value in rows)
