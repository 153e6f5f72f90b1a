"""Fitting the full engine on one GPU: which DiTs get fp8 linears when `--fp8` is left unset ("auto").

In bf16 the default studio set (distill + sr-540p + encoder, 83 GB) does not fit an 80 GB H100; with the SR DiT
in fp8 it does (67 GB). So "auto" quantises DiTs one at a time until the set fits, SR models first: they refine
an already-formed picture, so they are the least sensitive. DiT sizes are exact; the rest are estimates.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import torch

from magihuman.config import DiTConfig, ModelSize, dit_presets
from magihuman.fp8 import quantize_fp8_
from magihuman.model.dit import build_dit

GB = 1e9
# Plan for this many GB instead of the card's total (a shared card, or a ZeroGPU call smaller than the card).
GPU_MEMORY_ENV = "MAGIHUMAN_GPU_MEMORY_GB"
# Parameter counts of the reference components: T5Gemma encoder 9,241,705,984 bf16; Wan2.2 VAE 704,688,668
# bf16; Oobleck 156,112,514 fp32; Turbo VAE decoder 107,122,892 bf16.
TEXT_ENCODER_BYTES = 9_241_705_984 * 2
VAE_BYTES = 704_688_668 * 2 + 156_112_514 * 4 + 107_122_892 * 2
QUANTISE_FIRST = tuple(sorted(dit_presets(), key=lambda name: dit_presets()[name].quantise_rank))


@lru_cache(maxsize=16)
def dit_bytes(config: DiTConfig, fp8: bool) -> int:
    """Exact bytes of one DiT's weights (built on meta: no memory, about a second)."""
    model = build_dit(config, "meta")
    if fp8:
        quantize_fp8_(model, "emulated")  # the kernel choice does not change the stored bytes
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@dataclass(frozen=True)
class Fp8Plan:
    quantised: frozenset[str]  # the DiTs that get fp8 linears
    needed_bytes: int  # estimated peak with this plan
    bf16_bytes: int  # estimated peak with every DiT in bf16
    available_bytes: int | None  # the card's memory (None: not planned, e.g. on a CPU)
    automatic: bool

    def describe(self) -> str | None:
        if not self.automatic or not self.quantised:
            return None
        fits = "fits" if self.needed_bytes <= (self.available_bytes or 0) else "may still not fit: try --offload"
        return (
            f"fp8 linears for {', '.join(sorted(self.quantised))} (auto: all in bf16 needs ≈ "
            f"{self.bf16_bytes / GB:.0f} GB, the GPU has {self.available_bytes / GB:.0f} GB; with fp8 ≈ "
            f"{self.needed_bytes / GB:.0f} GB, {fits}). --no-fp8 keeps bf16"
        )


def peak_bytes(dits: dict[str, DiTConfig], quantised: Iterable[str], offload: bool) -> int:
    """Estimated peak GPU memory of an engine with these DiTs. With offload only the first base model stays
    resident, and the largest offloaded model (a DiT or the text encoder) joins it while it runs."""
    quantised = set(quantised)
    sizes = {name: dit_bytes(config, name in quantised) for name, config in dits.items()}
    headroom = max((dit_presets()[name].headroom_bytes for name in dits), default=0)
    if not offload:
        return sum(sizes.values()) + TEXT_ENCODER_BYTES + VAE_BYTES + headroom
    kept = next((name for name in ("distill", "base") if name in sizes), None)
    others = [size for name, size in sizes.items() if name != kept]
    return sizes.get(kept, 0) + max([TEXT_ENCODER_BYTES, *others]) + VAE_BYTES + headroom


def plan_fp8(
    dits: Iterable[str],
    fp8: bool | None,
    device: torch.device | str,
    size: ModelSize = "full",
    offload: bool = False,
    available_bytes: int | None = None,
) -> Fp8Plan:
    """Which of `dits` to quantise: all or none as `fp8` says; for None ("auto") on a GPU, the fewest in
    `QUANTISE_FIRST` order that make the estimated peak fit."""
    names = list(dits)
    if fp8 is not None:
        return Fp8Plan(frozenset(names) if fp8 else frozenset(), 0, 0, None, automatic=False)
    device = torch.device(device)
    if size != "full" or device.type != "cuda":
        return Fp8Plan(frozenset(), 0, 0, None, automatic=True)
    if available_bytes is None and os.environ.get(GPU_MEMORY_ENV):
        available_bytes = int(float(os.environ[GPU_MEMORY_ENV]) * GB)
    if available_bytes is None:
        available_bytes = torch.cuda.get_device_properties(device).total_memory
    presets = dit_presets(size)
    configs = {name: presets[name].dit for name in names}
    bf16 = peak_bytes(configs, (), offload)
    quantised: list[str] = []
    needed = bf16
    for name in (n for n in QUANTISE_FIRST if n in configs):
        if needed <= available_bytes:
            break
        quantised.append(name)
        needed = peak_bytes(configs, quantised, offload)
    return Fp8Plan(frozenset(quantised), needed, bf16, available_bytes, automatic=True)
