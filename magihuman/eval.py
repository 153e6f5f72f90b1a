"""`python -m magihuman.eval --prompts FILE.jsonl --out DIR`: generate every prompt at its seeds, score each
take (magihuman.score) and write a table per language: mean WER (or CER), mouth-voice offset, DNSMOS.

Each line of the prompts file is a JSON object: `prompt`, `seeds` (default [0]) and any other request field
(file paths relative to the file). On a CPU the tiny engine's takes are noise: the table checks the plumbing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from magihuman.engine import GenerationRequest
from magihuman.errors import MagiHumanError
from magihuman.fields import FIELD, FILE_FIELDS
from magihuman.options import EngineOptions
from magihuman.parallel import start
from magihuman.score import Scorecard, score_take

DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "eval" / "prompts.jsonl"


def read_prompts(path: Path) -> list[GenerationRequest]:
    """One request per line and seed. Raises MagiHumanError naming the line of a malformed entry."""
    requests = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            seeds = entry.pop("seeds", [0])
            unknown = set(entry) - set(FIELD) - {"seed"}
            if unknown or not isinstance(entry.get("prompt"), str) or not isinstance(seeds, list):
                raise ValueError(f"needs a prompt string and a seeds list; unknown keys: {sorted(unknown)}")
            for name in FILE_FIELDS:
                if entry.get(name):
                    entry[name] = str((path.parent / entry[name]).resolve())
            requests += [GenerationRequest(**{**entry, "seed": int(seed)}) for seed in seeds]
        except (ValueError, TypeError) as exc:
            raise MagiHumanError(f"{path.name} line {number}: {exc}") from exc
    return requests


def language_table(rows: list[tuple[str, Scorecard]]) -> str:
    """A Markdown table per requested language: takes, mean WER or CER, mean |offset| (frames, takes with a
    face), mean DNSMOS overall, and how many takes were flagged."""
    groups: dict[str, list[Scorecard]] = defaultdict(list)
    for language, card in rows:
        groups[language].append(card)
    lines = [
        "| language | takes | WER / CER | abs offset (frames) | DNSMOS overall | flagged |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for language in sorted(groups):
        cards = groups[language]
        rates = [c.error_rate for c in cards if c.error_rate is not None]
        metric = "CER" if any(c.cer is not None for c in cards) else "WER"
        offsets = [abs(c.offset_frames) for c in cards if c.face_found]
        mos = [c.dnsmos["overall"] for c in cards if c.dnsmos is not None]
        lines.append(
            f"| {language} | {len(cards)} | {_mean(rates, '{:.1%}')} {metric if rates else ''} | "
            f"{_mean(offsets, '{:.1f}')} | {_mean(mos, '{:.2f}')} | {sum(bool(c.flags) for c in cards)} |"
        )
    return "\n".join(lines)


def _mean(values: list[float], fmt: str) -> str:
    return fmt.format(sum(values) / len(values)) if values else "–"


def evaluate(engine, requests: list[GenerationRequest], out: Path) -> str:
    """Generate and score each request, writing `out`/clips/*.mp4, cards.jsonl and table.md; the table."""
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(out / "cards.jsonl", "w", encoding="utf-8") as cards:
        for index, request in enumerate(requests):
            result = engine.generate(request)
            clip = clips / f"{index:03d}_seed{result.seed}.mp4"
            shutil.copyfile(result.sr_video_path or result.video_path, clip)
            shutil.rmtree(result.take.folder, ignore_errors=True)
            card = score_take(clip, prompt=request.prompt)
            rows.append((card.requested_language or "mixed or none", card))
            cards.write(json.dumps({"clip": clip.name, **asdict(card)}, ensure_ascii=False) + "\n")
            print(f"{clip.name}: {rows[-1][0]}, score {card.score}", file=sys.stderr)
    table = language_table(rows)
    if engine.preview:
        table = "Tiny preview engine (random weights): these are scores of noise, a check of the plumbing.\n\n" + table
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magihuman.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL of prompts (default: ours)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the clips, cards.jsonl and table.md")
    parser.add_argument("--limit", type=int, help="only the first N takes (a quick check)")
    EngineOptions.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        requests = read_prompts(args.prompts)[: args.limit]
        options = EngineOptions.from_args(args)
        print(f"loading the {options.size} engine for {len(requests)} takes ...", file=sys.stderr)
        engine = start(options)
        if engine is None:  # a worker rank of a torchrun job: it served rank 0's forwards
            return 0
        print(evaluate(engine, requests, args.out))
    except MagiHumanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
