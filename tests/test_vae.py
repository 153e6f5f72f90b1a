"""Wan2.2 video VAE and Stable Audio Open VAE: tiny diffusers models on CPU, shapes, conventions, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, AutoencoderOobleck
from safetensors.torch import load_file, save_file

from magihuman.errors import CheckpointError
from magihuman.model.turbo_vae import LATENT_MEAN, LATENT_STD
from magihuman.random_models import build_tiny_audio_vae, build_tiny_video_vae
from magihuman.vae import SAO_VAE_CONFIG, WAN22_VAE_CONFIG, AudioVAE, VideoVAE, load_audio_vae, load_video_vae


@pytest.fixture(scope="module")
def video_vae() -> VideoVAE:
    return build_tiny_video_vae(seed=0)


@pytest.fixture(scope="module")
def audio_vae() -> AudioVAE:
    return build_tiny_audio_vae(seed=0)


def _image(h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 1, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _speech(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def test_full_configs_have_the_reference_parameter_counts():
    with torch.device("meta"):  # shapes only: the real models would take GBs and seconds
        video = AutoencoderKLWan(**WAN22_VAE_CONFIG)
        audio = AutoencoderOobleck(**SAO_VAE_CONFIG)
    assert sum(p.numel() for p in video.parameters()) == 704_688_668  # the Wan2.2 VAE checkpoint's parameter count
    assert sum(p.numel() for p in audio.parameters()) == 156_112_514
    assert WAN22_VAE_CONFIG["latents_mean"] == list(LATENT_MEAN)
    assert WAN22_VAE_CONFIG["latents_std"] == list(LATENT_STD)


# --- video -------------------------------------------------------------------------------------------------


def test_encode_image_shape_and_normalisation(video_vae):
    pixels = _image()
    latent = video_vae.encode_image(pixels)
    assert latent.shape == (1, 48, 1, 2, 3) and latent.dtype == torch.float32
    with torch.no_grad():
        mu = video_vae.model.encode(pixels).latent_dist.mode()
    mean = torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(latent, (mu - mean) / std)
    assert torch.equal(video_vae.encode_image(pixels), latent)  # deterministic: the mode, not a sample


@pytest.mark.parametrize("shape", [(1, 3, 1, 30, 48), (1, 3, 2, 32, 48), (3, 32, 48), (1, 4, 1, 32, 48)])
def test_encode_image_rejects_other_shapes(video_vae, shape):
    with pytest.raises(ValueError, match="one RGB frame"):
        video_vae.encode_image(torch.zeros(shape))


@pytest.mark.parametrize("frames", [1, 3])
def test_decode_gives_4t_minus_3_frames_in_range(video_vae, frames):
    latent = torch.randn(1, 48, frames, 2, 3, generator=torch.Generator().manual_seed(frames))
    pixels = video_vae.decode(latent)
    assert pixels.shape == (1, 3, 4 * (frames - 1) + 1, 32, 48) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1


def test_tiny_video_vae_is_deterministic_per_seed():
    a, b, c = (build_tiny_video_vae(seed).encode_image(_image(16, 16)) for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_video_vae_save_load_round_trip(video_vae, tmp_path):
    video_vae.model.save_pretrained(tmp_path / "vae")
    latent = torch.randn(1, 48, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    for folder in (tmp_path / "vae", tmp_path):  # the `vae/` folder itself or the repository folder
        loaded = load_video_vae(folder, "cpu", torch.float32)
        assert torch.equal(loaded.encode_image(_image(16, 16)), video_vae.encode_image(_image(16, 16)))
        assert torch.equal(loaded.decode(latent), video_vae.decode(latent))
    assert load_video_vae(tmp_path, "cpu").dtype == torch.bfloat16


def test_video_vae_load_failures(video_vae, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*Wan2.2-TI2V-5B-Diffusers"):
        load_video_vae(tmp_path / "nowhere", "cpu")
    video_vae.model.save_pretrained(tmp_path)
    weights, config = tmp_path / "diffusion_pytorch_model.safetensors", tmp_path / "config.json"

    state = load_file(weights)
    removed = sorted(state)[0]
    del state[removed]
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=rf"AutoencoderKLWan; missing 1 key\(s\): {removed}"):
        load_video_vae(tmp_path, "cpu")

    video_vae.model.save_pretrained(tmp_path)
    values = json.loads(config.read_text())
    config.write_text(json.dumps({**values, "base_dim": 12}))
    with pytest.raises(CheckpointError, match="AutoencoderKLWan; wrongly shaped"):
        load_video_vae(tmp_path, "cpu")

    weights.write_bytes(b"not a safetensors file")
    config.write_text(json.dumps(values))
    with pytest.raises(CheckpointError, match="cannot load AutoencoderKLWan"):
        load_video_vae(tmp_path, "cpu")

    weights.unlink()
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors is missing"):
        load_video_vae(tmp_path, "cpu")


# --- audio -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("samples, latents", [(4096, 2), (6143, 2), (6145, 3)])
def test_audio_encode_shape(audio_vae, samples, latents):
    latent = audio_vae.encode(_speech(samples), generator=torch.Generator().manual_seed(0))
    assert latent.shape == (1, latents, 64) and latent.dtype == torch.float32


def test_audio_encode_is_sampled_from_the_generator(audio_vae):
    wave = _speech(4096)
    a, b, c = (audio_vae.encode(wave, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # mean + std·ε on the mono signal duplicated to two channels, with ε drawn from the same seed
    stereo = torch.from_numpy(wave).expand(1, 2, -1)
    with torch.no_grad():
        posterior = audio_vae.model.encode(stereo).latent_dist
    assert not torch.allclose(a, posterior.mode().transpose(1, 2))
    torch.testing.assert_close(a, posterior.sample(torch.Generator().manual_seed(7)).transpose(1, 2))
    assert torch.equal(audio_vae.encode(torch.from_numpy(wave), generator=torch.Generator().manual_seed(7)), a)


def test_audio_encode_rejects_short_or_stereo_input(audio_vae):
    with pytest.raises(ValueError, match="mono audio"):
        audio_vae.encode(_speech(2047))
    with pytest.raises(ValueError, match="mono audio"):
        audio_vae.encode(np.zeros((4096, 2), np.float32))


def test_audio_decode_gives_f_times_2048_raw_samples(audio_vae):
    latent = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0)) * 3
    wave = audio_vae.decode(latent)
    assert wave.shape == (5 * 2048, 2) and wave.dtype == torch.float32 and wave.device.type == "cpu"
    with torch.no_grad():
        raw = audio_vae.model.decode(latent.transpose(1, 2)).sample[0].T
    assert torch.equal(wave, raw)  # no clamp, no tanh


def test_tiny_audio_vae_is_deterministic_per_seed():
    latent = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(0))
    a, b, c = (build_tiny_audio_vae(seed).decode(latent) for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_audio_vae_save_load_round_trip(audio_vae, tmp_path):
    audio_vae.model.save_pretrained(tmp_path / "vae")
    loaded = load_audio_vae(tmp_path, "cpu")
    assert loaded.model.dtype == torch.float32
    latent = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decode(latent), audio_vae.decode(latent))
    wave = _speech(4096)
    encoded = [vae.encode(wave, generator=torch.Generator().manual_seed(0)) for vae in (loaded, audio_vae)]
    assert torch.equal(*encoded)


def test_audio_vae_load_failures(audio_vae, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*stable-audio-open-1.0"):
        load_audio_vae(tmp_path / "nowhere", "cpu")
    audio_vae.model.save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "decoder_channels": 4}))
    with pytest.raises(CheckpointError, match="AutoencoderOobleck; wrongly shaped"):
        load_audio_vae(tmp_path, "cpu")
    config.unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_audio_vae(tmp_path, "cpu")
