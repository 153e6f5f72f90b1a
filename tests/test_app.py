"""The studio launched in-process with the tiny engine, driven through gradio_client like an API user."""

from __future__ import annotations

import time

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app as studio_app
from magihuman.build import load_engine
from magihuman.config import RESOLUTIONS, decoded_frames, latent_frames
from magihuman.media import probe_media
from studio.runtime import EngineSlot
from tests.browser import free_port
from tests.files import portrait, wav

UPLOAD_LIMIT = 2 * 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = load_engine("tiny", output_root=tmp_path_factory.mktemp("outputs"))
    demo = studio_app.build_demo(EngineSlot.ready(engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        max_file_size=UPLOAD_LIMIT,
        show_error=True,
        quiet=True,
    )
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False, download_files=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    return {"image": portrait(folder / "face.png"), "audio": wav(folder / "speech.wav", seconds=2)}


def _generate(
    client,
    prompt="A woman says hello.",
    image=None,
    audio=None,
    resolution="256p",
    seconds=1,
    seed=7,
    randomize=False,
    base_model="distill",
    steps=8,
):
    return client.predict(
        handle_file(image) if image else None,
        prompt,
        handle_file(audio) if audio else None,
        resolution,
        "landscape",
        seconds,
        base_model,
        steps,
        5,
        5.0,
        seed,
        randomize,
        api_name="/generate",
    )


def _paths(downloads) -> list[str]:
    return [d["path"] if isinstance(d, dict) else d for d in downloads]


def _check(path: str, resolution: str) -> None:
    info = probe_media(path)
    height, width = RESOLUTIONS[resolution].pixel_size()
    assert (info.video.codec, info.video.width, info.video.height) == ("h264", width, height)
    assert info.video.frames == decoded_frames(latent_frames(1)) and info.audio.codec == "aac"


@pytest.mark.parametrize("resolution", ["256p", "540p", "1080p"])
@pytest.mark.parametrize("mode", ["T2V", "TI2V", "TIA2V"])
def test_generate_every_mode_and_tier(client, files, mode, resolution) -> None:
    image = files["image"] if "I" in mode else None
    audio = files["audio"] if "A" in mode else None
    player, downloads, seed, timings, take_id = _generate(client, image=image, audio=audio, resolution=resolution)
    paths = _paths(downloads)
    assert seed == 7 and take_id and "total" in timings
    _check(paths[0], "256p")
    if resolution != "256p":
        assert len(paths) == 2
        _check(paths[1], resolution)


def test_random_seed_is_reported(client) -> None:
    _, _, seed, _, _ = _generate(client, randomize=True, seed=None)
    assert isinstance(seed, int | float) and 0 <= seed < 2**32


def test_upscale_an_earlier_result(client) -> None:
    _, downloads, seed, _, take_id = _generate(client, seed=21)
    player, up_downloads, up_seed, _, same_id = client.predict(take_id, "540p", api_name="/upscale")
    assert up_seed == seed == 21 and same_id == take_id
    assert _paths(up_downloads)[0].endswith("base_256p.mp4")
    _check(_paths(up_downloads)[1], "540p")
    with pytest.raises(AppError, match="No take to upscale"):
        client.predict("not-a-take", "540p", api_name="/upscale")


def test_stop_cancels_a_running_job_and_the_next_one_runs(server, files) -> None:
    client = Client(server[1], verbose=False, download_files=False)
    job = client.submit(
        None, "A long take.", None, "256p", "landscape", 10, "base", 64, 5, 5.0, 1, False, api_name="/generate"
    )
    deadline = time.monotonic() + 60
    while not (job.status().progress_data or job.done()) and time.monotonic() < deadline:
        time.sleep(0.2)
    started = time.monotonic()
    client.predict(api_name="/stop")
    with pytest.raises(Exception):  # noqa: B017  (cancelled job: AppError "Stopped" or a cancellation)
        job.result(timeout=60)
    assert time.monotonic() - started < 30  # one step of the tiny model, not the remaining 60
    _, downloads, _, _, _ = _generate(client, seed=2)
    _check(_paths(downloads)[0], "256p")


def test_bad_inputs_give_clear_errors_and_the_app_keeps_serving(client, files, tmp_path) -> None:
    text_png = tmp_path / "notes.png"
    text_png.write_text("this is a text file with a .png name")
    broken_audio = tmp_path / "broken.wav"
    broken_audio.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(100))
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG" + bytes(UPLOAD_LIMIT + 1024))

    with pytest.raises(AppError, match="(?i)image|picture|portrait"):
        _generate(client, image=text_png)
    with pytest.raises(Exception, match="(?i)size|large|exceed"):
        _generate(client, image=big)
    with pytest.raises(AppError, match="prompt is empty"):
        _generate(client, prompt="")
    with pytest.raises(AppError, match="20000 characters"):
        _generate(client, prompt="x" * 20_000)
    with pytest.raises(AppError, match="broken.wav|audio"):
        _generate(client, audio=broken_audio)
    _, downloads, _, _, _ = _generate(client, seed=3)
    _check(_paths(downloads)[0], "256p")


def test_helper_events_are_not_in_the_api(client) -> None:
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/generate", "/upscale", "/stop"} <= endpoints
    assert not any("lambda" in name or "refresh" in name for name in endpoints)


def test_prompt_warning_counts_tokens_with_the_loaded_encoder(server) -> None:
    studio = server[0].studio
    assert studio.prompt_warning("A short prompt.") == ""
    long_prompt = "word " * 200  # the tiny byte-level tokenizer: ~1000 tokens, over the cap, under 4000 characters
    assert "640" in studio.prompt_warning(long_prompt)
    assert "characters" in studio.prompt_warning("x" * 20_000)
