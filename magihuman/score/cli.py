"""`python -m magihuman score VIDEO --prompt TEXT [--json]`: print a take's scorecard."""

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
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def run_score(args: argparse.Namespace) -> None:
    prompt = Path(args.prompt[1:]).read_text() if args.prompt.startswith("@") else args.prompt
    card = score_take(args.video, prompt=prompt)
    print(card.to_json() if args.json else card_text(card))


def card_text(card: Scorecard) -> str:
    """The card as a few aligned lines, for a terminal and the studio's text view."""
    rows = []
    if card.transcript is not None:
        rows.append(("heard", repr(card.transcript) + (f" ({card.language})" if card.language else "")))
    if card.expected is not None:
        rows.append(("expected", repr(card.expected)))
    if card.error_rate is not None:
        rows.append(("WER" if card.wer is not None else "CER", f"{card.error_rate:.1%}"))
    if card.speech_start_s is not None:
        rows.append(("speech", f"{card.speech_start_s:.2f}-{card.speech_end_s:.2f} s of {card.audio_seconds:.2f} s"))
    if card.face_found is False:
        rows.append(("sync", "no face found"))
    elif card.face_found:
        rows.append(("sync", f"offset {card.offset_frames:+d} frames, confidence {card.offset_confidence:.2f}"))
    if card.dnsmos is not None:
        mos = card.dnsmos
        rows.append(
            ("DNSMOS", f"overall {mos['overall']:.2f}, signal {mos['signal']:.2f}, background {mos['background']:.2f}")
        )
    rows += [("flag", flag) for flag in card.flags]
    rows += [(part, reason) for part, reason in card.unavailable.items()]
    if card.score is not None:
        rows.append(("score", f"{card.score:.1f} / 100"))
    return "\n".join(f"{name:<9} {value}" for name, value in rows)
