"""The studio's start-up: its command line, and the engine it loads through `magihuman.parallel.start` with the
studio's policy (no torch.compile or pinned memory on ZeroGPU, compile and warm-up elsewhere)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from magihuman.engine import Engine
from magihuman.enhance import MODEL_ENV as ENHANCER_MODEL_ENV
from magihuman.optimize import warm_up
from magihuman.options import EngineOptions
from magihuman.parallel import ParallelContext, init_parallel, start
from studio import space
from studio.replicas import add_replica_arguments

AUTH_ENV = "MAGIHUMAN_AUTH"

# What main() asks of the engine (its flags and the torchrun job it joined); read when the engine starts loading.
# Empty where no main() runs (Spaces import the app): the environment decides then.
CHOSEN: dict = {}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="daVinci-MagiHuman Studio")
    # Hugging Face Spaces run `python app.py` with GRADIO_SERVER_NAME=0.0.0.0; elsewhere this machine only.
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
        help="interface to bind (default: $GRADIO_SERVER_NAME, else 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT") or 7860))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (anyone can use it)")
    parser.add_argument("--auth", help=f"user:password required for the UI and API (or ${AUTH_ENV})")
    parser.add_argument("--mcp", action="store_true", help="also serve /generate, /upscale and /enhance as MCP tools")
    parser.add_argument("--enhancer-model", help=f"chat model of the prompt enhancer (or ${ENHANCER_MODEL_ENV})")
    EngineOptions.add_arguments(parser)
    add_replica_arguments(parser)
    return parser.parse_args(argv)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth (or $MAGIHUMAN_AUTH) must look like user:password")
    return user, password


def join(options: EngineOptions) -> bool:
    """Join the torchrun job (or none) before the page is served, so that a bad layout stops the launch. True on
    rank 0, which then serves the page; the other ranks serve rank 0's DiT forwards here and return False."""
    try:
        parallel = init_parallel(options.cp, options.size, cfg_parallel=options.cfg_parallel, speed=options.speed)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if not parallel.is_driver:
        start(options, ctx=parallel)
        return False
    CHOSEN.update(options=options, parallel=parallel)
    return True


def load_studio_engine(status: space.StatusFn) -> Engine:
    """The engine the flags (or the environment) ask for, compiled and warmed up on a GPU."""
    options: EngineOptions = CHOSEN.get("options") or EngineOptions.from_env()
    parallel: ParallelContext | None = CHOSEN.get("parallel")
    if space.ON_ZEROGPU:  # no torch.compile in ZeroGPU workers (studio.gpu compiles AoT), no pinned memory at load
        options = replace(options, device="cuda", speed=replace(options.speed, compile=False, offload=False))
    engine = start(options, on_status=status, ctx=parallel)
    if engine.layout:
        status(f"layout: {engine.layout}")
    if options.speed.compile and not space.ON_ZEROGPU:
        status("compiling and warming up the DiT for each resolution")
        status(f"compiled and warmed up in {warm_up(engine):.0f} s")
    return engine
