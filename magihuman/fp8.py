"""Float8 transformer linears: row-wise scaled e4m3 weights and activations (the `--fp8` speed step).

Half the bytes of bf16, and the fp8 tensor-core GEMM on GPUs of compute capability ≥ 8.9; elsewhere the same
arithmetic is emulated exactly in fp32, so the CPU tests check the real numerics. Relative RMS error of one
linear ≈ 3.6 % (the e4m3 floor); of one velocity of the tiny random DiT 15-23 % (tests/test_optimize.py).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from magihuman.model.dit import DiT, ExpertLinear, Segments

Fp8Kernel = Literal["scaled_mm", "emulated"]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
_MIN_SCALE = 1e-12  # an all-zero row quantises to zeros instead of 0/0
_ALIGN = 16  # torch._scaled_mm needs both matrix dimensions of the weight divisible by 16


def quantize_rows(x: torch.Tensor, padded_columns: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise fp8: (R, K) -> (R, K') float8_e4m3fn with K' = `padded_columns` (zero padded), and (R, 1) fp32
    scales, so that row r ≈ q[r] · scale[r] with the row's absolute maximum mapped to 448."""
    amax = x.abs().amax(dim=1, keepdim=True).float()
    scale = (amax / FP8_MAX).clamp(min=_MIN_SCALE)
    scaled = x.float() / scale
    if padded_columns is not None and padded_columns > x.shape[1]:
        scaled = F.pad(scaled, (0, padded_columns - x.shape[1]))
    return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def scaled_matmul(
    x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, kernel: Fp8Kernel
) -> torch.Tensor:
    """(x_q · x_scale) @ (w_q · w_scale)ᵀ in bf16. "emulated" equals the "scaled_mm" kernel up to fp32 summation
    order: products of two fp8 values are exact in fp32."""
    if kernel == "scaled_mm":
        return torch._scaled_mm(x_q, w_q.t(), scale_a=x_scale, scale_b=w_scale.unsqueeze(0), out_dtype=torch.bfloat16)
    accumulated = x_q.float() @ w_q.float().t()  # (M, N) fp32
    return (accumulated * x_scale * w_scale.unsqueeze(0)).to(torch.bfloat16)


@lru_cache(maxsize=8)
def fp8_kernel(device: torch.device | str) -> Fp8Kernel:
    """The fp8 GEMM for `device`: "scaled_mm" where row-wise scaled kernels run (probed once), else "emulated"."""
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return "emulated"
    try:
        a = torch.ones(_ALIGN, _ALIGN, device=device).to(FP8_DTYPE)
        ones = torch.ones(_ALIGN, 1, device=device)
        scaled_matmul(a, ones, a, ones[:, 0], "scaled_mm")
    except RuntimeError as exc:  # e.g. a torch build without row-wise kernels for this architecture
        warnings.warn(f"row-wise fp8 GEMM unavailable on {device} ({exc}); fp8 runs emulated", stacklevel=2)
        return "emulated"
    return "scaled_mm"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Fp8ExpertLinear(nn.Module):
    """`ExpertLinear` with a row-wise scaled fp8 weight (experts·out', in') and `weight_scale`; out' and in' are
    padded to 16 for `_scaled_mm` (3 of the 15B model's 6 shapes, by at most 0.12 %)."""

    def __init__(self, in_features: int, out_features: int, experts: int, kernel: Fp8Kernel = "emulated") -> None:
        super().__init__()
        self.in_features, self.out_features, self.experts, self.kernel = in_features, out_features, experts, kernel
        self.padded_in, self.padded_out = _round_up(in_features, _ALIGN), _round_up(out_features, _ALIGN)
        self.register_buffer("weight", torch.zeros(experts * self.padded_out, self.padded_in, dtype=FP8_DTYPE))
        self.register_buffer("weight_scale", torch.ones(experts * self.padded_out, dtype=torch.float32))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: ExpertLinear, kernel: Fp8Kernel = "emulated") -> Fp8ExpertLinear:
        """Quantise `linear`'s bf16 weight on its own device, one expert block at a time."""
        weight = linear.weight
        with torch.device(weight.device):
            fp8 = cls(weight.shape[1], linear.out_features, linear.experts, kernel)
        for e, block in enumerate(weight.split(linear.out_features, dim=0)):  # (out, in) per expert
            q, scale = quantize_rows(block, fp8.padded_in)
            rows = slice(e * fp8.padded_out, e * fp8.padded_out + linear.out_features)
            fp8.weight[rows] = q
            fp8.weight_scale[rows] = scale[:, 0]
        return fp8

    def forward(self, x: torch.Tensor, segments: Segments) -> torch.Tensor:
        x_q, x_scale = quantize_rows(x.to(torch.bfloat16), self.padded_in)  # (N, in') fp8, (N, 1) fp32
        if self.experts == 1:
            return self._expert(0, x_q, x_scale)
        parts = [
            self._expert(e, q, s)
            for e, (q, s) in enumerate(zip(x_q.split(list(segments)), x_scale.split(list(segments)), strict=True))
        ]
        return torch.cat(parts, dim=0)

    def _expert(self, e: int, x_q: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        if x_q.shape[0] == 0:  # an empty segment (the GEMM kernels reject M = 0)
            return x_q.new_empty((0, self.out_features), dtype=torch.bfloat16)
        rows = slice(e * self.padded_out, (e + 1) * self.padded_out)
        out = scaled_matmul(x_q, x_scale, self.weight[rows], self.weight_scale[rows], self.kernel)
        return out[:, : self.out_features]  # (n, out) bf16; drops the padded rows' zeros

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, experts={self.experts}, kernel={self.kernel}"


@torch.no_grad()
def quantize_fp8_(model: DiT, kernel: Fp8Kernel | None = None) -> DiT:
    """Replace every transformer `ExpertLinear` of `model` by an `Fp8ExpertLinear` in place, one at a time (the
    peak is the model plus one linear). Keys keep their names and gain `...weight_scale`. Idempotent."""
    if kernel is None:
        kernel = fp8_kernel(next(model.parameters()).device)
    targets = [name for name, module in model.block.named_modules() if isinstance(module, ExpertLinear)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.block.get_submodule(parent_name)
        setattr(parent, child, Fp8ExpertLinear.from_linear(getattr(parent, child), kernel))
    if targets and next(model.parameters()).is_cuda:
        torch.cuda.empty_cache()  # hand the freed bf16 blocks back, so memory readings are honest
    return model


def relative_rms(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double(), reference.detach().double()
    return float((value - reference).norm() / reference.norm().clamp(min=1e-300))
