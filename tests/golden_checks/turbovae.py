"""Turbo VAE decoder fixtures (`turbovae_*`): de-normalisation, window schedule, single calls, uint8."""

from __future__ import annotations

import torch

from magihuman.config import TurboVAEConfig
from magihuman.loading import turbo_vae_from_state_dict
from magihuman.model.turbo_vae import LATENT_MEAN, LATENT_STD, denormalize, to_uint8, window_schedule
from tests.golden_checks import Fixture, Report

STAGE_PREFIX = "call.inter_first."


def check(fx: Fixture) -> None:
    report = Report(fx)
    config = TurboVAEConfig.from_dict(fx.config)
    model = turbo_vae_from_state_dict(config, fx.weights(), fx.path.name, dtype=torch.float32)
    atol = fx.recommended["fp32_atol"]

    # De-normalisation: the module's constants and the fp32 formula are exact.
    report.equal("LATENT_MEAN", torch.tensor(LATENT_MEAN, dtype=torch.float32), fx["denorm.mean"])
    report.equal("LATENT_STD", torch.tensor(LATENT_STD, dtype=torch.float32), fx["denorm.std"])
    report.equal("inter.latent_denorm", denormalize(fx["in.latent"]), fx["inter.latent_denorm"])

    # The window schedule, then the whole decode call.
    num_latents = fx["in.latent"].shape[2]
    pad, windows = window_schedule(num_latents, config)
    if "windows" in fx.config:
        ours = torch.tensor([[w.stop - w.start, w.is_first_chunk] for w in windows])
        theirs = torch.tensor([[w["latent_frames"], w["is_first_chunk"]] for w in fx.config["windows"]])
        report.equal("windows (latent frames, first flag)", ours, theirs)
    if "padding_frames" in fx.config:
        report.equal("padding latent frames", torch.tensor(pad), torch.tensor(fx.config["padding_frames"]))
    video = model.decode(fx["in.latent"])
    frames = config.temporal_compression_ratio * (num_latents - 1) + 1
    report.equal("output frames", torch.tensor(video.shape[2]), torch.tensor(frames))
    report.close("out.video", video, fx["out.video"], atol)
    report.equal("out.uint8 (from stored out.video)", to_uint8(fx["out.video"]), fx["out.uint8"])

    # Single decoder calls with and without the first-window flag, and the stages of the first.
    stages: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        report.close("call.out_first", model.decoder(fx["call.latent"], True, stages), fx["call.out_first"], atol)
        if "call.out_next" in fx:
            report.close("call.out_next", model.decoder(fx["call.latent"], False), fx["call.out_next"], atol)
    for key in sorted(k for k in fx.tensors if k.startswith(STAGE_PREFIX)):
        stage = key[len(STAGE_PREFIX) :]
        assert stage in stages, f"{fx.path.name}: the decoder has no stage {stage!r} (has {sorted(stages)})"
        report.close(key, stages[stage], fx[key], atol)
    report.finish()
