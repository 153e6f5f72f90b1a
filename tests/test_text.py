"""Text encoder: tiny T5Gemma on CPU, the 640-token cap, the cache, and loading a saved checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import T5GemmaForConditionalGeneration

from magihuman.config import TEXT_ENCODER, TINY_DIT
from magihuman.errors import CheckpointError
from magihuman.random_models import build_tiny_text_encoder, tiny_t5gemma_config
from magihuman.text import NEGATIVE_PROMPT, TextEncoder, load_text_encoder

PROMPT = 'A woman in a red scarf says "Hello there." Dialogue: <Woman, English>: "Hello there."'


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    return build_tiny_text_encoder(seed=0)


def _count_forwards(encoder: TextEncoder) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    encoder.model.register_forward_hook(hook)
    return calls


def test_shape_dtype_and_fp16_round_trip(tiny):
    embedding = tiny.encode(PROMPT)
    n = tiny.count_tokens(PROMPT)
    assert embedding.tokens.shape == (n, TINY_DIT.text_in_channels)
    assert embedding.tokens.dtype == torch.float32
    assert embedding.num_tokens_before_cap == n and not embedding.was_capped
    assert torch.equal(embedding.tokens, embedding.tokens.half().float())  # values passed through fp16
    assert tiny.tokenizer(PROMPT)["input_ids"][0] == tiny.tokenizer.bos_token_id  # <bos> prepended


def test_cap_at_640_keeps_the_first_rows_of_the_full_sequence(tiny):
    prompt = "word " * 200  # 1001 byte tokens + <bos>
    embedding = tiny.encode(prompt)
    assert embedding.tokens.shape == (TEXT_ENCODER.max_tokens, TINY_DIT.text_in_channels)
    assert embedding.num_tokens_before_cap == 1001 and embedding.was_capped
    # The whole prompt goes through the encoder; rows are dropped afterwards (bidirectional attention
    # makes the first rows depend on the dropped ones).
    ids = tiny.tokenizer([prompt], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = tiny.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    assert torch.equal(embedding.tokens, full.half().float()[: TEXT_ENCODER.max_tokens])


def test_cache_returns_the_same_tensor_without_running_the_model():
    encoder = build_tiny_text_encoder(seed=0)
    encoder.cache_size = 2
    calls = _count_forwards(encoder)
    first = encoder.encode(NEGATIVE_PROMPT)
    assert encoder.encode(NEGATIVE_PROMPT) is first and calls[0] == 1
    encoder.encode("b")
    encoder.encode(NEGATIVE_PROMPT)  # refreshes the negative prompt, so "b" is the oldest
    encoder.encode("c")
    assert calls[0] == 3
    assert encoder.encode(NEGATIVE_PROMPT) is first and calls[0] == 3
    encoder.encode("b")  # was evicted
    assert calls[0] == 4


def test_count_tokens_uses_the_tokenizer_only():
    encoder = build_tiny_text_encoder(seed=0)
    calls = _count_forwards(encoder)
    assert encoder.count_tokens("abc") == 4
    assert encoder.count_tokens("你") == 4  # three UTF-8 bytes + <bos>
    assert calls[0] == 0


def test_tiny_encoder_is_deterministic_per_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_text_encoder(seed=5).encode(PROMPT).tokens
    assert torch.equal(torch.rand(3), expected)
    b = build_tiny_text_encoder(seed=5).encode(PROMPT).tokens
    c = build_tiny_text_encoder(seed=6).encode(PROMPT).tokens
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    "prompt",
    [
        "你 好 ， 世 界",
        "こ ん に ち は 안 녕 하 세 요",
        "👩🏽‍💻 🙂🙃 🇩🇪",
        "مرحبا بالعالم שלום עולם",
        "tab\tnul\x00bell\x07\r\nend\u200b\u202e",
        "e\u0301 \ufeff \uffff",
        "lone surrogate \ud800",
        "",
    ],
)
def test_any_unicode_prompt_encodes(tiny, prompt):
    embedding = tiny.encode(prompt)
    assert embedding.num_tokens_before_cap == tiny.count_tokens(prompt) >= 1
    assert embedding.tokens.shape == (embedding.num_tokens_before_cap, TINY_DIT.text_in_channels)
    assert torch.isfinite(embedding.tokens).all()


def test_negative_prompt_is_three_lists_of_defects():
    items = NEGATIVE_PROMPT.split(", ")
    assert len(items) > 60 and len(set(items)) == len(items)
    assert "blurry face" in items and "muffled audio" in items and "monotone voice" in items


# --- loading a saved checkpoint ----------------------------------------------------------------------------


def _save_like_the_hub(tiny: TextEncoder, folder) -> None:
    """The official layout: an encoder-decoder model (keys `model.encoder.*`, `model.decoder.*`) with an
    attention softcap in its config (50 in the real one; 0.5 here so that a loader that keeps it gives
    clearly different embeddings), plus the tokenizer files."""
    config = tiny_t5gemma_config(TINY_DIT.text_in_channels)
    config.is_encoder_decoder = True
    config.encoder.attn_logit_softcapping = 0.5
    full = T5GemmaForConditionalGeneration(config)
    full.model.encoder.load_state_dict(tiny.model.encoder.state_dict())
    full.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)


def test_load_saved_encoder_decoder_checkpoint(tiny, tmp_path):
    _save_like_the_hub(tiny, tmp_path)
    keys = load_file(tmp_path / "model.safetensors")
    assert any(k.startswith("model.decoder.") for k in keys)
    loaded = load_text_encoder(tmp_path, "cpu", dtype=torch.float32, hidden_size=TINY_DIT.text_in_channels)
    assert loaded.model.config.encoder.attn_logit_softcapping is None  # the reference-matching fix
    assert loaded.model.config._attn_implementation == "eager"
    assert not hasattr(loaded.model, "decoder") and loaded.hidden_size == TINY_DIT.text_in_channels
    for prompt in (PROMPT, "你 好", "word " * 200):
        assert loaded.count_tokens(prompt) == tiny.count_tokens(prompt)
        assert torch.equal(loaded.encode(prompt).tokens, tiny.encode(prompt).tokens)
    bf16 = load_text_encoder(tmp_path, "cpu")
    assert bf16.dtype == torch.bfloat16
    assert torch.allclose(bf16.encode(PROMPT).tokens, tiny.encode(PROMPT).tokens, atol=0.1)


def test_load_failures_name_the_path(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*google/t5gemma-9b-9b-ul2"):
        load_text_encoder(tmp_path / "nowhere", "cpu")
    _save_like_the_hub(tiny, tmp_path)
    with pytest.raises(CheckpointError, match="hidden size 64, the DiT expects 3584"):
        load_text_encoder(tmp_path, "cpu", hidden_size=3584)
    config = tmp_path / "config.json"
    values = json.loads(config.read_text())
    config.write_text(json.dumps({**values, "encoder": {**values["encoder"], "intermediate_size": 96}}))
    with pytest.raises(CheckpointError, match=r"wrongly shaped 6 key\(s\): encoder.layers.0.mlp.down_proj"):
        load_text_encoder(tmp_path, "cpu")
    config.write_text(json.dumps(values))
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    del state["model.encoder.layers.1.mlp.down_proj.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): encoder.layers.1.mlp.down_proj.weight"):
        load_text_encoder(tmp_path, "cpu")
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot load the text encoder"):
        load_text_encoder(tmp_path, "cpu")
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        load_text_encoder(tmp_path, "cpu")
