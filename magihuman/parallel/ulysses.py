"""Ulysses context parallel for one DiT forward (DeepSpeed-Ulysses, as the reference's `cp_size`).

P contiguous chunks of the N packed tokens (no padding, so no fake keys); two all-to-alls around attention:

    q (n, Hq, D), k, v (n, Hkv, D)  ──pack per destination──►  (P·n, (Hq + 2·Hkv)/P, D)
        ──all_to_all──►  (N, (Hq + 2·Hkv)/P, D)  ──►  q (N, Hq/P, D), k, v (N, Hkv/P, D)
    attention on the whole sequence (any backend, the frame-local window included)
    out (N, Hq/P, D)  ──all_to_all──►  (P·n, Hq/P, D)  ──►  (n, Hq, D)

Heads are split contiguously, so GQA keeps its query/KV pairs without expanding KV heads: P must divide Hkv. The
output rows are gathered padded to the largest chunk (gloo cannot gather unequal tensors). The exchange is a
graph break for `torch.compile`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from magihuman.model.attention import LocalWindow, attention
from magihuman.packing import TokenLayout

Segments = tuple[int, int, int]
CP_SIZES = (1, 2, 4, 8)  # the full model's 8 KV heads split evenly


# --- 1. Splitting the sequence ---------------------------------------------------------------------------


def split_sizes(n: int, parts: int) -> tuple[int, ...]:
    """Rows per process for N rows over P processes: N // P each, the first N % P one more."""
    if parts < 1 or n < 0:
        raise ValueError(f"cannot split {n} rows into {parts} parts")
    base, extra = divmod(n, parts)
    return tuple(base + (1 if r < extra else 0) for r in range(parts))


def row_range(sizes: tuple[int, ...], rank: int) -> tuple[int, int]:
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def local_segments(segments: Segments, start: int, end: int) -> Segments:
    """(video, audio, text) row counts inside [start, end): the chunk is still ordered by modality."""
    out, offset = [], 0
    for length in segments:
        out.append(max(0, min(end, offset + length) - max(start, offset)))
        offset += length
    return out[0], out[1], out[2]


def local_rows(rows: list[torch.Tensor], start: int, end: int) -> list[torch.Tensor]:
    """The rows of [start, end) of each modality's (rows, channels) tensor, given in sequence order."""
    out, offset = [], 0
    for part in rows:
        lo, hi = max(start - offset, 0), min(end - offset, part.shape[0])
        out.append(part[lo : max(lo, hi)])
        offset += part.shape[0]
    return out


def check_cp_size(cp: int, num_heads_kv: int) -> None:
    """Refuse a context-parallel size that does not split the KV heads evenly (the reason in the message)."""
    if cp not in CP_SIZES or num_heads_kv % cp:
        legal = [p for p in CP_SIZES if num_heads_kv % p == 0]
        raise ValueError(
            f"context-parallel size {cp} is not possible: every GPU takes an equal share of the model's "
            f"{num_heads_kv} KV heads, so it must be one of {', '.join(map(str, legal))}"
        )


# --- 2. The exchange around attention, and the output gather ---------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One context-parallel group as one process sees it; `group=None` with size 1: no communication."""

    group: dist.ProcessGroup | None
    rank: int
    size: int


def _all_to_all(x: torch.Tensor, output_rows: int, out_splits: list[int], in_splits: list[int], shard: Shard):
    out = x.new_empty((output_rows, *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=shard.group)
    return out


def seq_to_heads(x: torch.Tensor, sizes: tuple[int, ...], shard: Shard) -> torch.Tensor:
    """(n, P·h, D) local rows of all heads -> (N, h, D) all rows of this process's h heads."""
    n, heads, d = x.shape
    p = shard.size
    per_dest = x.reshape(n, p, heads // p, d).transpose(0, 1).reshape(p * n, heads // p, d)  # destination-major
    return _all_to_all(per_dest, sum(sizes), list(sizes), [n] * p, shard)


def heads_to_seq(x: torch.Tensor, sizes: tuple[int, ...], shard: Shard) -> torch.Tensor:
    """(N, h, D) all rows of this process's h heads -> (n, P·h, D) its own rows of all heads."""
    _, h, d = x.shape
    p, n = shard.size, sizes[shard.rank]
    back = _all_to_all(x, p * n, [n] * p, list(sizes), shard)  # (P·n, h, D), source-major
    return back.reshape(p, n, h, d).transpose(0, 1).reshape(n, p * h, d)


def gather_rows(x: torch.Tensor, sizes: tuple[int, ...], shard: Shard) -> torch.Tensor:
    """(n, C) local rows -> (N, C) on every process; rows are padded to the largest chunk for the gather."""
    width, largest = x.shape[1], max(sizes)
    padded = x.new_zeros(largest, width)
    padded[: x.shape[0]] = x
    out = x.new_empty(shard.size * largest, width)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the new name from torch 2.13
    gather(out, padded, group=shard.group)
    return torch.cat([out[r * largest : r * largest + size] for r, size in enumerate(sizes)])


class ContextParallel:
    """Ulysses context parallel for a DiT over `shard` (the world, or one CFG branch's group): every process of
    the group must call the forward with the same inputs, in the same order, on the group's device."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self._sizes: tuple[int, ...] = (0,)
        self.bytes_sent = 0  # all-to-all bytes this process sent to the others since creation (a counter)

    def split(self, rows: list[torch.Tensor], rope: torch.Tensor, layout: TokenLayout):
        """(this process's input rows per modality, its RoPE rows, its segments), remembered for the gather."""
        self._sizes = split_sizes(layout.num_tokens, self.shard.size)
        start, end = row_range(self._sizes, self.shard.rank)
        return local_rows(rows, start, end), rope[start:end], local_segments(layout.segments, start, end)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, local: LocalWindow | None
    ) -> torch.Tensor:
        """q (n, Hq, D), k, v (n, Hkv, D) local rows -> (n, Hq, D) attention over the whole sequence."""
        return _attend(self, q, k, v, backend, local)

    def gather(self, v: torch.Tensor, a: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Local output rows (video (nv, Cv), audio (na, Ca)) -> the whole sequence's (Nv, Cv), (A, Ca)."""
        if self.shard.size == 1:
            return v, a
        # A chunk's video and audio rows are contiguous in sequence order, so the chunks' (video, audio) rows
        # laid end to end are all video rows, then all audio rows. Text rows are not sent.
        width = max(v.shape[1], a.shape[1])
        rows = v.new_zeros(v.shape[0] + a.shape[0], width)
        rows[: v.shape[0], : v.shape[1]] = v
        rows[v.shape[0] :, : a.shape[1]] = a
        sizes = []
        for r in range(self.shard.size):
            nv, na, _ = local_segments(layout.segments, *row_range(self._sizes, r))
            sizes.append(nv + na)
        full = gather_rows(rows, tuple(sizes), self.shard)
        nv, na, _ = layout.segments
        return full[:nv, : v.shape[1]], full[nv : nv + na, : a.shape[1]]


@torch.compiler.disable
def _attend(cp: ContextParallel, q, k, v, backend: str, local: LocalWindow | None) -> torch.Tensor:
    shard, sizes = cp.shard, cp._sizes
    if shard.size == 1:
        return attention(q, k, v, backend, local)
    hq, hkv, p = q.shape[1], k.shape[1], shard.size
    # 1. One all-to-all for q|k|v: per destination its Hq/P query heads, then Hkv/P key and value heads.
    n, d = q.shape[0], q.shape[2]
    packed = torch.cat(
        [q.reshape(n, p, hq // p, d), k.reshape(n, p, hkv // p, d), v.reshape(n, p, hkv // p, d)], dim=2
    ).reshape(n, hq + 2 * hkv, d)
    full = seq_to_heads(packed, sizes, shard)  # (N, (Hq + 2·Hkv)/P, D)
    q_all, k_all, v_all = full.split([hq // p, hkv // p, hkv // p], dim=1)
    # 2. The unchanged attention backend on the whole sequence, for this process's heads.
    out = attention(q_all, k_all, v_all, backend, local)  # (N, Hq/P, D)
    # 3. Back to this process's rows with all heads.
    result = heads_to_seq(out, sizes, shard)
    # Bytes sent: (P-1)/P of the packed heads, and the other processes' rows of this process's heads.
    sent = packed.numel() * (p - 1) // p + (out.shape[0] - n) * out[0].numel()
    cp.bytes_sent += sent * q.element_size()
    return result
