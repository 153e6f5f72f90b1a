"""Benchmark: `python -m magihuman.bench`.

Pipeline mode (default). Builds the whole engine with random weights (speed does not depend on weight values):
the full-size models on CUDA, the tiny preset on the CPU (a smoke test of the code path, which the output
says). Applies the speed flags, warms up (compiling, when on), then per repetition generates one clip at 256p
and super-resolves that take to each SR resolution, and prints per resolution: the time of each stage (text, denoise,
SR, decode, mux), the published scope (base denoise + SR + final decode) against the published H100 numbers
and the issue's goals, the arithmetic floor of the DiT work at 790 TFLOP/s, the achieved TFLOP/s and the peak
memory; and the start-up time (build or load, speed steps, warm-up). `--weights-dir` loads the real weights
instead, so the start-up line measures a real start from local disk.

Preview mode (the default for `--model tiny` without `--resolutions`/`--seconds`): what a newcomer without a GPU
waits for. After a warm-up it times the studio's default clip (256p, 5 s, distilled, text-to-video) end to end
and the upscale of a 2-s take to 540p, against the goals of a 2-core CPU without bf16 instructions (10 s and
20 s), and names the CPU, its bf16/AVX-512 instructions and the dtype the preview computes in.

Long takes (`--long-take 60`, pipeline mode): after the resolution tables, one take of that many seconds per
resolution (256p and 540p among the chosen ones), made window by window, as seconds of work per second of
output (real-time factor) against the goals of one H100 (`magihuman.bench.long_take`).

Forward mode (`--forward`). Times one DiT forward at the token counts of each resolution (1080p with the
frame-local window on 32 layers): ms per forward, TFLOP/s, MFU and peak memory, naming the attention backend.

Several GPUs (`torchrun --standalone --nproc-per-node N -m magihuman.bench --cp N`): per resolution the DiT forward
and the pipeline on all N ranks against rank 0 alone, the bytes exchanged, and the H100 arithmetic
(`magihuman.bench.parallel`).

Both take the speed flags of `magihuman.optimize` (--no-compile, --fp8/--no-fp8, --offload, --attention,
--cache); fp8 left unset is "auto" (`magihuman.memory`), as in the app. Whenever fp8 is used they report the
quality check: the relative RMS error of the fp8 distilled model against the same model in bf16, on the same
inputs, for one velocity and (pipeline mode) for a whole 8-step latent.
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
