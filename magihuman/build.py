"""Assemble an `Engine`: the full models from local weights, or the tiny preview models built in memory.

`load_engine("tiny")` builds every component with tiny random configurations (the same code as the full
models), seeded, in a few seconds on a CPU: the whole pipeline runs and writes valid mp4s of noise pictures
and noise sound. Tests, CI and newcomers without a GPU use it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from pathlib import Path

import torch

from magihuman.cache import load_dit_cached
from magihuman.config import FULL_DIT, FULL_TURBO_VAE, TINY_TURBO_VAE, ModelSize, dit_presets
from magihuman.engine import Engine, Models
from magihuman.fp8 import fp8_kernel, quantize_fp8_
from magihuman.memory import plan_fp8
from magihuman.model.dit import DiT, build_dit, init_random_
from magihuman.model.turbo_vae import build_random_turbo_vae, load_turbo_vae
from magihuman.optimize import SpeedFlags, apply_speed_flags, optimize_dit
from magihuman.precision import model_dtypes
from magihuman.text import build_random_text_encoder, build_tiny_text_encoder, load_text_encoder, t5gemma_9b_config
from magihuman.vae import (
    SAO_VAE_CONFIG,
    WAN22_VAE_CONFIG,
    build_random_audio_vae,
    build_random_video_vae,
    build_tiny_audio_vae,
    build_tiny_video_vae,
    load_audio_vae,
    load_video_vae,
)
from magihuman.weights import resolve_weights

StatusFn = Callable[[str], None]
DEFAULT_DITS = ("distill", "sr-540p")
ALL_DITS = ("distill", "base", "sr-540p", "sr-1080p")


def default_model_size() -> ModelSize:
    """The full model where there is a CUDA GPU, the tiny preview engine elsewhere."""
    return "full" if torch.cuda.is_available() else "tiny"


def load_engine(
    model: ModelSize = "full",
    weights_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    dits: Iterable[str] = DEFAULT_DITS,
    speed: SpeedFlags | None = None,
    output_root: str | Path | None = None,
    on_status: StatusFn | None = None,
) -> Engine:
    """Load (full) or build (tiny) every component once and return a ready engine.

    `dits` names the DiT checkpoints to keep resident (the tiny engine always builds all four: they are
    small). `speed` selects the optimisation steps and the attention backend (default: compile on CUDA only,
    the fastest attention; see magihuman.optimize).
    `on_status` receives one line per loading step, for a UI status box.
    """
    status = on_status or (lambda line: None)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    speed = speed or SpeedFlags.default(device)
    dits = list(dict.fromkeys(dits))  # read twice below: a generator would be empty the second time
    if model not in ("full", "tiny"):
        raise ValueError(f"unknown model {model!r}; expected 'full' or 'tiny'")
    plan = plan_fp8(ALL_DITS if model == "tiny" else dits, speed.fp8, device, model, speed.offload)
    if plan.describe():
        status(plan.describe())
    if model == "tiny":
        models = tiny_models(device=device)
    else:
        models = full_models(weights_dir, device, dits, status, speed.cache_dir, plan.quantised)
    for line in apply_speed_flags(models, speed, device, plan.quantised):
        status(line)
    backend = next(iter(models.dits.values())).attention_backend
    status(f"ready: {', '.join(models.dits)} on {device} (attention: {backend})")
    return Engine(models, device, preview=model == "tiny", output_root=output_root)


def load_dits(
    model: ModelSize = "full",
    weights_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    dits: Iterable[str] = DEFAULT_DITS,
    speed: SpeedFlags | None = None,
    on_status: StatusFn | None = None,
) -> dict[str, DiT]:
    """Only the DiTs, as `load_engine` holds them (same weights, fp8 plan and speed steps, no offload): what a
    context-parallel worker rank serves. The text encoder and VAEs (about 20 GB) stay on rank 0."""
    status = on_status or (lambda line: None)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    speed = speed or SpeedFlags.default(device)
    if model == "tiny":
        # Built whole (seconds): its DiTs are then the driver's, whatever preview settings load_engine applies.
        return load_engine("tiny", device=device, speed=speed, on_status=status).models.dits
    dits = list(dict.fromkeys(dits))
    plan = plan_fp8(dits, speed.fp8, device, model, offload=False)
    presets = dit_presets("full")
    paths = resolve_weights(weights_dir, [presets[d].tier for d in dits])
    loaded = {}
    for name in dits:
        status(f"loading the {name} DiT from {paths.dit(name)}")
        dit = load_dit_cached(
            paths.dit(name),
            presets[name].dit,
            device,
            fp8=name in plan.quantised,
            cache_dir=speed.cache_dir,
            status=status,
        )
        optimize_dit(dit, replace(speed, fp8=name in plan.quantised), device)
        loaded[name] = dit
    return loaded


def tiny_models(seed: int = 0, device: torch.device | str = "cpu") -> Models:
    """Every component with a tiny random configuration; the same seed gives the same weights.

    The DiT transformers and the Turbo VAE decoder (where the preview spends its time) compute in the
    fastest dtype of `device` (`magihuman.precision`): bf16 on CUDA and on CPUs with bf16 units, fp32 on
    the others. The weights are the same either way (drawn in bf16 first), only the arithmetic differs.
    The tiny text encoder and the Wan and audio VAEs are fp32 everywhere.
    """
    return random_models("tiny", seed, device)


def random_models(
    size: ModelSize = "tiny",
    seed: int = 0,
    device: torch.device | str = "cpu",
    dits: Iterable[str] = ALL_DITS,
    fp8: Collection[str] = (),
) -> Models:
    """Every component with seeded random weights: the tiny preview engine, or the full-size models of the
    benchmark (speed does not depend on weight values; the text encoder gets the byte-level tokenizer).

    Full size is built directly on `device`, in the dtypes the loaders give there (bf16 on CUDA). The DiTs
    named in `fp8` are quantised as soon as they are built, so the peak is the final footprint plus one bf16
    DiT. Dtypes per component: `magihuman.precision.model_dtypes` (the tiny DiTs and decoder compute in the
    fastest dtype of `device`).
    """
    device = torch.device(device)
    full = size == "full"
    dtypes = model_dtypes(size, device)
    built = random_dits(size, seed, device, dits, fp8)
    if full:
        text = build_random_text_encoder(t5gemma_9b_config(), seed, device, dtypes.text)
        video_vae = build_random_video_vae(WAN22_VAE_CONFIG, seed, device, dtypes.video_vae, build_on_device=True)
        audio_vae = build_random_audio_vae(SAO_VAE_CONFIG, seed, device, build_on_device=True)
    else:
        text = build_tiny_text_encoder(seed, device=device)
        video_vae = build_tiny_video_vae(seed, device=device)
        audio_vae = build_tiny_audio_vae(seed, device=device)
    decoder = build_random_turbo_vae(FULL_TURBO_VAE if full else TINY_TURBO_VAE, seed, device, dtypes.decoder)
    return Models(text=text, video_vae=video_vae, audio_vae=audio_vae, decoder=decoder, dits=built)


def random_dits(
    size: ModelSize = "tiny",
    seed: int = 0,
    device: torch.device | str = "cpu",
    dits: Iterable[str] = ALL_DITS,
    fp8: Collection[str] = (),
) -> dict[str, DiT]:
    """The DiTs of `random_models` alone (the same weights and compute dtype): what a benchmark's worker rank
    holds."""
    device = torch.device(device)
    compute = model_dtypes(size, device).transformer
    presets = dit_presets(size)
    built = {}
    for i, name in enumerate(ALL_DITS):  # seeds by position in ALL_DITS: a subset keeps the same weights
        if name in dits:
            built[name] = init_random_(build_dit(presets[name].dit, device), seed + i).eval().requires_grad_(False)
            built[name].set_compute_dtype(compute)
            if name in fp8:
                quantize_fp8_(built[name], fp8_kernel(device))
    return built


def full_models(
    weights_dir: str | Path | None,
    device: torch.device,
    dits: Iterable[str],
    status: StatusFn,
    cache_dir: Path | None = None,
    fp8: Collection[str] = (),
) -> Models:
    """Load the official weights from a local folder (see `python -m magihuman download`).

    The DiTs go through the converted-weight cache in `cache_dir` (None: no cache), with fp8 linears for the
    DiTs named in `fp8`; the other speed steps are applied afterwards by `apply_speed_flags`.
    """
    dits = list(dict.fromkeys(dits))
    unknown = [d for d in dits if d not in ALL_DITS]
    if unknown:
        raise ValueError(f"unknown DiT(s) {unknown}; choose from {', '.join(ALL_DITS)}")
    presets = dit_presets("full")
    paths = resolve_weights(weights_dir, [presets[d].tier for d in dits])
    dtypes = model_dtypes("full", device)
    status(f"loading the text encoder from {paths.text_encoder}")
    text = load_text_encoder(paths.text_encoder, device, dtypes.text, hidden_size=FULL_DIT.text_in_channels)
    status("loading the video and audio VAEs")
    video_vae = load_video_vae(paths.video_vae, device, dtypes.video_vae)
    audio_vae = load_audio_vae(paths.audio_vae, device)
    status("loading the Turbo VAE decoder")
    decoder = load_turbo_vae(paths.turbo_vae_config, paths.turbo_vae_checkpoint, device, dtypes.decoder)
    loaded = {}
    for name in dits:
        status(f"loading the {name} DiT from {paths.dit(name)}")
        loaded[name] = load_dit_cached(
            paths.dit(name), presets[name].dit, device, fp8=name in fp8, cache_dir=cache_dir, status=status
        )
    return Models(text, video_vae, audio_vae, decoder, loaded)
