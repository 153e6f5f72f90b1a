"""Long takes end to end (CPU): lengths, pinned prefixes, the recording's audio, scenes, determinism, refusals.

Most tests run on a *stub* engine: the tiny engine's text encoder and audio decoder, with stand-ins for the
networks that cost seconds per window on a CPU: the DiT (a fixed mix of its inputs, recording what it saw),
the decoder (latent channels 0-2 upsampled to pixels, 4 frames per latent after the first), the image encoder
(pixels pooled to the latent grid) and the audio encoder (a projection of each frame's samples plus sampled
noise). The window logic under test (planning, prefixes, audio slices, trimming, writing) is the engine's
own. The bit-for-bit equality with a single clip runs the real tiny engine.
"""

from __future__ import annotations

import argparse
import json

import av
import numpy as np
import pytest
import torch

from magihuman.__main__ import _generate_arguments, request_from_args
from magihuman.config import AUDIO, RESOLUTIONS
from magihuman.engine import GenerationRequest
from magihuman.errors import InputError
from magihuman.long_take import LONG_TAKE_AUDIO, TakeSettings, encode_recording, plan_table, prepare
from magihuman.media import load_audio, read_video_frames
from tests.files import portrait, tone, wav, write_audio
from tests.long_take_stub import PixelDecoder, ProjectingAudioVAE, Stub, make_stub
from tests.probe import probe_media


@pytest.fixture()
def stub(tiny_engine, tmp_path) -> Stub:
    return make_stub(tiny_engine, tmp_path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long-inputs")
    return {
        "portrait": portrait(folder / "face.png"),
        "one_second": wav(folder / "one.wav", seconds=1, rate=AUDIO.virtual_sample_rate),
        "long": write_audio(folder / "long.wav", tone(37.3, 44_100, frequency=220.0), 44_100, "pcm_s16le"),
    }


def _frames(path) -> np.ndarray:
    return read_video_frames(path)


def _sound(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def _windows_of_calls(stub: Stub, plan, steps: int = 8) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    assert len(stub.dit.calls) == steps * len(plan.windows)
    return [stub.dit.calls[i * steps : (i + 1) * steps] for i in range(len(plan.windows))]


def test_one_window_plan_equals_a_single_clip_bit_for_bit(tiny_engine, files) -> None:
    """A one-shot scene of one window runs the long-take code; a plain request runs the single-clip path."""
    common = dict(prompt="A woman says hello.", portrait=files["portrait"], audio=files["one_second"], seed=5)
    single = tiny_engine.generate(GenerationRequest(**common))
    scene = tiny_engine.generate(GenerationRequest(**common, shots=json.dumps([{"seconds": 1}])))
    assert single.take.plan is None and len(scene.take.plan.windows) == 1
    assert np.array_equal(_frames(single.video_path), _frames(scene.video_path))
    assert np.array_equal(single.take.output_audio, scene.take.output_audio)
    assert torch.equal(single.take.video, scene.take.video)


def test_pinned_prefix_is_the_carried_latents_at_every_step(stub, files) -> None:
    """K = 2: slot 0 = the previous window's seam frame (decoded, float, colour left as is) re-encoded, slot 1 =
    its last latent;
    the generated audio's first F rows = the previous window's last F rows; at every DiT call and at the end."""
    stub.engine.take_settings = TakeSettings(window_frames=13, overlap_latents=2, colour_strength=0.0)
    request = GenerationRequest(prompt="A man talks.", portrait=files["portrait"], shots='[{"seconds": 2}]', seed=1)
    take = stub.engine.generate(request).take
    plan = take.plan
    assert len(plan.windows) > 3 and plan.frames == 50
    calls = _windows_of_calls(stub, plan)
    image = stub.engine._encode_image(take.portrait, (256, 448))
    assert all(torch.equal(video[:, :, :1], image) for video, _ in calls[0])
    for w in plan.windows[1:]:
        before = take.windows[w.index - 1]
        seam_frames = [p for _, _, p in PixelDecoder().decode_windows(before.video)]
        seam = torch.cat(seam_frames, dim=2)[:, :, w.start - plan.windows[w.index - 1].start][:, :, None]
        expected = torch.cat([stub.engine.models.video_vae.encode_image(seam).float(), before.video[:, :, -1:]], dim=2)
        for video, audio in calls[w.index]:
            assert torch.equal(video[:, :, :2], expected)
            assert torch.equal(audio[:, : w.overlap], before.audio[:, -w.overlap :])
        assert torch.equal(take.windows[w.index].video[:, :, :2], expected)
        assert torch.equal(take.windows[w.index].audio[:, : w.overlap], before.audio[:, -w.overlap :])


def test_a_37_3_s_recording_gives_a_take_of_exactly_its_length(stub, files) -> None:
    """Seconds empty: the recording's length. Each window holds its exact slice of one encoding of the whole
    recording; the mp4 carries the recording itself."""
    result = stub.engine.generate(GenerationRequest(prompt="A man lectures.", audio=files["long"], seed=2))
    plan = result.take.plan
    assert plan.frames == int(37.3 * 25) == 932 and len(plan.windows) == 10
    info = probe_media(result.video_path)
    assert info.video.frames == 932 and info.audio.seconds == pytest.approx(932 / 25, abs=0.03)
    assert json.loads((result.take.folder / "plan.json").read_text())["frames"] == 932
    # the audio rows every window heard are its slice of one encoding of the whole recording (silence-padded
    # over the last window's surplus)
    wave = load_audio(files["long"], limits=LONG_TAKE_AUDIO)
    padded = np.zeros(plan.generated_frames * AUDIO.samples_per_latent, np.float32)
    padded[: len(wave)] = wave[: len(padded)]
    whole = encode_recording(stub.engine.models.audio_vae, padded, torch.Generator().manual_seed(2))
    calls = _windows_of_calls(stub, plan)
    for w, window_calls in zip(plan.windows, calls, strict=True):
        for _, audio in window_calls:
            assert torch.equal(audio, whole[:, w.start : w.start + w.frames])
    # the output's sound is the recording (decoded PCM against the source tone, within AAC's error)
    sound = _sound(result.video_path)[0]
    t = np.arange(len(sound)) / 44_100
    reference = 0.3 * np.sin(2 * np.pi * 220.0 * t)
    middle = slice(44_100, len(sound) - 44_100)
    assert np.sqrt(np.mean((sound[middle] - reference[middle]) ** 2)) < 0.01


def test_joins_fall_in_the_recording_s_pauses(tiny_engine, tmp_path) -> None:
    planar = tone(11, 44_100)  # balanced joins at frames 93 and 185
    planar[:, int(3.92 * 44_100) : int(4.24 * 44_100)] = 0  # a pause over frames 98-106
    speech = write_audio(tmp_path / "pause.wav", planar, 44_100, "pcm_s16le")
    long_take = prepare(tiny_engine.validate(GenerationRequest(prompt="x", audio=speech, seed=0)), TakeSettings())
    assert [w.first_new for w in long_take.plan.windows[1:]] == [101, 185]


def test_a_recording_over_29_s_is_encoded_in_cross_faded_chunks_that_agree_with_one_pass() -> None:
    """A frame-local encoder gives the same latent in chunks as in one pass: the cross-fade weights sum to 1."""
    vae = ProjectingAudioVAE(None)
    wave = np.random.default_rng(0).standard_normal(70 * 25 * AUDIO.samples_per_latent).astype(np.float32)
    chunked = encode_recording(vae, wave, None)
    one_pass = torch.from_numpy(wave).view(1, -1, AUDIO.samples_per_latent) @ vae.projection
    assert chunked.shape == (1, 1750, AUDIO.latent_channels)
    assert torch.allclose(chunked, one_pass, atol=1e-4)


def test_a_3_shot_scene_lasts_the_sum_of_its_shots_and_each_shot_starts_from_the_portrait(stub, files) -> None:
    stub.engine.take_settings = TakeSettings(window_frames=25)
    shots = [{"prompt": "A man waves.", "seconds": 1}, {"seconds": 1.5}, {"prompt": "He sits.", "seconds": 2}]
    request = GenerationRequest(prompt="A man.", portrait=files["portrait"], shots=json.dumps(shots), seed=3)
    result = stub.engine.generate(request)
    plan = result.take.plan
    assert plan.frames == 25 + 38 + 50
    info = probe_media(result.video_path)
    assert info.video.frames == 113 and info.audio.seconds == pytest.approx(113 / 25, abs=0.03)
    image = stub.engine._encode_image(result.take.portrait, (256, 448))
    calls = _windows_of_calls(stub, plan)
    starts = [w for w in plan.windows if w.overlap == 0]
    assert [w.shot for w in starts] == [0, 1, 2]
    assert all(torch.equal(calls[w.index][0][0][:, :, :1], image) for w in starts)
    # the carried frames' colour distance from the portrait is logged per continuing window (none at a cut)
    drift = json.loads((result.take.folder / "plan.json").read_text())["colour_distance"]
    assert [d is None for d in drift] == [w.overlap == 0 for w in plan.windows]
    assert all(d > 0 for d in drift if d is not None)
    assert plan_table(result.take).splitlines()[0] == f"long take: 113 frames (4.52 s) in {len(plan.windows)} windows"
    assert [k.prompt for k in result.take.windows] == [(shots[w.shot].get("prompt") or "A man.") for w in plan.windows]


def test_a_reset_window_is_pinned_to_the_portrait_and_the_take_keeps_its_length(stub, files) -> None:
    """TakeSettings.reset_every = 2: windows 2, 4, ... start from the portrait again (a cut within the shot), the
    others from the carried frame; the frame count is the plan's, in base and SR."""
    stub.engine.take_settings = TakeSettings(window_frames=13, reset_every=2)
    request = GenerationRequest(
        prompt="A man talks.", portrait=files["portrait"], shots='[{"seconds": 2}]', resolution="540p", seed=6
    )
    result = stub.engine.generate(request)
    plan = result.take.plan
    assert [w.reset for w in plan.windows] == [i > 0 and i % 2 == 0 for i in range(len(plan.windows))]
    count, sr_steps = len(plan.windows), request.sr_steps
    base, sr = stub.dit.calls[: 8 * count], stub.dit.calls[8 * count :]
    assert len(sr) == sr_steps * count
    for calls, steps, size in ((base, 8, (256, 448)), (sr, sr_steps, RESOLUTIONS["540p"].pixel_size(False))):
        image = stub.engine._encode_image(result.take.portrait, size)
        for w in plan.windows:
            pinned = [
                torch.equal(video[:, :, :1], image) for video, _ in calls[w.index * steps : (w.index + 1) * steps]
            ]
            assert all(pinned) == (w.index == 0 or w.reset) and any(pinned) == all(pinned), (size, w)
    drift = json.loads((result.take.folder / "plan.json").read_text())["colour_distance"]
    assert [d is None for d in drift] == [w.overlap == 0 or w.reset for w in plan.windows]
    assert probe_media(result.video_path).video.frames == plan.frames == 50
    assert probe_media(result.sr_video_path).video.frames == 50


def test_same_seed_same_take_and_progress_per_window(stub) -> None:
    stub.engine.take_settings = TakeSettings(window_frames=13)
    phases = []
    request = GenerationRequest(prompt="A man talks.", shots='[{"seconds": 1}]', seed=9)
    first = stub.engine.generate(request, on_progress=lambda phase, step, total: phases.append((phase, step, total)))
    again = stub.engine.generate(request)
    other = stub.engine.generate(GenerationRequest(prompt="A man talks.", shots='[{"seconds": 1}]', seed=10))
    assert np.array_equal(_frames(first.video_path), _frames(again.video_path))
    assert np.array_equal(_sound(first.video_path), _sound(again.video_path))
    assert not np.array_equal(_frames(first.video_path), _frames(other.video_path))
    count = len(first.take.plan.windows)
    assert (f"window 2/{count} base", 5, 8) in phases and f"window {count}/{count} decode" in {p for p, _, _ in phases}


def test_upscaling_a_long_take_later_equals_sr_while_generating(stub, files) -> None:
    stub.engine.take_settings = TakeSettings(window_frames=13)
    common = dict(prompt="A man talks.", portrait=files["portrait"], shots='[{"seconds": 1}]', seed=4)
    fresh = stub.engine.generate(GenerationRequest(**common, resolution="540p"))
    later = stub.engine.upscale(stub.engine.generate(GenerationRequest(**common)).take, "540p")
    assert len(fresh.take.plan.windows) == 2
    info = probe_media(later.sr_video_path)
    assert (info.video.width, info.video.height, info.video.frames) == (896, 512, 25)
    assert np.array_equal(_frames(fresh.sr_video_path), _frames(later.sr_video_path))
    assert np.array_equal(_frames(fresh.video_path), _frames(later.video_path))


def test_long_take_refusals(stub, files, tmp_path) -> None:
    too_long = wav(tmp_path / "lecture.wav", seconds=121.5, rate=8000)
    with pytest.raises(InputError, match=r"lasts 2 min 2 s; a take follows at most 120 s"):
        stub.engine.generate(GenerationRequest(prompt="x", audio=too_long))
    with pytest.raises(InputError, match="the shots last 40 s but the recording only 37.28 s"):
        stub.engine.generate(GenerationRequest(prompt="x", audio=files["long"], shots='[{"seconds": 40}]'))
    with pytest.raises(InputError, match="either a duration or shots"):
        stub.engine.generate(GenerationRequest(prompt="x", seconds=20, shots='[{"seconds": 4}]'))
    with pytest.raises(InputError, match="duration must be a whole number from 1 to 120"):
        stub.engine.generate(GenerationRequest(prompt="x", seconds=121))
    with pytest.raises(InputError, match="non-empty JSON list"):
        stub.engine.generate(GenerationRequest(prompt="x", shots="[]"))
    assert stub.dit.calls == []


def test_the_cli_reads_shots_from_a_file_or_inline(tmp_path) -> None:
    scene = tmp_path / "scene.json"
    scene.write_text('[{"prompt": "A man waves.", "seconds": 3}]')
    parser = argparse.ArgumentParser()
    _generate_arguments(parser)
    for given in (str(scene), f"@{scene}", scene.read_text()):
        args = parser.parse_args(["--prompt", "p", "--shots", given, "--out", "x.mp4"])
        assert request_from_args(args).shots == scene.read_text()
    assert request_from_args(parser.parse_args(["--prompt", "p", "--out", "x.mp4"])).seconds is None
