"""Which floating-point dtype computes fastest on this machine, and what the CPU offers.

On a CPU without bf16 units oneDNN emulates bf16 (a `Conv3d` ran 77× slower than fp32), so the preview engine
measures both once per process (docs/numerics.md); `MAGIHUMAN_CPU_DTYPE` overrides it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

CPU_DTYPE_ENV = "MAGIHUMAN_CPU_DTYPE"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    flags: tuple[str, ...]  # the bf16-relevant instruction-set flags the kernel reports
    capability: str  # the kernel family PyTorch dispatches to (e.g. AVX2, AVX512), after ATEN_CPU_CAPABILITY

    def describe(self) -> str:
        flags = ", ".join(self.flags) or "no AVX-512/bf16/AMX"
        return f"{self.model} ({self.cores} cores; {flags}; torch kernels: {self.capability})"


def cpu_info() -> CpuInfo:
    """The processor model and its AVX-512 / bf16 / AMX flags (from /proc/cpuinfo on Linux)."""
    model, flags = "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return CpuInfo(
        model, os.cpu_count() or 1, tuple(f for f in wanted if f in flags), torch.backends.cpu.get_cpu_capability()
    )


@dataclass(frozen=True)
class ModelDtypes:
    """The dtype each component is built or loaded in (docs/numerics.md). `transformer` is the DiTs' compute
    dtype: their transformer linears and attention (the embedders, norms and heads are always fp32)."""

    transformer: torch.dtype
    text: torch.dtype
    video_vae: torch.dtype
    audio_vae: torch.dtype
    decoder: torch.dtype


def model_dtypes(size: str, device: torch.device | str) -> ModelDtypes:
    device = torch.device(device)
    if size == "full":
        on_gpu = torch.bfloat16 if device.type == "cuda" else torch.float32
        return ModelDtypes(torch.bfloat16, torch.bfloat16, on_gpu, torch.float32, on_gpu)
    fastest = compute_dtype(device)
    return ModelDtypes(fastest, torch.float32, torch.float32, torch.float32, fastest)


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype the preview engine computes in on `device`: bf16 on CUDA, the faster of fp32/bf16 on CPU."""
    if torch.device(device).type != "cpu":
        return torch.bfloat16
    forced = os.environ.get(CPU_DTYPE_ENV)
    if forced:
        if forced not in _DTYPES:
            raise ValueError(f"{CPU_DTYPE_ENV}={forced!r}: expected one of {', '.join(_DTYPES)}")
        return _DTYPES[forced]
    return measured_cpu_dtype()


@lru_cache(maxsize=1)
def measured_cpu_dtype() -> torch.dtype:
    """The faster of fp32 and bf16 for a 3-D convolution and a matrix product (~10 ms to ~0.3 s)."""
    return min(_DTYPES.values(), key=_seconds_for)


def _seconds_for(dtype: torch.dtype) -> float:
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv3d(32, 32, 3, padding=1).to(dtype)
    frames = torch.randn(1, 32, 2, 24, 24, generator=generator).to(dtype)
    linear = nn.Linear(256, 256).to(dtype)
    tokens = torch.randn(512, 256, generator=generator).to(dtype)
    best = float("inf")
    with torch.no_grad():
        for _ in range(3):  # the first run includes oneDNN's kernel set-up
            start = time.perf_counter()
            conv(frames)
            linear(tokens)
            best = min(best, time.perf_counter() - start)
    return best
