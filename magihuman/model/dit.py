"""The single-stream DiT of daVinci-MagiHuman.

One transformer over the packed sequence [video | audio | text]. No timestep input: the network reads the
noise level from the latents and returns the flow-matching velocity (noise − clean) for video and audio.

The dtypes of each part, which the golden fixtures check bit for bit, are in docs/numerics.md.

Sandwich ("multimodal") layers keep three experts of every weight stacked along dim 0 (video, audio, text); the
sequence is ordered by modality, so each expert runs on one contiguous segment (`segments`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from magihuman.config import DiTConfig
from magihuman.model.attention import LocalWindow, attention
from magihuman.model.rope import RotaryEmbedding, apply_rope
from magihuman.packing import TokenLayout, patchify_video, token_coords, unpatchify_video

if TYPE_CHECKING:  # the parallel package imports nothing from here at run time
    from magihuman.parallel.ulysses import ContextParallel

Segments = tuple[int, int, int]


# --- 1. Building blocks with optional per-modality experts -----------------------------------------------


def _split_rows(x: torch.Tensor, segments: Segments) -> list[torch.Tensor]:
    return list(torch.split(x, list(segments), dim=0))


class ExpertLinear(nn.Module):
    """Linear without bias in the compute dtype (bf16 unless the model was switched); `experts` weight blocks
    of `out_features` rows stacked along dim 0."""

    def __init__(self, in_features: int, out_features: int, experts: int) -> None:
        super().__init__()
        self.experts, self.out_features = experts, out_features
        self.weight = nn.Parameter(torch.empty(experts * out_features, in_features, dtype=torch.bfloat16))

    def forward(self, x: torch.Tensor, segments: Segments) -> torch.Tensor:
        """(N, in) -> (N, out) in the weights' dtype: for bf16, input rounded to bf16 and one bf16 rounding of
        the fp32-accumulated result."""
        x = x.to(self.weight.dtype)
        if self.experts == 1:
            return F.linear(x, self.weight)
        blocks = self.weight.split(self.out_features, dim=0)
        parts = [F.linear(part, w) for part, w in zip(_split_rows(x, segments), blocks, strict=True)]
        return torch.cat(parts, dim=0)


class ExpertRMSNorm(nn.Module):
    """RMSNorm over the last dim in fp32, scale (1 + weight), result cast back to the input dtype."""

    def __init__(self, dim: int, experts: int, eps: float) -> None:
        super().__init__()
        self.experts, self.dim, self.eps = experts, dim, eps
        self.weight = nn.Parameter(torch.zeros(experts * dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor, segments: Segments) -> torch.Tensor:
        if self.experts == 1:
            return rms_norm(x, self.weight, self.eps)
        blocks = self.weight.split(self.dim)
        parts = [rms_norm(part, w, self.eps) for part, w in zip(_split_rows(x, segments), blocks, strict=True)]
        return torch.cat(parts, dim=0)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    t = x.float()
    t = t * torch.rsqrt(t.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (t * (weight + 1)).to(x.dtype)


def swiglu7(u: torch.Tensor) -> torch.Tensor:
    """Gated: even channels are the gate g, odd the linear half l; g'·σ(1.702·g')·(l' + 1), clamped at ±7."""
    gate = u[..., 0::2].clamp(max=7.0)
    linear = u[..., 1::2].clamp(min=-7.0, max=7.0)
    return gate * torch.sigmoid(1.702 * gate) * (linear + 1)


def gelu7(u: torch.Tensor) -> torch.Tensor:
    """Ungated: u'·σ(1.702·u') with u' = min(u, 7)."""
    u = u.clamp(max=7.0)
    return u * torch.sigmoid(1.702 * u)


# --- 2. One transformer layer: pre-norm attention with QK-norm, RoPE and a per-head gate; pre-norm MLP ---


class Attention(nn.Module):
    def __init__(self, config: DiTConfig, experts: int) -> None:
        super().__init__()
        c = config
        self.num_heads_q, self.num_heads_kv, self.head_dim = c.num_heads_q, c.num_heads_kv, c.head_dim
        qkv_rows = (c.num_heads_q + 2 * c.num_heads_kv) * c.head_dim + c.num_heads_q  # q, k, v, gate logits
        self.pre_norm = ExpertRMSNorm(c.hidden_size, experts, c.norm_eps)
        self.linear_qkv = ExpertLinear(c.hidden_size, qkv_rows, experts)
        self.q_norm = ExpertRMSNorm(c.head_dim, experts, c.norm_eps)
        self.k_norm = ExpertRMSNorm(c.head_dim, experts, c.norm_eps)
        self.linear_proj = ExpertLinear(c.hidden_size, c.hidden_size, experts)
        # Context parallel (magihuman.parallel): x holds this process's rows only; `exchange.attend` trades
        # rows for heads around the attention call so the kernel still sees the whole sequence.
        self.exchange: ContextParallel | None = None

    def forward(
        self,
        x: torch.Tensor,
        segments: Segments,
        rope: torch.Tensor,
        backend: str,
        local: LocalWindow | None,
    ) -> torch.Tensor:
        n = x.shape[0]
        hq, hkv, d = self.num_heads_q, self.num_heads_kv, self.head_dim
        # 1. Norm and projection; the result (compute dtype) is split into q (N,Hq,D), k, v (N,Hkv,D), gate (N,Hq).
        qkv = self.linear_qkv(self.pre_norm(x, segments), segments)
        compute = qkv.dtype
        qkv = qkv.float()
        q, k, v, gate = qkv.split([hq * d, hkv * d, hkv * d, hq], dim=1)
        q, k, v = q.reshape(n, hq, d), k.reshape(n, hkv, d), v.reshape(n, hkv, d)
        # 2. QK-norm per head and RoPE, in fp32.
        q = apply_rope(self.q_norm(q, segments), rope)
        k = apply_rope(self.k_norm(k, segments), rope)
        # 3. Attention over the whole sequence on inputs in the compute dtype.
        attend = attention if self.exchange is None else self.exchange.attend
        out = attend(q.to(compute), k.to(compute), v.to(compute), backend, local)  # (N, Hq, D)
        # 4. Per-head sigmoid gate, then the output projection (added to the fp32 residual by the caller).
        out = (out * torch.sigmoid(gate).unsqueeze(-1)).reshape(n, hq * d)
        return self.linear_proj(out, segments)


class MLP(nn.Module):
    def __init__(self, config: DiTConfig, experts: int, gelu: bool, intermediate: int) -> None:
        super().__init__()
        self.activation = gelu7 if gelu else swiglu7
        up_rows = intermediate if gelu else 2 * intermediate  # swiglu: gate/linear interleaved
        self.pre_norm = ExpertRMSNorm(config.hidden_size, experts, config.norm_eps)
        self.up_gate_proj = ExpertLinear(config.hidden_size, up_rows, experts)
        self.down_proj = ExpertLinear(intermediate, config.hidden_size, experts)

    def forward(self, x: torch.Tensor, segments: Segments) -> torch.Tensor:
        u = self.up_gate_proj(self.pre_norm(x, segments), segments).float()
        return self.down_proj(self.activation(u), segments)


class TransformerLayer(nn.Module):
    def __init__(self, config: DiTConfig, index: int) -> None:
        super().__init__()
        experts = config.num_experts(index)
        self.is_local = index in config.local_attn_layers
        self.attention = Attention(config, experts)
        self.mlp = MLP(config, experts, index in config.gelu7_layers, config.mlp_intermediate_size(index))

    def forward(self, x, segments, rope, backend, local):
        x = x + self.attention(x, segments, rope, backend, local if self.is_local else None)
        return x + self.mlp(x, segments)


class TransformerBlock(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(config, i) for i in range(config.num_layers))


# --- 3. Embedders and the full model ---------------------------------------------------------------------


class Adapter(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.video_embedder = nn.Linear(config.video_in_channels, config.hidden_size, dtype=torch.float32)
        self.text_embedder = nn.Linear(config.text_in_channels, config.hidden_size, dtype=torch.float32)
        self.audio_embedder = nn.Linear(config.audio_in_channels, config.hidden_size, dtype=torch.float32)
        self.rope = RotaryEmbedding(config.rope_bands_per_axis, config.rope_temperature)


class DiT(nn.Module):
    """The daVinci-MagiHuman DiT. State-dict keys are the official checkpoint's."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.attention_backend = "math"  # set by the loader / optimiser through set_attention_backend
        self.context_parallel: ContextParallel | None = None  # set through set_context_parallel
        self.adapter = Adapter(config)
        self.block = TransformerBlock(config)
        self.final_norm_video = ExpertRMSNorm(config.hidden_size, 1, config.norm_eps)
        self.final_norm_audio = ExpertRMSNorm(config.hidden_size, 1, config.norm_eps)
        self.final_linear_video = nn.Linear(config.hidden_size, config.video_in_channels, bias=False)
        self.final_linear_audio = nn.Linear(config.hidden_size, config.audio_in_channels, bias=False)

    def set_attention_backend(self, backend: str) -> None:
        self.attention_backend = backend

    def set_context_parallel(self, cp: ContextParallel | None) -> DiT:
        """Split every forward's tokens over the processes of `cp` (Ulysses); None: the whole sequence here."""
        self.context_parallel = cp
        for layer in self.block.layers:
            layer.attention.exchange = cp
        return self

    def set_compute_dtype(self, dtype: torch.dtype) -> DiT:
        """Compute the transformer linears and attention in `dtype` (fp32 for CPUs where bf16 is slow)."""
        for module in self.modules():
            if isinstance(module, ExpertLinear):
                module.weight.data = module.weight.data.to(dtype)
        return self

    # --- packing --------------------------------------------------------------------------------------

    def layout(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor) -> TokenLayout:
        return TokenLayout(tuple(video.shape[2:]), audio.shape[1], text.shape[0], self.config.patch_size_thw)

    def rope_table(self, layout: TokenLayout, device) -> torch.Tensor:
        coords = token_coords(layout, self.config.coords_style, self.config.text_offset, device=device)
        return self.adapter.rope(coords)

    def local_window(self, layout: TokenLayout, device) -> LocalWindow | None:
        if not self.config.local_attn_layers:
            return None
        local = LocalWindow.for_sequence(
            layout.patched_thw[0],
            layout.tokens_per_frame,
            layout.audio_len + layout.text_len,
            self.config.frame_receptive_field,
            device=device,
        )
        return local.with_block_mask() if torch.device(device).type == "cuda" else local

    # --- forward --------------------------------------------------------------------------------------

    def input_rows(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor) -> list[torch.Tensor]:
        """fp32 input rows per modality, in sequence order: video patches (Nv, 192), audio (A, 64), text (L, C)."""
        return [patchify_video(video.float(), self.config.patch_size_thw), audio[0].float(), text.float()]

    def embed_rows(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """Residual stream (rows, hidden) fp32 after the three input embedders."""
        a = self.adapter
        embedders = (a.video_embedder, a.audio_embedder, a.text_embedder)
        return torch.cat([embed(part) for embed, part in zip(embedders, rows, strict=True)], dim=0)

    def embed(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Residual stream (N, hidden) fp32 after the three input embedders, in sequence order."""
        return self.embed_rows(self.input_rows(video, audio, text))

    def output_rows(self, x: torch.Tensor, segments: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        """Final norms and linears in fp32 on the video and audio rows: (nv, 192) and (na, 64); text rows unused."""
        nv, na, _ = segments
        v = self.final_linear_video(self.final_norm_video(x[:nv], (nv, 0, 0)))
        a = self.final_linear_audio(self.final_norm_audio(x[nv : nv + na], (na, 0, 0)))
        return v, a

    def heads(self, x: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Final norms and linears in fp32; returns (video (1, C, T, H, W), audio (1, A, 64)) velocities."""
        v, a = self.output_rows(x, layout.segments)
        return unpatchify_video(v, layout, self.config.latent_channels), a.unsqueeze(0)

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity for one sample.

        video: (1, 48, T, H, W) noisy latent; audio: (1, A, 64) noisy (or fixed) audio latent; text: (L, C)
        embedding of the real prompt tokens only. Returns (v_video like `video`, v_audio like `audio`), fp32.
        """
        layout = self.layout(video, audio, text)
        rope = self.rope_table(layout, video.device)
        local = self.local_window(layout, video.device)  # over the whole sequence, also under context parallel
        rows, segments = self.input_rows(video, audio, text), layout.segments
        cp = self.context_parallel
        if cp is not None:  # keep this process's contiguous chunk of rows (and of the RoPE table)
            rows, rope, segments = cp.split(rows, rope, layout)
        x = self.embed_rows(rows)
        for layer in self.block.layers:
            x = layer(x, segments, rope, self.attention_backend, local)
        v, a = self.output_rows(x, segments)
        if cp is not None:  # every process gets the whole sequence's outputs
            v, a = cp.gather(v, a, layout)
        return unpatchify_video(v, layout, self.config.latent_channels), a.unsqueeze(0)


# --- 4. Construction helpers -----------------------------------------------------------------------------


def build_dit(config: DiTConfig, device: torch.device | str = "meta") -> DiT:
    """Construct the DiT with uninitialised storage on `device` (meta by default: no memory at all)."""
    with torch.device(device):
        return DiT(config)
