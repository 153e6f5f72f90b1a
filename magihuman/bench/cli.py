"""Benchmark: `python -m magihuman.bench`.

Modes (README, "Benchmark"): the pipeline with random weights (speed does not depend on weight values) per
resolution against the published H100 numbers (`pipeline`); the preview goals of a CPU (`preview`); long takes
(`long_take`); single DiT forwards (`forward`); several GPUs under torchrun (`parallel`). Whenever fp8 is used,
the fp8-vs-bf16 error is reported too.
"""

from __future__ import annotations

import argparse

import torch

from magihuman.bench import parallel as parallel_bench
from magihuman.bench.forward import run_forward
from magihuman.bench.pipeline import run_pipeline
from magihuman.bench.preview import run_preview
from magihuman.config import RESOLUTIONS
from magihuman.options import EngineOptions
from magihuman.parallel.launch import init_parallel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m magihuman.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--forward", action="store_true", help="time single DiT forwards instead of the pipeline")
    parser.add_argument(
        "--resolutions",
        "--tiers",  # the flag's earlier name
        dest="resolutions",
        help="comma-separated output resolutions (default: all; tiny: the preview goals)",
    )
    parser.add_argument("--seconds", type=int, help="clip length (default: 5 for the full model, 1 for tiny)")
    parser.add_argument("--long-take", type=int, help="pipeline: also time a take of this many seconds (e.g. 60)")
    parser.add_argument("--latent-frames", type=int, help="--forward: override the latent frame count (CPU: 2)")
    parser.add_argument("--text-tokens", type=int, default=300)
    parser.add_argument("--backend", dest="attention", choices=["math", "sdpa", "fa2", "fa3"], help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help="untimed runs first (pipeline: 1 on CUDA, 0 on CPU)")
    parser.add_argument("--iters", type=int, help="timed runs (pipeline: 2 on CUDA, 1 on CPU; forward: 3 / 1)")
    EngineOptions.add_arguments(parser)  # --backend above is the old name of --attention
    args = parser.parse_args(argv)

    options = EngineOptions.from_args(args)
    device, size, flags = torch.device(options.device), options.size, options.speed
    if size == "full" and device.type != "cuda":
        parser.error("the full-size benchmark needs a CUDA GPU; run with --model tiny on a CPU")
    if args.weights_dir and (args.forward or size != "full"):
        parser.error("--weights-dir loads the full model in pipeline mode (instead of random weights)")
    preview = size == "tiny" and not args.forward and args.resolutions is None and args.seconds is None
    preview = preview and args.long_take is None
    resolutions = [t.strip() for t in (args.resolutions or ",".join(RESOLUTIONS)).split(",") if t.strip()]
    unknown = [t for t in resolutions if t not in RESOLUTIONS]
    if unknown:
        parser.error(f"unknown resolution(s) {unknown}; choose from {', '.join(RESOLUTIONS)}")

    try:
        ctx = init_parallel(options.cp, size, cfg_parallel=options.cfg_parallel, speed=flags)
    except ValueError as exc:
        parser.error(str(exc))
    if ctx.world > 1:  # under torchrun: CP N against CP 1 with the same models (magihuman.bench.parallel)
        if ctx.is_driver:
            print(f"torch {torch.__version__} · preset: {size} · speed steps: {flags.describe()}")
        parallel_bench.run(args, ctx, size, flags, resolutions)
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    mode = "forward" if args.forward else "preview" if preview else "pipeline"
    print(f"device: {name} · torch {torch.__version__} · preset: {size} · mode: {mode}")
    print(f"speed steps: {flags.describe()}")
    if size == "tiny":
        print("NOTE: tiny preset (a smoke test of the code path, not a speed measurement of the 15B model)")
    if preview:
        run_preview(args, options)
    elif args.forward:
        run_forward(args, device, size, flags, resolutions)
    else:
        run_pipeline(args, options, resolutions)


if __name__ == "__main__":
    main()
