"""`environment`: the machine, the library versions, which attention backends import, and the two
ceilings every later number is read against: the dense bf16 GEMM rate and the device-to-device copy bandwidth."""

from __future__ import annotations

import importlib.util
import platform
from importlib import metadata

import torch

from acceptance.runner import Context, Outcome
from magihuman.model.attention import flash_attention_available, select_backend
from magihuman.precision import cpu_info
from magihuman.timing import median_seconds

# Sanity bounds, far below an H100/H200 (≈ 790 TFLOP/s, 3.0-4.3 TB/s measured copies): below them the
# GPU or the torch build is not what the numbers of the later checks assume (e.g. clocks throttled, no tensor
# cores used). On a CPU the numbers are only recorded.
MIN_CUDA_BF16_TFLOPS = 50.0
MIN_CUDA_COPY_GBPS = 500.0
# Imported by the studio and the full engine, absent on the GPU hosts: listed, not needed.
OPTIONAL_MODULES = ("av", "diffusers", "gradio", "transformers")


def check_environment(ctx: Context) -> Outcome:
    out = ctx.outcome
    device = ctx.device
    out.measured.update(
        python=platform.python_version(),
        torch=torch.__version__,
        cuda_build=torch.version.cuda or "none",
        triton=_version("triton"),
        safetensors=_version("safetensors"),
        missing_optional=", ".join(m for m in OPTIONAL_MODULES if not _importable(m)) or "none",
    )
    out.measured["attention"] = {
        "fa3": flash_attention_available(3),
        "fa2": flash_attention_available(2),
        "flex": _importable("torch.nn.attention.flex_attention"),
        "selected": select_backend(device),
    }
    if ctx.cuda:
        props = torch.cuda.get_device_properties(device)
        out.measured.update(
            gpu=props.name,
            gpus=torch.cuda.device_count(),
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none",
        )
        out.at_least("bf16 GEMM TFLOP/s (8192³)", gemm_tflops(device, 8192, torch.bfloat16), MIN_CUDA_BF16_TFLOPS)
        out.at_least("D2D copy GB/s (read+write)", copy_gbps(device, 2**31), MIN_CUDA_COPY_GBPS)
    else:
        cpu = cpu_info()
        out.measured["cpu"] = cpu.model
        out.measured["cpu_bf16_units"] = any(flag in cpu.flags for flag in ("avx512_bf16", "amx_bf16"))
        out.measured["fp32 GEMM TFLOP/s (1024³)"] = gemm_tflops(device, 1024, torch.float32)
        out.measured["copy GB/s (read+write)"] = copy_gbps(device, 2**26)
        out.notes.append("CPU: the GEMM and copy numbers are recorded only (the bounds apply on CUDA)")
    return out


def gemm_tflops(device: torch.device, n: int, dtype: torch.dtype) -> float:
    """Achieved rate of an n×n×n matmul (2n³ FLOPs per call)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, warmup=3, iters=10 if device.type == "cuda" else 3)
    return 2 * n**3 / seconds / 1e12


def copy_gbps(device: torch.device, num_bytes: int) -> float:
    """Achieved bandwidth of a same-device tensor copy, counting bytes read plus bytes written."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, warmup=2, iters=10 if device.type == "cuda" else 3)
    return 2 * num_bytes / seconds / 1e9


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"
