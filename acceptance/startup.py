"""One start-up to ready in this process, for the `startup` check: `python -m acceptance.startup
--cache-dir DIR`. Builds the full distilled DiT (random weights) and the Turbo VAE decoder on the GPU, applies
the app's default speed steps with the compile cache in DIR, runs a 1-step 256p warm-up, and prints one JSON
line of seconds: build, speed steps, warm-up."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m acceptance.startup", description=__doc__)
    parser.add_argument("--cache-dir", required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    from acceptance.full_size import base_stage
    from magihuman.bench.workload import make_model
    from magihuman.config import FULL_TURBO_VAE, dit_presets
    from magihuman.memory import plan_fp8
    from magihuman.optimize import SpeedFlags, compile_decoder, optimize_dit
    from magihuman.random_models import build_random_turbo_vae
    from magihuman.timing import seconds_since

    device = torch.device("cuda")
    imported = time.perf_counter() - start
    flags = replace(SpeedFlags.default(device), cache_dir=Path(args.cache_dir))
    plan = plan_fp8(["distill"], None, device)
    dit = make_model(dit_presets("full")["distill"].dit, device, flags.attention)
    decoder = build_random_turbo_vae(FULL_TURBO_VAE, 0, device=device, dtype=torch.bfloat16)
    built = seconds_since(start, device) - imported
    optimize_dit(dit, replace(flags, fp8="distill" in plan.quantised), device)  # also points the caches at DIR
    compile_decoder(decoder)
    steps = time.perf_counter() - start - imported - built
    with torch.no_grad():
        text = torch.randn(300, dit.config.text_in_channels, device=device)
        video, _ = base_stage(dit, text, device, steps=1)
        decoder.decode(video)
    warm = seconds_since(start, device) - imported - built - steps
    print(json.dumps({"import s": imported, "build s": built, "speed steps s": steps, "warm-up s": warm}))


if __name__ == "__main__":
    main()
