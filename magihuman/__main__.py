"""Command line: `python -m magihuman generate ...`, `... download ...`, `... score ...` and `... enhance "idea"`."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from magihuman.config import RESOLUTIONS
from magihuman.engine import GenerationRequest
from magihuman.enhance import add_enhance_arguments, run_enhance
from magihuman.errors import MagiHumanError
from magihuman.fields import FIELDS
from magihuman.options import EngineOptions
from magihuman.timing import timing_table


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per request field (magihuman.fields), then the engine's own options."""
    for f in FIELDS:
        help_text = f.help.replace("%", "%%")
        if f.required:
            parser.add_argument(f.flag, required=True, help=f"{help_text} (or @FILE to read it from a file)")
        elif f.is_file:
            names = [f.flag, "--image"] if f.name == "portrait" else [f.flag]
            parser.add_argument(*names, dest=f.name, type=Path, help=help_text)
        elif f.choices:
            parser.add_argument(f.flag, choices=list(f.values), default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.kind, str)
            shown = f" ({range_text})" if (range_text := f.range_text()) else ""
            parser.add_argument(f.flag, type=kind, default=f.default, help=help_text + shown)
    parser.add_argument("--out", type=Path, required=True, help="output mp4 (at 540p or 1080p: the SR clip)")
    EngineOptions.add_arguments(parser)


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    values = {f.name: getattr(args, f.name) for f in FIELDS}
    if values["prompt"].startswith("@"):
        values["prompt"] = Path(values["prompt"][1:]).read_text()
    shots = values["shots"]
    if shots and not shots.lstrip().startswith("["):  # a file (scene.json or @scene.json), else the JSON itself
        values["shots"] = Path(shots.removeprefix("@")).read_text()
    return GenerationRequest(**values)


def _run_generate(args: argparse.Namespace) -> None:
    from magihuman.parallel import shutdown, start

    request = request_from_args(args)
    sr_model = RESOLUTIONS[request.resolution].sr_model
    options = EngineOptions.from_args(args, dits=[request.base_model, *([sr_model] if sr_model else [])])
    print(f"loading the {options.size} engine ...", file=sys.stderr)
    try:
        engine = start(options)
    except ValueError as exc:  # a layout init_parallel refuses, before anything loads
        raise MagiHumanError(str(exc)) from exc
    if engine is None:  # a worker rank: rank 0 has finished
        return
    try:
        _generate_one(engine, args, request)
    finally:
        if engine.parallel is not None:
            shutdown(engine.parallel)


def _generate_one(engine, args: argparse.Namespace, request: GenerationRequest) -> None:
    if engine.preview:
        print("NOTE: tiny preview engine with random weights: the clip is noise, not a person", file=sys.stderr)

    def progress(phase: str, step: int, total: int) -> None:
        print(f"\r{phase:>8} {step}/{total}   ", end="", file=sys.stderr, flush=True)

    result = engine.generate(request, on_progress=progress)
    print(file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.sr_video_path or result.video_path, args.out)
    if result.sr_video_path is not None:
        base_copy = args.out.with_name(args.out.stem + "_base" + args.out.suffix)
        shutil.copyfile(result.video_path, base_copy)
        print(f"base clip: {base_copy}")
    print(f"wrote {args.out} (seed {result.seed})")
    print(timing_table(result.timings, result.peak_memory_gb, result.layout))


def main(argv: list[str] | None = None) -> int:
    from magihuman.score.cli import add_score_arguments, run_score
    from magihuman.weights import add_download_arguments, run_download

    parser = argparse.ArgumentParser(prog="python -m magihuman", description="daVinci-MagiHuman engine")
    commands = parser.add_subparsers(dest="command", required=True)
    _generate_arguments(commands.add_parser("generate", help="generate a clip and print per-stage timings"))
    add_download_arguments(commands.add_parser("download", help="download the weights for some tiers"))
    add_score_arguments(commands.add_parser("score", help="print a take's scorecard (words, timing, sync, sound)"))
    add_enhance_arguments(commands.add_parser("enhance", help="rewrite a rough idea into a prompt with your LLM"))
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            _run_generate(args)
        elif args.command == "score":
            run_score(args)
        elif args.command == "enhance":
            run_enhance(args)
        else:
            run_download(args)
    except MagiHumanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
