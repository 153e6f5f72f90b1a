"""What the benchmarks run: the token layouts per resolution, random DiTs, seeded inputs, prompts of a given
token count, and the fp8-against-bf16 quality measurement."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from magihuman.config import RESOLUTIONS, DiTConfig, dit_presets
from magihuman.fp8 import fp8_kernel, quantize_fp8_, relative_rms
from magihuman.model.attention import select_backend
from magihuman.model.dit import DiT, build_dit
from magihuman.packing import TokenLayout
from magihuman.random_models import init_random_
from magihuman.sampling import denoise_distill, gaussian_noise


@dataclass(frozen=True)
class Case:
    resolution: str
    model: str
    layout: TokenLayout


def cases(resolutions: list[str], num_latent_frames: int, audio_len: int, text_len: int, size: str) -> list[Case]:
    presets = dit_presets(size)
    out = []
    for resolution in resolutions:
        res = RESOLUTIONS[resolution]
        model = res.sr_model or "distill"
        layout = TokenLayout(
            (num_latent_frames, *res.latent_hw()), audio_len, text_len, presets[model].dit.patch_size_thw
        )
        out.append(Case(resolution, model, layout))
    return out


def make_model(config: DiTConfig, device: torch.device, backend: str | None) -> DiT:
    model = init_random_(build_dit(config, "meta").to_empty(device=device), seed=0).eval().requires_grad_(False)
    model.set_attention_backend(select_backend(device, backend))
    return model


def sample_inputs(config: DiTConfig, layout: TokenLayout, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Seeded (video, audio, text) inputs of one forward at `layout`'s token counts."""
    g = torch.Generator(device=device).manual_seed(0)
    video = torch.randn(1, config.latent_channels, *layout.latent_thw, generator=g, device=device)
    audio = torch.randn(1, layout.audio_len, config.audio_in_channels, generator=g, device=device)
    text = torch.randn(layout.text_len, config.text_in_channels, generator=g, device=device)
    return video, audio, text


@torch.no_grad()
def fp8_quality(
    model: DiT, layout: TokenLayout, device: torch.device, steps: int = 0
) -> dict[str, tuple[float, float]]:
    """Quantise the bf16 `model` to fp8 in place; returns the relative RMS errors (video, audio) against the
    model's own bf16 results on the same inputs: of one velocity, and with `steps` > 0 of the latent after a
    whole distilled run of that many steps (same noise)."""
    inputs = sample_inputs(model.config, layout, device)
    video_shape, audio_shape = tuple(inputs[0].shape), tuple(inputs[1].shape)

    def outputs() -> list[tuple[torch.Tensor, torch.Tensor]]:
        results = [model(*inputs)]
        if steps:
            noise = gaussian_noise(torch.Generator(device=device).manual_seed(1), device)
            results.append(denoise_distill(model, noise, inputs[2], video_shape, audio_shape, steps=steps))
        return results

    reference = outputs()
    quantize_fp8_(model, fp8_kernel(device))
    names = ["one velocity", f"{steps}-step latent"]
    return {
        name: tuple(relative_rms(out, ref) for out, ref in zip(got, want, strict=True))
        for name, got, want in zip(names, outputs(), reference, strict=False)
    }


def bench_prompt(text_tokens: int, repetition: int) -> str:
    """A prompt of `text_tokens` tokens for the byte-level tokenizer of the random encoders (one byte each,
    after `<bos>`), different per repetition so that the text cache does not hide the encoder's time."""
    stem = f"Take {repetition}: a woman looks into the camera and says, 'Welcome to the studio.' "
    return (stem * (text_tokens // len(stem) + 1))[: max(1, text_tokens - 1)]
