"""Attention behind one dispatch point: q (N, Hq, D), k, v (N, Hkv, D) of one packed sequence -> (N, Hq, D),
GQA, scale 1/sqrt(D), no mask but the 1080p SR model's frame-local window.

Backends, chosen once (`select_backend`): "math" (fp32 softmax on bf16 inputs, rounded once: the reference's
numerics, for parity), "sdpa", "fa3" / "fa2". Frame-local layers use FlexAttention on CUDA and an exact
masked softmax elsewhere.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F

BACKENDS = ("math", "sdpa", "fa2", "fa3")


@dataclass(frozen=True)
class LocalWindow:
    """Frame-local visibility: a video query of frame f sees video frames f ± window and every audio/text key;
    `frame` is −1 for audio and text tokens, which see every key."""

    frame: torch.Tensor
    window: int
    tokens_per_frame: int
    block_mask: object | None = None  # FlexAttention BlockMask, built once per forward on CUDA

    @classmethod
    def for_sequence(cls, num_frames: int, tokens_per_frame: int, num_other: int, window: int, device=None):
        video = torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)
        other = torch.full((num_other,), -1, dtype=torch.int64, device=device)
        return cls(torch.cat([video, other]), window, tokens_per_frame)

    @property
    def num_video(self) -> int:
        return int((self.frame >= 0).sum())

    def with_block_mask(self) -> LocalWindow:
        return replace(self, block_mask=local_block_mask(self))

    def dense_mask(self) -> torch.Tensor:
        fq, fk = self.frame[:, None], self.frame[None, :]
        return (fq < 0) | (fk < 0) | ((fq - fk).abs() <= self.window)


def flash_attention_available(version: int) -> bool:
    module = "flash_attn_interface" if version == 3 else "flash_attn"
    return importlib.util.find_spec(module) is not None


def select_backend(device: torch.device | str, preferred: str | None = None) -> str:
    """The fastest exact-semantics backend for `device`, or `preferred` if it can run there."""
    device = torch.device(device)
    if preferred is not None:
        if preferred not in BACKENDS:
            raise ValueError(f"unknown attention backend {preferred!r}; choose from {', '.join(BACKENDS)}")
        if preferred in ("fa2", "fa3") and not (
            device.type == "cuda" and flash_attention_available(int(preferred[-1]))
        ):
            raise RuntimeError(f"attention backend {preferred} needs CUDA and its flash-attn package")
        return preferred
    if device.type != "cuda":
        return "sdpa"  # PyTorch's fused CPU kernel; "math" is the reference's exact rounding, for parity
    if torch.cuda.get_device_capability(device)[0] == 9 and flash_attention_available(3):
        return "fa3"
    if flash_attention_available(2):
        return "fa2"
    return "sdpa"


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, local: LocalWindow | None = None
) -> torch.Tensor:
    if local is not None:
        if local.block_mask is not None:
            return flex_local_attention(q, k, v, local)
        if backend == "math":
            return _math(q, k, v, mask=local.dense_mask())
        return _local_by_frame(q, k, v, local, backend)
    if backend == "math":
        return _math(q, k, v)
    if backend == "sdpa":
        return _sdpa(q, k, v)
    if backend == "fa3":
        return _flash3(q, k, v)
    if backend == "fa2":
        return _flash2(q, k, v)
    raise ValueError(f"unknown attention backend {backend!r}")


def _local_by_frame(q, k, v, local: LocalWindow, backend: str) -> torch.Tensor:
    """Exact frame-local attention without an (N, N) mask: memory O(window · tokens per frame)."""
    nv, tpf, n = local.num_video, local.tokens_per_frame, q.shape[0]
    frames = nv // tpf
    out = torch.empty_like(q)
    for f in range(frames):
        lo, hi = max(0, f - local.window) * tpf, min(frames, f + local.window + 1) * tpf
        rows = slice(f * tpf, (f + 1) * tpf)
        k_seen, v_seen = torch.cat([k[lo:hi], k[nv:n]]), torch.cat([v[lo:hi], v[nv:n]])
        out[rows] = attention(q[rows], k_seen, v_seen, backend)
    out[nv:] = attention(q[nv:], k, v, backend)
    return out


def _expand_kv(x: torch.Tensor, num_heads_q: int) -> torch.Tensor:
    return x.repeat_interleave(num_heads_q // x.shape[1], dim=1)


def _math(q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    hq = q.shape[1]
    qf = q.float().transpose(0, 1)  # (Hq, N, D)
    kf = _expand_kv(k, hq).float().transpose(0, 1)
    vf = _expand_kv(v, hq).float().transpose(0, 1)
    scores = (qf @ kf.transpose(1, 2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(dim=-1) @ vf
    return out.transpose(0, 1).to(q.dtype)


def _sdpa(q, k, v) -> torch.Tensor:
    # CPUs without bf16 units run the fused kernel twice as fast in fp32, which is also closer to the
    # reference's fp32 softmax; GPUs keep bf16.
    dtype = q.dtype
    if not q.is_cuda:
        q, k, v = q.float(), k.float(), v.float()
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # (N, H, D) -> (1, H, N, D)
    out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1).to(dtype)


def _flash3(q, k, v) -> torch.Tensor:
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0))
    out = out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the log-sum-exp
    return out.squeeze(0)


def _flash2(q, k, v) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)).squeeze(0)


# --- frame-local window on CUDA: FlexAttention with a block-sparse mask ------------------------------------


def local_block_mask(local: LocalWindow):
    """The FlexAttention block mask of `local` (built once per forward, shared by every local layer)."""
    from torch.nn.attention.flex_attention import create_block_mask

    frame, window = local.frame, local.window

    def allowed(b, h, q_idx, kv_idx):
        fq, fk = frame[q_idx], frame[kv_idx]
        return (fq < 0) | (fk < 0) | ((fq - fk).abs() <= window)

    n = frame.shape[0]
    return create_block_mask(allowed, B=None, H=None, Q_LEN=n, KV_LEN=n, device=frame.device)


@lru_cache(maxsize=1)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # Without compile FlexAttention materialises the full score matrix; compiled it is a fused kernel.
    return torch.compile(flex_attention, dynamic=False)


def flex_local_attention(q, k, v, local: LocalWindow) -> torch.Tensor:
    """Frame-local attention through FlexAttention (compiled on CUDA, eager elsewhere, e.g. in tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    if local.block_mask is None:
        local = local.with_block_mask()
    kernel = _compiled_flex_attention() if q.is_cuda else flex_attention
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # (N, H, D) -> (1, H, N, D)
    out = kernel(q, k, v, block_mask=local.block_mask, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)
