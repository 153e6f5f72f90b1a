"""Command line: `python -m magihuman generate ...` and `python -m magihuman download ...`."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from magihuman.config import RESOLUTIONS
from magihuman.engine import GenerationRequest
from magihuman.errors import MagiHumanError
from magihuman.fields import FIELDS
from magihuman.optimize import SpeedFlags, add_speed_arguments
from magihuman.parallel.launch import add_parallel_argument


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per request field (magihuman.fields), then the engine's own options."""
    for f in FIELDS:
        help_text = f.help.replace("%", "%%")
        if f.name == "prompt":
            parser.add_argument(f.flag, required=True, help=f"{help_text} (or @FILE to read it from a file)")
        elif f.kind in ("image", "audio"):
            names = [f.flag, "--image"] if f.name == "portrait" else [f.flag]
            parser.add_argument(*names, dest=f.name, type=Path, help=help_text)
        elif f.choices:
            parser.add_argument(f.flag, choices=list(f.values), default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.kind, str)
            shown = f" ({range_text})" if (range_text := f.range_text()) else ""
            parser.add_argument(f.flag, type=kind, default=f.default, help=help_text + shown)
    parser.add_argument("--model", choices=["full", "tiny"], help="default: full on CUDA, tiny elsewhere")
    parser.add_argument("--weights-dir", type=Path, help="local weights (default ./weights, $MAGIHUMAN_WEIGHTS)")
    parser.add_argument("--out", type=Path, required=True, help="output mp4 (at 540p or 1080p: the SR clip)")
    add_parallel_argument(parser)
    add_speed_arguments(parser)


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    values = {f.name: getattr(args, f.name) for f in FIELDS}
    if values["prompt"].startswith("@"):
        values["prompt"] = Path(values["prompt"][1:]).read_text()
    shots = values["shots"]
    if shots and not shots.lstrip().startswith("["):  # a file (scene.json or @scene.json), else the JSON itself
        values["shots"] = Path(shots.removeprefix("@")).read_text()
    return GenerationRequest(**values)


def _run_generate(args: argparse.Namespace) -> None:
    from magihuman.build import default_model_size, load_engine
    from magihuman.parallel import attach, init_parallel, run_worker, shutdown

    request = request_from_args(args)
    size = args.model or default_model_size()
    sr_model = RESOLUTIONS[request.resolution].sr_model
    speed = SpeedFlags.from_args(args, "cuda" if torch.cuda.is_available() else "cpu")
    dits = [request.base_model, *([sr_model] if sr_model else [])]
    try:
        ctx = init_parallel(args.cp, size, cfg_parallel=args.cfg_parallel, speed=speed)
    except ValueError as exc:
        raise MagiHumanError(str(exc)) from exc
    if not ctx.is_driver:
        run_worker(ctx, size, args.weights_dir, dits, speed)
        return
    print(f"loading the {size} engine ({ctx.describe()}) ...", file=sys.stderr)
    engine = load_engine(size, weights_dir=args.weights_dir, device=ctx.device, dits=dits, speed=speed)
    driver = attach(engine, ctx)
    try:
        _generate_one(engine, args, request)
    finally:
        shutdown(driver)


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


def timing_table(timings: dict[str, float], peak_memory_gb: float | None, layout: str | None = None) -> str:
    """Per-stage seconds as a small text table (shared by the CLI and the app); `layout` names the multi-GPU
    layout that ran it (`Result.layout`)."""
    lines = [f"{'stage':<8} {'seconds':>8}", f"{'-' * 8} {'-' * 8}"]
    lines += [f"{stage:<8} {seconds:>8.2f}" for stage, seconds in timings.items()]
    lines.append(f"{'total':<8} {sum(timings.values()):>8.2f}")
    if peak_memory_gb is not None:
        lines.append(f"peak GPU memory: {peak_memory_gb:.1f} GiB")
    if layout is not None:
        lines.append(f"layout: {layout}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from magihuman.weights import add_download_arguments, run_download

    parser = argparse.ArgumentParser(prog="python -m magihuman", description="daVinci-MagiHuman engine")
    commands = parser.add_subparsers(dest="command", required=True)
    _generate_arguments(commands.add_parser("generate", help="generate a clip and print per-stage timings"))
    add_download_arguments(commands.add_parser("download", help="download the weights for some tiers"))
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            _run_generate(args)
        else:
            run_download(args)
    except MagiHumanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
