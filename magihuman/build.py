"""Assemble an `Engine`: the full models from local weights, or the tiny preview models built in memory.

The tiny engine runs the whole pipeline in seconds on a CPU and writes valid mp4s of noise, for tests, CI and
newcomers without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from pathlib import Path

import torch

from magihuman.cache import load_dit_cached
from magihuman.config import FULL_DIT, ModelSize, dit_presets
from magihuman.engine import Engine, Models
from magihuman.loading import load_turbo_vae
from magihuman.memory import plan_fp8
from magihuman.model.dit import DiT
from magihuman.optimize import SpeedFlags, apply_speed_flags, optimize_dit
from magihuman.options import DEFAULT_DITS, default_device
from magihuman.precision import model_dtypes
from magihuman.random_models import ALL_DITS, tiny_models
from magihuman.text import load_text_encoder
from magihuman.vae import load_audio_vae, load_video_vae
from magihuman.weights import resolve_weights

StatusFn = Callable[[str], None]


def load_engine(
    model: ModelSize = "full",
    weights_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    dits: Iterable[str] = DEFAULT_DITS,
    speed: SpeedFlags | None = None,
    output_root: str | Path | None = None,
    on_status: StatusFn | None = None,
) -> Engine:
    """Load (full) or build (tiny) every component once and return a ready engine. `dits`: the DiTs to keep
    resident (tiny builds all four); `on_status` gets one line per loading step."""
    status = on_status or (lambda line: None)
    device = torch.device(device or default_device())
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
    """Only the DiTs, as `load_engine` holds them: what a context-parallel worker rank serves."""
    status = on_status or (lambda line: None)
    device = torch.device(device or default_device())
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


def full_models(
    weights_dir: str | Path | None,
    device: torch.device,
    dits: Iterable[str],
    status: StatusFn,
    cache_dir: Path | None = None,
    fp8: Collection[str] = (),
) -> Models:
    """The official weights from a local folder, the DiTs through the converted-weight cache."""
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
