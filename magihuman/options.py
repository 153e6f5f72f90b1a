"""What an entry point asks of the engine, declared once for the CLI, the benchmark and the studio;
`magihuman.parallel.start(options)` turns it into an engine."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from magihuman.config import ModelSize
from magihuman.optimize import SpeedFlags, add_speed_arguments

MODEL_ENV = "MAGIHUMAN_MODEL"
DEFAULT_DITS = ("distill", "sr-540p")  # the studio's set: the distilled base and the 540p upscaler


def default_device() -> str:
    """The one device default: the GPU where there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_model_size(environ: Mapping[str, str] | None = None) -> ModelSize:
    """$MAGIHUMAN_MODEL, else the full model where there is a CUDA GPU and the tiny preview engine elsewhere."""
    env = os.environ if environ is None else environ
    return env.get(MODEL_ENV) or ("full" if default_device() == "cuda" else "tiny")


@dataclass(frozen=True)
class EngineOptions:
    size: ModelSize = "tiny"
    weights_dir: Path | None = None  # None: ./weights or $MAGIHUMAN_WEIGHTS (magihuman.weights)
    device: str = "cpu"
    dits: tuple[str, ...] = DEFAULT_DITS  # the DiTs kept resident (the tiny engine builds all four)
    speed: SpeedFlags = field(default_factory=SpeedFlags)
    cp: int | None = None  # GPUs per clip; None: as many as torchrun started
    cfg_parallel: bool = True

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model", choices=["full", "tiny"], help=f"default: ${MODEL_ENV}, else full on CUDA, tiny elsewhere"
        )
        parser.add_argument(
            "--weights-dir",
            type=Path,
            help="local weights folder (default ./weights or $MAGIHUMAN_WEIGHTS; `python -m magihuman download`)",
        )
        parser.add_argument(
            "--cp",
            type=int,
            help="GPUs per clip (context parallel; 1, 2, 4 or 8), under `torchrun --nproc-per-node N`; "
            "default: the number of processes",
        )
        parser.add_argument(
            "--cfg-parallel",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="with --cp ≥ 2, run the base model's two CFG forwards on two halves of the GPUs (default: on)",
        )
        add_speed_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace, dits: Iterable[str] = DEFAULT_DITS) -> EngineOptions:
        device = default_device()
        return cls(
            size=args.model or default_model_size(),
            weights_dir=Path(args.weights_dir) if args.weights_dir else None,
            device=device,
            dits=tuple(dits),
            speed=SpeedFlags.from_args(args, device),
            cp=args.cp,
            cfg_parallel=args.cfg_parallel,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EngineOptions:
        """For launches without a command line (Spaces)."""
        device = default_device()
        return cls(size=default_model_size(environ), device=device, speed=SpeedFlags.from_env(device, environ))
