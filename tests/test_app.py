"""The studio launched in-process with the tiny engine, driven through gradio_client like an API user, plus its
history, copy-as-code and MCP surfaces."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import shlex
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

import app as studio_app
from magihuman.__main__ import _generate_arguments, request_from_args
from magihuman.config import RESOLUTIONS, decoded_frames, latent_frames
from magihuman.engine import GenerationRequest
from magihuman.errors import GenerationCancelled, InputError
from magihuman.fields import FIELDS, readme_table
from studio.handlers import Studio, audio_hint, dialogue_to_prompt, prompt_to_dialogue, request_to_values
from studio.runtime import EngineSlot
from studio.snippets import cli_line, python_call
from tests.files import portrait, wav
from tests.probe import probe_media
from tests.studio import generate, launched, paths

UPLOAD_LIMIT = 2 * 2**20
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def server(tiny_engine):
    demo = studio_app.build_demo(EngineSlot.ready(tiny_engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    with launched(demo, max_file_size=UPLOAD_LIMIT, show_error=True) as url:
        yield demo, url


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False, download_files=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    return {"portrait": portrait(folder / "face.png"), "audio": wav(folder / "speech.wav", seconds=2)}


def _check(path: str, resolution: str, seconds: int = 1) -> None:
    info = probe_media(path)
    height, width = RESOLUTIONS[resolution].pixel_size()
    assert (info.video.codec, info.video.width, info.video.height) == ("h264", width, height)
    assert info.video.frames == decoded_frames(latent_frames(seconds)) and info.audio.codec == "aac"


# ---------------------------------------------------------------------------------------------------------
# 1. /generate and /upscale
# ---------------------------------------------------------------------------------------------------------


# Each mode through the API, without and with SR (1080p is the same path with another model: test_engine).
@pytest.mark.parametrize(("mode", "resolution"), [("T2V", "256p"), ("TI2V", "540p"), ("TIA2V", "540p")])
def test_generate_every_mode_with_and_without_sr(client, files, mode, resolution) -> None:
    extra = {name: files[name] for name, letter in (("portrait", "I"), ("audio", "A")) if letter in mode}
    player, downloads, seed, details, take_id = generate(client, resolution=resolution, seed=7, **extra)
    assert seed == 7 and take_id and "total" in details and mode in details
    _check(paths(downloads)[0], "256p")
    if resolution != "256p":
        assert len(paths(downloads)) == 2
        _check(paths(downloads)[1], resolution)
        assert player["right_label"] == f"Super-resolution {resolution}"  # the Result says which tier
    else:
        assert player["right"] is None


def test_a_prompt_alone_is_a_whole_request(client) -> None:
    """The README's first API example: every other field takes its declared default (5 s, 256p, random seed)."""
    _, downloads, seed, details, _ = client.predict(prompt="A man says good morning.", api_name="/generate")
    _check(paths(downloads)[0], "256p", seconds=5)
    assert isinstance(seed, int | float) and 0 <= seed < 2**32 and f"seed {seed:.0f}" in details


def test_a_sent_seed_is_the_seed_used_and_none_is_random(client) -> None:
    assert generate(client, prompt="Seeded.", seed=1011)[2] == 1011
    random_seeds = {generate(client, prompt="Random.", seed=None)[2] for _ in range(2)}
    assert len(random_seeds) == 2 and all(0 <= s < 2**32 for s in random_seeds)


def test_positional_calls_follow_the_field_order(client) -> None:
    positional = ["A woman says hi.", None, None, "256p", "landscape", 1, 5]  # prompt ... seconds, seed
    _, downloads, seed, _, _ = client.predict(*positional, api_name="/generate")
    assert seed == 5
    _check(paths(downloads)[0], "256p")


def test_the_api_names_every_field_and_only_the_prompt_is_required(client) -> None:
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    parameters = info["/generate"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == [f.name for f in FIELDS]
    for p, f in zip(parameters, FIELDS, strict=True):
        assert p["parameter_has_default"] == (f.name != "prompt"), p
        if f.name != "prompt":
            assert p["parameter_default"] == f.default, p
    assert [p["parameter_name"] for p in info["/upscale"]["parameters"]] == ["take_id", "resolution"]
    assert {"/generate", "/upscale", "/stop"} <= set(info)
    assert not any("lambda" in name or "refresh" in name or "gallery" in name for name in info)
    assert len(info["/generate"]["returns"]) == 5  # player, files, seed, details, take id: no browser state


def test_upscale_an_earlier_result(client) -> None:
    _, _, seed, _, take_id = generate(client, seed=21)
    player, up_downloads, up_seed, _, same_id = client.predict(take_id, "540p", api_name="/upscale")
    assert up_seed == seed == 21 and same_id == take_id
    assert paths(up_downloads)[0].endswith("base_256p.mp4") and player["right_label"] == "Super-resolution 540p"
    _check(paths(up_downloads)[1], "540p")
    with pytest.raises(AppError, match="No take to upscale"):
        client.predict(take_id="not-a-take", api_name="/upscale")


def test_negative_prompt_reaches_the_guided_model_only(server, client, monkeypatch) -> None:
    encoded: list[str] = []
    text = server[0].studio.slot.engine.models.text
    real = text.encode
    monkeypatch.setattr(text, "encode", lambda prompt: (encoded.append(prompt), real(prompt))[1])
    generate(client, prompt="Guided.", base_model="base", steps=2, negative_prompt="a frozen face, blur", seed=1)
    assert "a frozen face, blur" in encoded
    encoded.clear()
    generate(client, prompt="Distilled.", negative_prompt="ignored here", seed=1)
    assert "ignored here" not in encoded


def test_high_quality_keeps_more_than_standard(client) -> None:
    sizes = {}
    for quality in ("standard", "high"):
        downloads = generate(client, prompt="Same clip.", seed=3, quality=quality)[1]
        sizes[quality] = Path(paths(downloads)[0]).stat().st_size
    assert sizes["high"] > 1.2 * sizes["standard"], sizes


def test_stop_cancels_a_running_job_and_the_next_one_runs(server, tiny_engine, monkeypatch) -> None:
    """Stop ends the job within one denoising step: once /stop has answered, the engine finishes at most the
    step it is running (counted by the engine's own progress, not by a clock)."""
    steps: list[int] = []
    cancelled: list[GenerationCancelled] = []
    generate_for_real = tiny_engine.generate

    def counting_generate(request, on_progress=None, cancel=None):
        def progress(phase: str, step: int, total: int) -> None:
            if phase == "base":
                steps.append(step)
            on_progress(phase, step, total)

        try:
            return generate_for_real(request, on_progress=progress, cancel=cancel)
        except GenerationCancelled as exc:
            cancelled.append(exc)
            raise

    monkeypatch.setattr(tiny_engine, "generate", counting_generate)
    client = Client(server[1], verbose=False, download_files=False)
    job = client.submit(prompt="A long take.", seconds=10, base_model="base", steps=64, seed=1, api_name="/generate")
    deadline = time.monotonic() + 120
    while len(steps) < 2 and not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    client.predict(api_name="/stop")
    last_before_stop = steps[-1]
    with pytest.raises(Exception):  # noqa: B017  (cancelled job: AppError "Stopped" or a cancellation)
        job.result(timeout=120)
    assert cancelled and cancelled[0].step <= last_before_stop + 1 < 64, (cancelled, last_before_stop)
    monkeypatch.undo()
    _check(paths(generate(client, seed=2)[1])[0], "256p")


def test_bad_inputs_give_clear_errors_and_the_app_keeps_serving(client, tmp_path) -> None:
    text_png = tmp_path / "notes.png"
    text_png.write_text("this is a text file with a .png name")
    broken_audio = tmp_path / "broken.wav"
    broken_audio.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(100))
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG" + bytes(UPLOAD_LIMIT + 1024))

    with pytest.raises(AppError, match="(?i)image|picture|portrait"):
        generate(client, prompt="x", portrait=text_png)
    with pytest.raises(Exception, match="(?i)size|large|exceed"):
        generate(client, prompt="x", portrait=big)
    with pytest.raises(AppError, match="prompt is empty"):
        generate(client, prompt="")
    with pytest.raises(AppError, match="20000 characters"):
        generate(client, prompt="x" * 20_000)
    with pytest.raises(AppError, match="broken.wav|audio"):
        generate(client, prompt="x", audio=broken_audio)
    with pytest.raises(AppError, match="(?s)lossless.*not in the list of choices"):
        generate(client, prompt="x", quality="lossless")
    _check(paths(generate(client, prompt="x", seed=3)[1])[0], "256p")


def test_prompt_warning_counts_tokens_with_the_loaded_encoder(server) -> None:
    studio = server[0].studio
    assert studio.prompt_warning("A short prompt.") == ""
    long_prompt = "word " * 200  # the tiny byte-level tokenizer: ~1000 tokens, over the cap, under 4000 characters
    assert "640" in studio.prompt_warning(long_prompt)
    assert "characters" in studio.prompt_warning("x" * 20_000)


# ---------------------------------------------------------------------------------------------------------
# 2. History, compare, copy as code (the handlers in-process; the browser test drives the page)
# ---------------------------------------------------------------------------------------------------------


def test_history_lists_selects_compares_and_removes_takes(server, client) -> None:
    studio: Studio = server[0].studio
    ids = [generate(client, prompt=f"Take {i}.", seed=100 + i, steps=4 + i)[4] for i in range(2)]
    history = []
    for take_id in ids:
        history = studio.remember(take_id, history)
    assert [rec["id"] for rec in history] == ids[::-1] and history[0]["seed"] == 101 and history[0]["steps"] == 5
    items, first, second, kept = studio.gallery(history + [{"id": "gone"}, "junk"])
    assert kept == history and len(items) == 2 and all(Path(poster).is_file() for poster, _ in items)
    assert (first["value"], second["value"]) == (ids[1], ids[0])

    selected = studio.select(history, _Select(1))
    player, _, seed, _, take_id, *settings, random_seed = selected
    values = dict(zip([f.name for f in FIELDS], settings, strict=True))
    assert take_id == ids[0] and seed == 100 and values["steps"] == 4 and values["prompt"] == "Take 0."
    assert values["seed"] == 100 and random_seed is False  # "again with these settings" keeps the seed

    compared = studio.compare(ids[1], ids[0])
    assert compared["left_label"].endswith("seed 101 · 256p") and compared["right_label"].endswith("seed 100 · 256p")
    with pytest.raises(Exception, match="Pick two takes"):
        studio.compare(ids[0], "forged-id")

    folder = studio.takes.get(ids[0]).take.folder
    left, _, _ = studio.remove(ids[0], history)
    assert [rec["id"] for rec in left] == [ids[1]] and not folder.exists()


class _Select:
    """What a gallery click hands `Studio.select`: the index of the clicked item."""

    def __init__(self, index: int) -> None:
        self.index = index


def test_copy_as_code_makes_the_same_request(server, client, files) -> None:
    studio: Studio = server[0].studio
    take_id = generate(client, prompt='She says "hi".', portrait=files["portrait"], seed=9, base_model="base")[4]
    request = studio.takes.get(take_id).take.request
    python, cli = studio.code_for_take(take_id)
    calls = [n for n in ast.walk(ast.parse(python)) if isinstance(n, ast.Call)]
    call = next(n for n in calls if isinstance(n.func, ast.Attribute) and n.func.attr == "predict")
    keywords = {k.arg: k.value for k in call.keywords}
    assert ast.literal_eval(keywords["seed"]) == 9 and ast.literal_eval(keywords["prompt"]) == 'She says "hi".'
    assert ast.literal_eval(keywords["base_model"]) == "base" and "steps" in keywords  # 32, the base default
    assert "handle_file('face.png')" in python and "resolution" not in keywords  # defaults are left out

    parser = argparse.ArgumentParser()
    _generate_arguments(parser)
    parsed = request_from_args(parser.parse_args(shlex.split(cli)[4:]))
    expected = {**request_to_values(request), "portrait": Path("face.png")}
    assert {f.name: getattr(parsed, f.name) for f in FIELDS} == {**expected, "negative_prompt": None}
    minimal = python_call({"prompt": "p", "seconds": None, "seed": None}).split("predict(")[1].split(")")[0]
    assert (
        minimal.count("=") == 2
        and cli_line({"prompt": "p"}) == "python -m magihuman generate --prompt p --out clip.mp4"
    )


# ---------------------------------------------------------------------------------------------------------
# 3. MCP and the README
# ---------------------------------------------------------------------------------------------------------


def test_mcp_serves_generate_and_upscale_as_tools(tiny_engine) -> None:
    pytest.importorskip("mcp")
    demo = studio_app.build_demo(EngineSlot.ready(tiny_engine))
    with launched(demo, mcp_server=True) as url:
        tools = {tool["name"]: tool for tool in httpx.get(url + "gradio_api/mcp/schema", timeout=30).json()}
    generate_tool = next(tool for name, tool in tools.items() if name.endswith("generate"))
    upscale_tool = next(tool for name, tool in tools.items() if name.endswith("upscale"))
    properties = generate_tool["inputSchema"]["properties"]
    assert [name for name in properties] == [f.name for f in FIELDS]
    assert generate_tool["inputSchema"]["required"] == ["prompt"]  # the key must be there, naming only the prompt
    assert "lip-synced" in generate_tool["description"] and "seed" in properties["seed"]["description"].lower()
    assert "take_id" in upscale_tool["inputSchema"]["properties"]
    assert properties["seed"]["type"] == "integer" and properties["steps"]["maximum"] == 64  # types and ranges


def test_the_engine_checks_every_field_an_api_client_can_send(tiny_engine) -> None:
    for overrides, message in [
        ({"quality": "lossless"}, "quality must be one of standard, high, reference"),
        ({"negative_prompt": "x" * 5000}, "negative prompt has 5000 characters"),
        ({"guidance": True}, "guidance must be a number"),
        ({"seed": 2.5}, "seed must be a whole number"),
    ]:
        with pytest.raises(InputError, match=message):
            tiny_engine.validate(GenerationRequest(prompt="x", **overrides))
    valid = tiny_engine.validate(GenerationRequest(prompt=" x ", negative_prompt="  ", base_model="base"))
    assert (valid.prompt, valid.negative_prompt, valid.steps) == ("x", None, 32)  # blank: the engine's own


def test_the_dialogue_builder_reads_a_pasted_prompt_and_the_audio_hint_counts_seconds(tmp_path) -> None:
    prompt, _ = dialogue_to_prompt("A man at a desk.", "A man", "German", "Guten Morgen.", "Rain", 5)
    description, speaker, language, line, background = prompt_to_dialogue(prompt)
    assert (speaker, language, line, background) == ("A man", "German", "Guten Morgen.", "Rain")
    assert description.startswith("A man at a desk.")
    assert dialogue_to_prompt(description, speaker, language, line, background, 5)[0] == prompt  # a round trip
    with pytest.raises(Exception, match="no Dialogue"):
        prompt_to_dialogue("Just a description.")
    speech = wav(tmp_path / "speech.wav", seconds=2)
    assert "the clip will be 2.00 s, not 5 s" in audio_hint(str(speech), 5)
    assert "uses the first 1 s" in audio_hint(str(speech), 1) and audio_hint(None, 5) == ""


def test_request_fields_are_the_generation_request() -> None:
    declared = {f.name: f.default for f in FIELDS}
    request = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
    assert declared == {**request, "prompt": None}  # the prompt has no default: it is required


def test_readme_documents_every_field() -> None:
    readme = README.read_text()
    assert readme_table() in readme, "README's request table differs from magihuman.fields: paste readme_table()"
