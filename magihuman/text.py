"""Prompt -> text embedding for the DiT with the T5Gemma encoder, as the reference computes it: default
tokenisation, the last hidden state through fp16, at most `TEXT_ENCODER.max_tokens` rows (docs/numerics.md).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5GemmaConfig, T5GemmaEncoderModel

from magihuman.config import TEXT_ENCODER
from magihuman.errors import CheckpointError
from magihuman.loading import ModelWrapper, check_keys
from magihuman.weights import COMPONENTS, T5GEMMA_REPO

# --- 1. The embedding and the encoder wrapper ------------------------------------------------------------


@dataclass(frozen=True)
class TextEmbedding:
    """One encoded prompt: `tokens` (L, C) fp32, real rows only; shared through the cache, so read-only."""

    tokens: torch.Tensor
    num_tokens_before_cap: int

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    @property
    def was_capped(self) -> bool:
        """True when the prompt had more tokens than the DiT reads (the UI warns that the end was cut)."""
        return self.num_tokens_before_cap > self.num_tokens


class TextEncoder(ModelWrapper):
    """A tokenizer and a `T5GemmaEncoderModel`, with an LRU cache by prompt (locked: handlers run on threads)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: T5GemmaEncoderModel,
        max_tokens: int = TEXT_ENCODER.max_tokens,
        cache_size: int = TEXT_ENCODER.cache_size,
    ) -> None:
        self.tokenizer, self.model = tokenizer, model.eval().requires_grad_(False)
        self.max_tokens, self.cache_size = max_tokens, cache_size
        self._cache: OrderedDict[str, TextEmbedding] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def hidden_size(self) -> int:
        return self.model.config.encoder.hidden_size

    def count_tokens(self, prompt: str) -> int:
        """Tokens the encoder would see, `<bos>` included, before the cap (tokenizer only, cheap)."""
        return len(self.tokenizer(_valid_text(prompt))["input_ids"])

    def encode(self, prompt: str) -> TextEmbedding:
        with self._lock:
            if prompt in self._cache:
                self._cache.move_to_end(prompt)
                return self._cache[prompt]
        embedding = self._encode(prompt)
        with self._lock:
            self._cache[prompt] = embedding
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return embedding

    @torch.no_grad()
    def _encode(self, prompt: str) -> TextEmbedding:
        # Defaults only: the reference neither pads nor truncates before the encoder, so neither do we.
        batch = self.tokenizer([_valid_text(prompt)], return_tensors="pt")
        input_ids = batch["input_ids"].to(self.device)  # (1, n)
        attention_mask = batch["attention_mask"].to(self.device)  # all ones: a single unpadded prompt
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (1, n, C)
        tokens = hidden[0, : self.max_tokens].half().float()  # (L, C), L = min(n, max_tokens)
        return TextEmbedding(tokens=tokens, num_tokens_before_cap=input_ids.shape[1])


def _valid_text(prompt: str) -> str:
    """Lone surrogates (JSON can carry them) as '?', instead of making the tokenizer raise."""
    return prompt.encode("utf-8", errors="replace").decode("utf-8")


def encoder_only(config: T5GemmaConfig) -> T5GemmaConfig:
    """Make a T5Gemma config load as `T5GemmaEncoderModel` and compute what the reference computed."""
    config.is_encoder_decoder = False  # the encoder-only class refuses an encoder-decoder config
    config.encoder.attn_logit_softcapping = None  # the reference's SDPA path never applied it
    return config


# --- 2. Loading the official checkpoint ------------------------------------------------------------------


def load_text_encoder(
    folder: str | Path,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    *,
    hidden_size: int | None = None,
) -> TextEncoder:
    """The encoder of a local `google/t5gemma-9b-9b-ul2`; `CheckpointError` when it is missing or does not fit."""
    folder = Path(folder)
    get_it = f"download the whole {T5GEMMA_REPO.repo_id} repository (gated: request access on its page) into it"
    if not folder.is_dir():
        raise CheckpointError(f"text encoder folder {folder} does not exist: {get_it}")
    for alternatives in COMPONENTS["text-encoder"].required:
        if not any((folder / name).exists() for name in alternatives):
            raise CheckpointError(f"{folder / alternatives[0]} is missing: {get_it}")
    try:
        config = encoder_only(T5GemmaConfig.from_pretrained(folder))
    except Exception as exc:  # transformers raises several types for an unreadable or foreign config
        raise CheckpointError(f"{folder / 'config.json'} is not a T5Gemma config: {exc}") from exc
    if hidden_size is not None and config.encoder.hidden_size != hidden_size:
        raise CheckpointError(
            f"{folder / 'config.json'}: encoder hidden size {config.encoder.hidden_size}, the DiT expects {hidden_size}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with _quiet_transformers():  # the decoder keys would be listed as "unexpected": expected here
            model, info = T5GemmaEncoderModel.from_pretrained(
                folder,
                config=config,
                dtype=dtype,
                attn_implementation="eager",  # pinned: the math that matches the reference
                ignore_mismatched_sizes=True,  # so that a mismatch is reported below, by key
                output_loading_info=True,
            )
    except Exception as exc:  # tokenizers, safetensors and transformers each raise their own types
        raise CheckpointError(f"cannot load the text encoder from {folder}: {exc}") from exc
    wrong = [key for key, *_ in info["mismatched_keys"]]  # (key, file shape, model shape)
    check_keys(str(folder), "text encoder", info["missing_keys"], wrongly_shaped=wrong)
    return TextEncoder(tokenizer, model.to(device))


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- 3. The negative prompt (the unconditional text of the 32-step base model's CFG) ---------------------

_VISUAL_DEFECTS = (
    "blurry face", "out-of-focus eyes", "warped facial features", "asymmetric eyes", "melted teeth",
    "extra teeth", "deformed mouth", "lips out of sync", "frozen face", "stiff expression", "unnatural blinking",
    "dead eyes", "identity drift", "face changing shape", "flicker", "temporal jitter", "deformed hands",
    "extra fingers", "fused fingers", "duplicated limbs", "sudden head jumps", "exaggerated head motion",
    "camera shake", "jump cut", "scene change", "overexposed highlights", "crushed shadows", "washed-out colors",
    "oversaturated skin", "waxy plastic skin", "compression artifacts", "color banding", "grainy noise",
    "watermark", "subtitles", "text overlay", "logo", "cartoon style", "low resolution", "pixelated",
)  # fmt: skip
_AUDIO_DEFECTS = (
    "muffled audio", "distorted audio", "clipping", "crackling", "hiss", "electrical hum", "static noise",
    "heavy echo", "tinny sound", "metallic timbre", "phasing", "audio dropouts", "glitches", "background chatter",
    "music drowning the voice", "volume jumps", "abrupt silence", "sound out of sync with the lips",
    "low bitrate audio",
)  # fmt: skip
_DELIVERY_DEFECTS = (
    "monotone voice", "lifeless delivery", "mumbling", "slurred words", "garbled speech", "mispronounced words",
    "wrong language", "wrong accent", "unnatural pauses", "rushed speech", "stuttering", "repeated words",
    "skipped words", "sing-song intonation", "overacted emotion", "emotion that contradicts the words",
    "whispering", "shouting", "voice changing mid-sentence", "voice that does not fit the speaker",
    "robotic cadence", "pitch-shifted voice",
)  # fmt: skip

NEGATIVE_PROMPT = ", ".join(_VISUAL_DEFECTS + _AUDIO_DEFECTS + _DELIVERY_DEFECTS)
