"""Seeded random weights for the networks: the tiny preview engine and the benchmarks' full-size models (speed
does not depend on weight values). transformers and diffusers are imported only when called: the acceptance
run's GPU hosts lack them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING

import torch

from magihuman.config import FULL_TURBO_VAE, TINY_DIT, TINY_TURBO_VAE, ModelSize, TurboVAEConfig, dit_presets
from magihuman.fp8 import fp8_kernel, quantize_fp8_
from magihuman.model.dit import DiT, build_dit
from magihuman.model.rope import rope_bands
from magihuman.model.turbo_vae import TurboVAE
from magihuman.precision import model_dtypes

if TYPE_CHECKING:
    from diffusers import ModelMixin
    from transformers import PreTrainedTokenizerFast, T5GemmaConfig

    from magihuman.engine import Models
    from magihuman.text import TextEncoder
    from magihuman.vae import AudioVAE, VideoVAE

ALL_DITS = ("distill", "base", "sr-540p", "sr-1080p")  # random_dits seeds by this order

# --- 1. Whole model sets ---------------------------------------------------------------------------------


def tiny_models(seed: int = 0, device: torch.device | str = "cpu") -> Models:
    """Every component with a tiny random configuration; the same seed gives the same weights, whatever dtype
    `magihuman.precision` picks for the arithmetic."""
    return random_models("tiny", seed, device)


def random_models(
    size: ModelSize = "tiny",
    seed: int = 0,
    device: torch.device | str = "cpu",
    dits: Iterable[str] = ALL_DITS,
    fp8: Collection[str] = (),
) -> Models:
    """Every component with seeded random weights, tiny or full size. Full size is built on `device`; the DiTs in
    `fp8` are quantised as soon as built, so the peak is the final footprint plus one bf16 DiT."""
    from magihuman.engine import Models
    from magihuman.vae import SAO_VAE_CONFIG, WAN22_VAE_CONFIG

    device = torch.device(device)
    full = size == "full"
    dtypes = model_dtypes(size, device)
    built = random_dits(size, seed, device, dits, fp8)
    if full:
        text = build_random_text_encoder(t5gemma_9b_config(), seed, device, dtypes.text)
        video_vae = build_random_video_vae(WAN22_VAE_CONFIG, seed, device, dtypes.video_vae, build_on_device=True)
        audio_vae = build_random_audio_vae(SAO_VAE_CONFIG, seed, device, build_on_device=True)
    else:
        text = build_tiny_text_encoder(seed, device=device)
        video_vae = build_tiny_video_vae(seed, device=device)
        audio_vae = build_tiny_audio_vae(seed, device=device)
    decoder = build_random_turbo_vae(FULL_TURBO_VAE if full else TINY_TURBO_VAE, seed, device, dtypes.decoder)
    return Models(text=text, video_vae=video_vae, audio_vae=audio_vae, decoder=decoder, dits=built)


def random_dits(
    size: ModelSize = "tiny",
    seed: int = 0,
    device: torch.device | str = "cpu",
    dits: Iterable[str] = ALL_DITS,
    fp8: Collection[str] = (),
) -> dict[str, DiT]:
    """The DiTs of `random_models` alone: what a benchmark's worker rank holds."""
    device = torch.device(device)
    compute = model_dtypes(size, device).transformer
    presets = dit_presets(size)
    built = {}
    for i, name in enumerate(ALL_DITS):  # seeds by position in ALL_DITS: a subset keeps the same weights
        if name in dits:
            built[name] = init_random_(build_dit(presets[name].dit, device), seed + i).eval().requires_grad_(False)
            built[name].set_compute_dtype(compute)
            if name in fp8:
                quantize_fp8_(built[name], fp8_kernel(device))
    return built


# --- 2. The DiT and the Turbo VAE decoder ----------------------------------------------------------------


@torch.no_grad()
def init_random_(model: DiT, seed: int) -> DiT:
    """Seeded weights with the golden fixtures' spread (`up_gate_proj` wider, so that a few activations reach
    the ±7 clamps)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.ndim == 2:
            std = (3.0 if "up_gate_proj" in name else 1.0) / math.sqrt(param.shape[1])
        else:
            std = 0.1
        values = torch.randn(param.shape, generator=generator, device=device, dtype=torch.float32) * std
        param.copy_(values.to(param.dtype))
    bands = model.adapter.rope.bands
    bands.copy_(rope_bands(model.config.rope_bands_per_axis, model.config.rope_temperature))
    return model


def build_random_turbo_vae(
    config: TurboVAEConfig = TINY_TURBO_VAE,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TurboVAE:
    model = TurboVAE(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            std = 0.1 if name.endswith(".bias") else param[0].numel() ** -0.5
            param.normal_(0.0, std, generator=generator)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# --- 3. The text encoder: the tiny one (tests, preview engine) and the full-size one (benchmark) ---------


# Gemma's special-token ids (pad 0, eos 1, bos 2, unk 3), then the 256 byte symbols: any text tokenises.
_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with Gemma's conventions (`<bos>` prepended, no `<eos>`): any text tokenises."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def t5gemma_config(
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    sliding_window: int,
    vocab_size: int = len(_SPECIAL_TOKENS) + 256,
) -> T5GemmaConfig:
    from transformers import T5GemmaConfig

    from magihuman.text import encoder_only

    module = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=sliding_window,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config = T5GemmaConfig(encoder=module, decoder=module, vocab_size=vocab_size)
    return encoder_only(config)


def tiny_t5gemma_config(hidden_size: int = TINY_DIT.text_in_channels) -> T5GemmaConfig:
    """A short window, so that long test prompts exercise the sliding-window mask."""
    return t5gemma_config(hidden_size, 2 * hidden_size, 2, 4, 2, hidden_size // 4, sliding_window=32)


def t5gemma_9b_config() -> T5GemmaConfig:
    """The encoder shape of google/t5gemma-9b-9b-ul2 (9,241,705,984 parameters), for the benchmark."""
    return t5gemma_config(3584, 14336, 42, 16, 8, 256, sliding_window=4096, vocab_size=256_000)


def build_random_text_encoder(
    config: T5GemmaConfig, seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> TextEncoder:
    """A seeded random T5Gemma encoder on `device` with the byte-level tokenizer (n bytes: n + 1 tokens). The
    global RNGs are forked, so the caller's streams are not disturbed."""
    from transformers import T5GemmaEncoderModel

    from magihuman.text import TextEncoder

    with torch.random.fork_rng(), torch.device(device):
        torch.manual_seed(seed)
        model = T5GemmaEncoderModel._from_config(config, dtype=dtype)
    return TextEncoder(build_tiny_tokenizer(), model.eval().requires_grad_(False))


def build_tiny_text_encoder(
    seed: int = 0, hidden_size: int = TINY_DIT.text_in_channels, device: torch.device | str = "cpu"
) -> TextEncoder:
    return build_random_text_encoder(tiny_t5gemma_config(hidden_size), seed, device)


# --- 4. The video and audio VAEs -------------------------------------------------------------------------


def build_random_video_vae(
    config: Mapping | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    build_on_device: bool = False,
) -> VideoVAE:
    """A seeded random Wan2.2 VAE, built on the CPU (the same weights on any device) unless `build_on_device`."""
    from diffusers import AutoencoderKLWan

    from magihuman.vae import TINY_WAN_VAE_CONFIG, VideoVAE

    config = TINY_WAN_VAE_CONFIG if config is None else config
    return VideoVAE(_random(AutoencoderKLWan, config, seed, device, dtype, build_on_device))


def build_tiny_video_vae(seed: int = 0, device: torch.device | str = "cpu") -> VideoVAE:
    return build_random_video_vae(None, seed, device)


def build_random_audio_vae(
    config: Mapping | None = None, seed: int = 0, device: torch.device | str = "cpu", build_on_device=False
) -> AudioVAE:
    """A seeded random Oobleck VAE, fp32; see `build_random_video_vae`."""
    from diffusers import AutoencoderOobleck

    from magihuman.vae import TINY_SAO_VAE_CONFIG, AudioVAE

    config = TINY_SAO_VAE_CONFIG if config is None else config
    return AudioVAE(_random(AutoencoderOobleck, config, seed, device, torch.float32, build_on_device))


def build_tiny_audio_vae(seed: int = 0, device: torch.device | str = "cpu") -> AudioVAE:
    return build_random_audio_vae(None, seed, device)


def _random(
    cls: type[ModelMixin], config: Mapping, seed: int, device, dtype: torch.dtype, build_on_device: bool
) -> ModelMixin:
    with torch.random.fork_rng(), torch.device(device if build_on_device else "cpu"):
        torch.manual_seed(seed)
        model = cls(**config)
    model = model.to(device)
    return model if dtype == torch.float32 else model.to(dtype)  # diffusers warns at any dtype argument
