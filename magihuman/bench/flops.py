"""FLOP arithmetic of one DiT forward, and a counter of the FLOPs an engine call spends in its DiTs."""

from __future__ import annotations

from functools import partial

from magihuman.config import DiTConfig
from magihuman.model.dit import DiT
from magihuman.packing import TokenLayout

H100_BF16_DENSE_TFLOPS = 790.0  # measured 8192³ bf16 matmul ceiling


def attended_pairs(config: DiTConfig, layout: TokenLayout, layer: int) -> int:
    """Query/key pairs one head of `layer` computes (all pairs, or the frame-local window's)."""
    n = layout.num_tokens
    if layer not in config.local_attn_layers:
        return n * n
    frames, per_frame = layout.patched_thw[0], layout.tokens_per_frame
    other = n - layout.num_video
    video_pairs = (
        sum(
            (min(frames - 1, f + config.frame_receptive_field) - max(0, f - config.frame_receptive_field) + 1)
            for f in range(frames)
        )
        * per_frame
        * per_frame
    )
    return video_pairs + 2 * layout.num_video * other + other * other


def forward_flops(config: DiTConfig, layout: TokenLayout) -> float:
    """Multiply-adds ×2 of one forward: linears (one expert per token) and attention (QKᵀ and PV)."""
    c, n = config, layout.num_tokens
    qkv_rows = (c.num_heads_q + 2 * c.num_heads_kv) * c.head_dim + c.num_heads_q
    flops = 0.0
    for i in range(c.num_layers):
        inter = c.mlp_intermediate_size(i)
        up_rows = inter if i in c.gelu7_layers else 2 * inter
        flops += 2 * n * c.hidden_size * (qkv_rows + c.hidden_size + up_rows) + 2 * n * inter * c.hidden_size
        flops += 4 * attended_pairs(c, layout, i) * c.num_heads_q * c.head_dim
    nv, na, nt = layout.segments
    flops += 2 * c.hidden_size * (nv * c.video_in_channels * 2 + na * c.audio_in_channels * 2 + nt * c.text_in_channels)
    return flops


class FlopCounter:
    """Adds up the FLOPs (`forward_flops`) of every forward of the given DiTs, from the shapes of the inputs."""

    def __init__(self, dits: dict[str, DiT]) -> None:
        self.total = 0.0
        self._hooks = [dit.register_forward_pre_hook(partial(self._count, dit)) for dit in dits.values()]

    def _count(self, dit: DiT, module: DiT, args: tuple) -> None:
        self.total += forward_flops(dit.config, dit.layout(*args))

    def take(self) -> float:
        """The FLOPs counted since the last call."""
        total, self.total = self.total, 0.0
        return total

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
