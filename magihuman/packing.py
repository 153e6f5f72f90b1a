"""Token packing: latents and text in, one token sequence out, and back.

The sequence is always [video tokens | audio tokens | text tokens]; video tokens are ordered by latent
frame, then patch row, then patch column. Two channel orders exist and both are reproduced on purpose:
the DiT reads video patches channel-major (c·4 + ph·2 + pw) but writes them position-major
((ph·2 + pw)·C + c).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from magihuman.config import CoordsStyle, latents_for_frames


@dataclass(frozen=True)
class TokenLayout:
    """Sizes of one packed sequence. `latent_thw` is the unpatched video latent (T, H, W)."""

    latent_thw: tuple[int, int, int]
    audio_len: int
    text_len: int
    patch_size_thw: tuple[int, int, int] = (1, 2, 2)

    def __post_init__(self) -> None:
        for size, patch, axis in zip(self.latent_thw, self.patch_size_thw, "THW", strict=True):
            if size % patch:
                raise ValueError(f"latent {axis} = {size} is not a multiple of the patch size {patch}")
        if min(self.latent_thw) < 1 or self.audio_len < 1 or self.text_len < 1:
            raise ValueError(f"every modality needs at least one token: {self}")

    @property
    def patched_thw(self) -> tuple[int, int, int]:
        return tuple(s // p for s, p in zip(self.latent_thw, self.patch_size_thw, strict=True))

    @property
    def tokens_per_frame(self) -> int:
        _, hp, wp = self.patched_thw
        return hp * wp

    @property
    def num_video(self) -> int:
        tp, hp, wp = self.patched_thw
        return tp * hp * wp

    @property
    def segments(self) -> tuple[int, int, int]:
        """Token counts per modality, in sequence order (video, audio, text)."""
        return (self.num_video, self.audio_len, self.text_len)

    @property
    def num_tokens(self) -> int:
        return sum(self.segments)


# --- 1. Video patches ------------------------------------------------------------------------------------


def patchify_video(latent: torch.Tensor, patch_size_thw: tuple[int, int, int] = (1, 2, 2)) -> torch.Tensor:
    """(1, C, T, H, W) -> (T/pt · H/ph · W/pw, C·pt·ph·pw), channel index c·(pt·ph·pw) + patch position."""
    _, c, t, h, w = latent.shape
    pt, ph, pw = patch_size_thw
    x = latent.reshape(c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(1, 3, 5, 0, 2, 4, 6)  # (Tp, Hp, Wp, C, pt, ph, pw)
    return x.reshape((t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify_video(tokens: torch.Tensor, layout: TokenLayout, channels: int) -> torch.Tensor:
    """(Nv, pt·ph·pw·C) model output -> (1, C, T, H, W); channel index (patch position)·C + c."""
    tp, hp, wp = layout.patched_thw
    pt, ph, pw = layout.patch_size_thw
    x = tokens.reshape(tp, hp, wp, pt, ph, pw, channels)
    x = x.permute(6, 0, 3, 1, 4, 2, 5)  # (C, Tp, pt, Hp, ph, Wp, pw)
    return x.reshape(1, channels, tp * pt, hp * ph, wp * pw)


# --- 2. Coordinates: per token (t, h, w, size T, H, W, reference T, H, W) --------------------------------


def token_coords(
    layout: TokenLayout, style: CoordsStyle, text_offset: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """(N, 9) fp32 coordinates. Style v2 is the base/distilled model's, v1 the super-resolution model's.

    Video: its own grid, reference = size. Audio: time only; its reference length is (A − 1)//4 + 1 in v2
    and the video's latent frame count in v1. Text: v2 puts every token at l − L with reference 1 (so it is
    not rotated unless L = 1), v1 at l with reference 2 (spread over t ∈ [0, 1]).
    """
    tp, hp, wp = layout.patched_thw
    a, n_text = layout.audio_len, layout.text_len
    f32 = dict(dtype=torch.float32, device=device)

    t, h, w = torch.meshgrid(torch.arange(tp, **f32), torch.arange(hp, **f32), torch.arange(wp, **f32), indexing="ij")
    video = torch.stack([t.flatten(), h.flatten(), w.flatten()], dim=1)
    video = torch.cat([video, video.new_tensor([tp, hp, wp] * 2).expand(video.shape[0], 6)], dim=1)

    audio_ref = latents_for_frames(a) if style == "v2" else tp
    audio = _time_only(torch.arange(a, **f32), size=a, ref=audio_ref)

    if style == "v2":
        text = _time_only(torch.arange(n_text, **f32) - n_text, size=n_text, ref=1)
    elif style == "v1":
        if n_text == 1:
            raise ValueError("coordinate style v1 needs at least 2 text tokens (its text scale is 1/(L − 1))")
        text = _time_only(torch.arange(n_text, **f32) + text_offset, size=n_text, ref=2)
    else:
        raise ValueError(f"unknown coordinate style {style!r}")
    return torch.cat([video, audio, text])


def _time_only(t: torch.Tensor, size: int, ref: int) -> torch.Tensor:
    rows = torch.zeros(t.shape[0], 9, dtype=t.dtype, device=t.device)
    rows[:, 0] = t
    rows[:, 3:] = t.new_tensor([size, 1, 1, ref, 1, 1])
    return rows
