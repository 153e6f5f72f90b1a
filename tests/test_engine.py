"""The whole pipeline on the tiny preview engine (CPU): every mode and tier, upscaling a take, cancel, bad input.

Clips are 1 second long to keep the 1080p run affordable on a CPU; the frame and sample counts are the
spec's for that duration.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from magihuman.config import RESOLUTIONS, decoded_frames, latent_frames, video_frames
from magihuman.engine import GenerationRequest
from magihuman.errors import GenerationCancelled, InputError
from magihuman.media import read_video_frames
from magihuman.threads import worker_thread
from tests.files import portrait, wav
from tests.probe import probe_media

SECONDS = 1
MODES = ["T2V", "TI2V", "TA2V", "TIA2V"]


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return tiny_engine  # the session's engine (conftest): nothing here changes its state


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    return {"portrait": portrait(folder / "face.png"), "audio": wav(folder / "speech.wav", seconds=3)}


def _request(mode: str, inputs, **overrides) -> GenerationRequest:
    fields = dict(prompt="A woman says hello.", seconds=SECONDS, seed=11)
    if "I" in mode[1:]:
        fields["portrait"] = inputs["portrait"]
    if "A" in mode:
        fields["audio"] = inputs["audio"]
    return GenerationRequest(**{**fields, **overrides})


def _check_clip(path, resolution: str, portrait: bool = False, own_audio: bool = False) -> None:
    info = probe_media(path)
    height, width = RESOLUTIONS[resolution].pixel_size(portrait)
    assert info.video.codec == "h264" and info.video.pixel_format == "yuv420p"
    assert (info.video.width, info.video.height) == (width, height)
    assert info.video.fps == 25
    assert info.video.frames == decoded_frames(latent_frames(SECONDS))
    assert info.audio.codec == "aac" and info.audio.sample_rate == 44_100 and info.audio.channels == 2
    # audio latents · 2048 samples at the virtual 51.2 kHz: 25·s + 1 latents, or 25·s of the user's audio
    latents = 25 * SECONDS if own_audio else video_frames(SECONDS)
    assert info.audio.seconds == pytest.approx(latents / 25, abs=0.01)
    assert info.faststart


@pytest.fixture(scope="module")
def takes(engine, inputs):
    """One 256p result per mode (landscape, except TI2V in portrait)."""
    results = {}
    for mode in MODES:
        aspect = "portrait" if mode == "TI2V" else "landscape"
        results[mode] = engine.generate(_request(mode, inputs, aspect=aspect))
    return results


@pytest.mark.parametrize("mode", MODES)
def test_base_clip_for_every_mode(takes, mode) -> None:
    result = takes[mode]
    assert result.preview and result.seed == 11 and result.sr_video_path is None
    assert result.take.request.mode == mode
    _check_clip(result.video_path, "256p", portrait=mode == "TI2V", own_audio="A" in mode)
    assert {"text", "denoise", "decode", "mux"} <= set(result.timings)


# Every mode at 540p; 1080p (about 25 s a clip on a CPU) once, on the portrait take: the same SR code with
# another model, and the geometry most likely to go wrong.
UPSCALES = [(mode, "540p") for mode in MODES] + [("TI2V", "1080p")]


@pytest.mark.parametrize(("mode", "resolution"), UPSCALES)
def test_upscale_every_mode(engine, takes, mode, resolution) -> None:
    result = engine.upscale(takes[mode].take, resolution)
    assert result.video_path == takes[mode].video_path and result.seed == 11
    _check_clip(result.sr_video_path, resolution, portrait=mode == "TI2V", own_audio="A" in mode)
    assert "sr" in result.timings


def _decoded_frames(path) -> np.ndarray:
    return read_video_frames(path)


def test_upscaling_a_take_equals_a_fresh_run_with_the_same_seed(engine, takes, inputs) -> None:
    fresh = engine.generate(_request("TIA2V", inputs, resolution="540p"))
    later = engine.upscale(takes["TIA2V"].take, "540p")
    assert np.array_equal(_decoded_frames(fresh.video_path), _decoded_frames(takes["TIA2V"].video_path))
    assert np.array_equal(_decoded_frames(fresh.sr_video_path), _decoded_frames(later.sr_video_path))
    other_seed = engine.generate(_request("TIA2V", inputs, seed=12))
    assert not np.array_equal(_decoded_frames(other_seed.video_path), _decoded_frames(fresh.video_path))


def test_cancel_stops_within_one_step_and_the_engine_keeps_working(engine, inputs) -> None:
    cancel = threading.Event()
    seen = []

    def progress(phase: str, step: int, total: int) -> None:
        seen.append((phase, step))
        if phase == "base" and step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled) as info:
        engine.generate(_request("T2V", inputs), on_progress=progress, cancel=cancel)
    assert (info.value.stage, info.value.step) == ("base", 2)
    assert max(step for phase, step in seen if phase == "base") == 2
    assert engine.generate(_request("T2V", inputs, seed=3)).video_path.exists()


def test_cancel_while_decoding_stops_the_encoder_and_leaves_no_files(engine, inputs) -> None:
    """Encoding runs on a worker thread beside the decoder: a cancel between windows waits for the piece being
    encoded, then removes the take's folder, half-written mp4 included."""
    cancel = threading.Event()

    def progress(phase: str, step: int, total: int) -> None:
        if phase == "decode" and step == 1:
            cancel.set()

    before = set(engine.output_root.iterdir())
    with pytest.raises(GenerationCancelled) as info:
        engine.generate(_request("T2V", inputs, seconds=2), on_progress=progress, cancel=cancel)
    assert (info.value.stage, info.value.step) == ("decode", 1) and info.value.total > 1
    assert set(engine.output_root.iterdir()) == before
    # The encoder (one long-lived thread) holds nothing of the cancelled clip and takes the next job at once.
    assert worker_thread("mux").submit(lambda: "idle").result(timeout=30) == "idle"
    assert len([t for t in threading.enumerate() if t.name.startswith("mux")]) == 1


def test_base_model_with_guidance(engine, inputs) -> None:
    result = engine.generate(_request("T2V", inputs, base_model="base", steps=3, guidance=4.0))
    _check_clip(result.video_path, "256p")


def test_audio_sets_the_clip_length_when_shorter(engine, tmp_path) -> None:
    short = wav(tmp_path / "short.wav", seconds=0.5)
    result = engine.generate(GenerationRequest(prompt="hi", audio=short, seconds=2, seed=1))
    info = probe_media(result.video_path)
    latents = int(0.5 * 25)  # whole 40 ms latents of the upload
    assert info.video.frames == decoded_frames((latents - 1) // 4 + 1)
    assert info.audio.seconds == pytest.approx(latents / 25, abs=0.03)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 20_000}, "20000 characters"),
        ({"seconds": 0}, "duration"),
        ({"seconds": 121}, "duration"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**40}, "seed"),
        ({"steps": 0}, "steps"),
        ({"sr_steps": 99}, "super-resolution steps"),
        ({"guidance": 100.0}, "guidance"),
        ({"resolution": "4k"}, "resolution must be one of"),
        ({"aspect": "square"}, "aspect"),
    ],
)
def test_invalid_requests_are_refused_with_the_cause(engine, inputs, overrides, message) -> None:
    with pytest.raises(InputError, match=message):
        engine.generate(_request("T2V", inputs, **overrides))


def test_bad_portrait_and_audio_files(engine, inputs, tmp_path) -> None:
    fake_png = tmp_path / "notes.png"
    fake_png.write_text("not an image at all")
    with pytest.raises(InputError, match="notes.png"):
        engine.generate(_request("T2V", inputs, portrait=fake_png))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + bytes(range(200)))
    with pytest.raises(InputError, match="broken.wav"):
        engine.generate(_request("T2V", inputs, audio=broken))
