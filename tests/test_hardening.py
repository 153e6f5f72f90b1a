"""Hardening: the studio keeps serving under load, faults and hostile input, and loses nothing.

The app runs in-process on 127.0.0.1 with the tiny engine and is driven the way its users drive it: through
gradio_client (one `Client` per user), through the raw queue protocol a browser tab speaks (to disconnect
mid-job, or to send what gradio_client never would), and through plain HTTP. Jobs are 1-second 256p clips.
Every wait is bounded; nothing leaves the machine.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
import warnings
import wave
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import app as studio_app
import magihuman.engine as engine_module
import studio.gpu as gpu
import studio.jobs as jobs
from magihuman.build import load_engine
from magihuman.config import (
    DEFAULT_SECONDS,
    MEDIA_LIMITS,
    MIN_SECONDS,
    REQUEST_LIMITS,
    decoded_frames,
    dit_presets,
    latent_frames,
)
from magihuman.engine import GenerationRequest, Take
from magihuman.errors import GenerationCancelled, InputError
from magihuman.fields import FIELDS
from magihuman.loading import load_dit
from magihuman.media import write_mp4
from magihuman.take_plan import MAX_TAKE_SECONDS
from studio.handlers import Studio
from studio.history import TakeStore
from studio.runtime import EngineSlot
from tests.browser import CHROMIUM, browser_page
from tests.files import noise_image, portrait, wav
from tests.probe import probe_media
from tests.studio import api_arguments, launched

WAIT = 120  # seconds: the longest any one wait in this file may take
USERS = 20
OOM_ADVICE = re.compile(r"(?i)out of (gpu )?memory.*(smaller|lower|shorter)", re.S)


# ---------------------------------------------------------------------------------------------------------
# The app under test, and how users reach it
# ---------------------------------------------------------------------------------------------------------


class EngineCalls:
    """Wraps `engine.generate` (the app calls it through `studio.gpu.gpu_generate`): per call the request, start and end
    times, and either what the result was (seed, take folder, base mp4 and its digest, taken before an
    eviction deletes it, stage timings) or the exception's class. Nothing that holds tensors is kept, so the
    record does not itself keep takes alive."""

    def __init__(self, engine) -> None:
        self.calls: list[dict] = []
        self._real = engine.generate
        self._lock = threading.Lock()
        engine.generate = self

    def __call__(self, request, on_progress=None, cancel=None):
        call = {"request": request, "start": time.monotonic(), "done": threading.Event(), "base_steps": 0}
        with self._lock:
            self.calls.append(call)

        def counting(phase: str, step: int, total: int) -> None:
            call["base_steps"] += phase == "base"
            if on_progress is not None:
                on_progress(phase, step, total)

        try:
            result = self._real(request, on_progress=counting, cancel=_SeenCancel(cancel, call))
            call.update(
                seed=result.seed,
                folder=result.take.folder,
                video_path=result.video_path,
                sha256=_sha256(result.video_path.read_bytes()),
                timings=result.timings,
            )
            return result
        except BaseException as exc:
            call["error"] = type(exc)
            raise
        finally:
            call["end"] = time.monotonic()
            call["done"].set()


class _SeenCancel:
    """The engine's cancel flag, noting in `call["cancel_seen_after"]` how many base steps had finished when the
    engine first saw it set."""

    def __init__(self, cancel, call: dict) -> None:
        self._cancel, self._call = cancel, call

    def is_set(self) -> bool:
        value = self._cancel is not None and self._cancel.is_set()
        if value:
            self._call.setdefault("cancel_seen_after", self._call["base_steps"])
        return value


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The studio as `main()` serves it: the real queue limit, upload limit and error display."""
    engine = load_engine("tiny", output_root=tmp_path_factory.mktemp("outputs"))
    calls = EngineCalls(engine)
    demo = studio_app.build_demo(EngineSlot.ready(engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    with launched(demo, max_file_size=studio_app.MAX_UPLOAD, show_error=True) as url:
        yield SimpleNamespace(demo=demo, url=url, engine=engine, calls=calls)


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False, download_files=False)


@pytest.fixture(autouse=True)
def no_fault_left_behind(request):
    """A test that injects a fault must not leave it for the next one."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").engine.fault_hook = None


def _args(**fields) -> list:
    """Every input of `/generate`, in the order of the request fields (what a raw queue join or a positional
    call sends): the declared defaults, a 1-second clip with seed 7, then `fields`."""
    values = {f.name: f.default for f in FIELDS} | {"prompt": "A woman says hello.", "seconds": 1, "seed": 7}
    return [(values | fields)[f.name] for f in FIELDS]


def _generate(client: Client, **fields):
    """`/generate` called by keyword with only the fields a test cares about (and a 1-second clip)."""
    return client.predict(**api_arguments(**{"seed": 7, **fields}), api_name="/generate")


def _check_clip(downloads, seconds: int = 1) -> None:
    path = downloads[0]["path"] if isinstance(downloads[0], dict) else downloads[0]
    info = probe_media(path)
    assert (info.video.codec, info.video.width, info.video.height) == ("h264", 448, 256)
    assert info.video.frames == decoded_frames(latent_frames(seconds)) and info.audio.codec == "aac"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _live_rss_mb() -> float | None:
    """This process's resident memory once garbage is collected and glibc has handed its free pages back;
    None where that cannot be measured (no /proc, no glibc).

    Without the trim, memory freed in the malloc arenas of Gradio's ~40 worker threads still counts as
    resident and reads as 100-400 MB of growth that is not a leak (it stays flat from round to round)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, AttributeError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _folders(root: Path) -> set[Path]:
    return {p for p in root.iterdir() if p.is_dir()}


def _fn_index(url: str, api_name: str) -> int:
    config = httpx.get(url + "config", timeout=10).json()
    return next(dep["id"] for dep in config["dependencies"] if dep.get("api_name") == api_name)


@contextmanager
def raw_job(url: str, data: list, api_name: str = "generate") -> Iterator[Iterator[dict]]:
    """Join the queue and read the event stream as a browser tab does (what gradio_client would not send,
    e.g. a server path as a file, or NaN). Leaving the block closes the connection: the user has gone."""
    session = uuid.uuid4().hex[:12]
    body = {"data": data, "fn_index": _fn_index(url, api_name), "session_hash": session, "event_data": None}
    with httpx.Client(timeout=httpx.Timeout(30.0)) as http:
        joined = http.post(  # json.dumps writes NaN as JSON's NaN token; httpx's json= would refuse it
            url + "gradio_api/queue/join", content=json.dumps(body), headers={"content-type": "application/json"}
        )
        joined.raise_for_status()
        with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
            yield _messages(stream, time.monotonic() + WAIT)


def _messages(stream: httpx.Response, deadline: float) -> Iterator[dict]:
    for line in stream.iter_lines():
        if time.monotonic() > deadline:
            raise TimeoutError("the event stream ran past its deadline")
        if line.startswith("data:"):
            message = json.loads(line[5:])
            if message.get("msg") != "heartbeat":
                yield message


def _raw_outcome(url: str, data: list) -> dict:
    """The `process_completed` message of a raw job."""
    with raw_job(url, data) as messages:
        return next(m for m in messages if m.get("msg") == "process_completed")


# ---------------------------------------------------------------------------------------------------------
# Hostile files
# ---------------------------------------------------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR claiming width×height, and no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _hour_of_speech(path: Path, rate: int = 8000) -> Path:
    """One hour of an 8-bit mono 8 kHz tone: a real hour-long recording that still fits the upload limit."""
    t = np.arange(3600 * rate, dtype=np.float32) / rate
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        out.writeframes((128 + 60 * np.sin(2 * np.pi * 220 * t)).astype(np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("hostile")
    good = portrait(d / "good.png")
    raw = good.read_bytes()
    (d / "empty.png").write_bytes(b"")
    (d / "cut.png").write_bytes(raw[: len(raw) // 2])
    Image.new("1", (10_000, 10_000)).save(d / "bomb.png")  # 100 megapixels in about 12 kB
    _png_header_only(d / "huge.png", 20_000, 20_000)
    frames = [Image.new("RGB", (320, 400), colour) for colour in ("red", "blue")]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (d / "notes.png").write_text("meeting notes, not a picture")
    noise_image(320, 400, seed=3).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    ramp = np.linspace(0, 65535, 320 * 400).reshape(400, 320).astype(np.uint16)
    Image.fromarray(ramp).save(d / "deep.png")  # 16-bit greyscale: mean 127.5 once mapped to 8 bits
    Image.new("RGBA", (320, 400), (0, 0, 0, 0)).save(d / "clear.png")  # fully transparent: white when flattened
    wav(d / "silent.wav", seconds=2, amplitude=0.0)
    _hour_of_speech(d / "hour.wav")
    (d / "noise.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    header = wav(d / "speech.wav", seconds=2).read_bytes()
    (d / "cut.wav").write_bytes(header[:44])  # a WAV header and no samples
    write_mp4(d / "silent_film.mp4", np.zeros((5, 64, 64, 3), np.uint8))  # video only, no audio track
    (d / "photo.wav").write_bytes(raw)
    return SimpleNamespace(dir=d, good=good)


@pytest.fixture
def seen_portraits(monkeypatch) -> list:
    """The pictures the engine got from `load_portrait` (mode, size, mean level)."""
    seen: list = []
    real = engine_module.load_portrait

    def spy(path):
        image = real(path)
        seen.append(SimpleNamespace(mode=image.mode, size=image.size, mean=float(np.asarray(image).mean())))
        return image

    monkeypatch.setattr(engine_module, "load_portrait", spy)
    return seen


# ---------------------------------------------------------------------------------------------------------
# 1. Load
# ---------------------------------------------------------------------------------------------------------


def test_take_store_eviction_deletes_the_oldest_folders(tmp_path) -> None:
    store = TakeStore(capacity=2)
    folders = [tmp_path / f"take-{i}" for i in range(4)]
    ids = []
    for folder in folders:
        folder.mkdir()
        (folder / "base_256p.mp4").write_bytes(b"clip")
        take = SimpleNamespace(folder=folder, base_video_path=folder / "base_256p.mp4")
        result = SimpleNamespace(take=take, timings={}, video_path=take.base_video_path, sr_video_path=None)
        ids.append(store.add(result))
    assert [f.exists() for f in folders] == [False, False, True, True]
    assert store.get(ids[0]) is None and store.get(ids[3]).take.folder == folders[3]
    store.remove(ids[3])
    assert store.get(ids[3]) is None and not folders[3].exists() and len(store) == 1
    store.clear()
    assert not any(f.exists() for f in folders)


def test_twenty_users_at_once_get_their_own_clips_or_a_queue_full_answer(server) -> None:
    """20 keyword clients submit together while the one GPU worker is busy: the queue takes exactly MAX_QUEUE,
    the rest hear "queue is full"; every accepted job finishes with its own prompt, seed and file, one at a
    time; afterwards memory and the engine's output folders are back to the baseline the TakeStore allows."""
    demo, engine, takes = server.demo, server.engine, server.demo.studio.takes
    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda _: Client(server.url, verbose=False, download_files=False), range(USERS)))
    capacity = 4
    old_capacity, takes.capacity = takes.capacity, capacity
    gate, held = threading.Event(), threading.Event()
    try:
        with ThreadPoolExecutor(8) as pool:  # warm: first-call and per-thread costs stay out of the baseline
            list(pool.map(lambda i: _generate(clients[i], seed=i), range(8)))
        rss_before, folders_before = _live_rss_mb(), _folders(engine.output_root)
        first_call = len(server.calls.calls)

        def hold_the_first_job(stage: str, step: int) -> None:
            if not held.is_set():
                held.set()
                gate.wait(WAIT)

        engine.fault_hook = hold_the_first_job
        barrier = threading.Barrier(USERS)

        # Each client sends only what it cares about, by keyword: a few different subsets of the fields.
        subsets = [{}, {"aspect": "landscape"}, {"quality": "standard"}, {"resolution": "256p", "sr_steps": 3}]

        def user(i: int):
            barrier.wait(WAIT)
            fields = subsets[i % len(subsets)]
            try:
                return _generate(clients[i], prompt=f"Person number {i} says their number.", seed=1000 + i, **fields)
            except Exception as exc:  # noqa: BLE001  (a refusal is an outcome to check, not an error here)
                return exc

        with ThreadPoolExecutor(USERS) as pool:
            futures = [pool.submit(user, i) for i in range(USERS)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # one running, the rest queued or refused: all answered
                refused = sum(f.done() for f in futures)
                if held.is_set() and 1 + len(demo._queue) + refused == USERS:
                    break
                time.sleep(0.05)
            waiting = len(demo._queue)
            gate.set()
            outcomes = [f.result(timeout=WAIT) for f in futures]
    finally:
        gate.set()
        engine.fault_hook = None
        takes.capacity = old_capacity
        for c in clients:
            c.close()

    refused = {i: o for i, o in enumerate(outcomes) if isinstance(o, Exception)}
    done = {i: o for i, o in enumerate(outcomes) if not isinstance(o, Exception)}
    assert waiting == studio_app.MAX_QUEUE
    assert all("queue is full" in str(exc).lower() for exc in refused.values()), refused
    assert len(done) == studio_app.MAX_QUEUE + 1 and len(refused) == USERS - len(done)

    # Nobody got someone else's clip: the file each client downloads is the one made for its prompt and seed.
    calls = server.calls.calls[first_call:]
    assert len(calls) == len(done) and all("sha256" in c for c in calls)
    made_for = {c["sha256"]: (c["request"].prompt, c["seed"]) for c in calls}
    assert len(made_for) == len(done)  # every clip differs
    for i, (_, downloads, seed, _, _) in done.items():
        assert seed == 1000 + i
        clip = httpx.get(downloads[0]["url"], timeout=30)
        assert clip.status_code == 200
        assert made_for[_sha256(clip.content)] == (f"Person number {i} says their number.", 1000 + i)

    # One GPU worker: the engine never ran two jobs at once.
    spans = sorted((c["start"], c["end"]) for c in calls)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    assert len(demo._queue) == 0

    # The TakeStore kept the newest takes and deleted the folders of the evicted ones; nothing else is left.
    by_end = sorted(calls, key=lambda c: c["end"])
    kept = {c["folder"] for c in by_end[-capacity:]}
    evicted = {c["folder"] for c in by_end[:-capacity]}
    now = _folders(engine.output_root)
    assert now - folders_before == kept and not evicted & now

    # Memory: no take outlives the store, and resident memory is back near the baseline. (A 1-second clip's
    # decoded frames alone are 8.6 MB: keeping them per job would be ~150 MB here; measured growth is ~30 MB.)
    rss_after = _live_rss_mb()
    ours = [o for o in gc.get_objects() if isinstance(o, Take) and o.folder.parent == engine.output_root]
    assert len(ours) <= capacity
    if rss_before is None or rss_after is None:  # everything else above was checked
        pytest.skip("resident memory cannot be measured here (no /proc or glibc): the memory bound went unchecked")
    assert rss_after < rss_before + 80, (rss_before, rss_after)


# ---------------------------------------------------------------------------------------------------------
# 2. Faults
# ---------------------------------------------------------------------------------------------------------


def test_out_of_memory_in_a_step_advises_frees_memory_and_the_next_job_runs(server, client, monkeypatch) -> None:
    freed: list[int] = []
    real_collect = jobs.gc.collect
    monkeypatch.setattr(jobs.gc, "collect", lambda *args: (freed.append(1), real_collect(*args))[1])

    def out_of_memory(stage: str, step: int) -> None:
        if (stage, step) == ("base", 2):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")

    folders_before = _folders(server.engine.output_root)
    server.engine.fault_hook = out_of_memory
    with pytest.raises(AppError) as failed:
        _generate(client, seed=11)
    assert OOM_ADVICE.search(str(failed.value)), str(failed.value)
    assert server.calls.calls[-1].get("error") is torch.OutOfMemoryError
    assert freed  # the failed job's tensors were collected before the next job
    assert _folders(server.engine.output_root) == folders_before  # the failed take left no files behind

    server.engine.fault_hook = None
    _, downloads, seed, _, _ = _generate(client, seed=12)
    assert seed == 12
    _check_clip(downloads)


@pytest.mark.parametrize("how", ["connection closed", "job.cancel()"])
def test_a_client_that_leaves_mid_job_gets_it_cancelled(server, client, how) -> None:
    steps: list[int] = []
    server.engine.fault_hook = lambda stage, step: steps.append(step)
    first_call = len(server.calls.calls)
    data = _args(prompt="A long take.", seconds=3, steps=16, seed=5)
    if how == "connection closed":  # the tab was closed, the script died
        with raw_job(server.url, data) as messages:
            for _ in messages:
                if steps:  # a denoising step has finished: the job is running
                    break
    else:  # gradio_client's own cancel, which Gradio does not pass on to a running function
        leaver = Client(server.url, verbose=False, download_files=False)
        job = leaver.submit(*data, api_name="/generate")
        deadline = time.monotonic() + WAIT
        while not steps and not job.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        job.cancel()
        leaver.close()
    at_leaving = len(steps)
    call = server.calls.calls[first_call]
    assert call["done"].wait(60), "the engine kept running for a client that had gone"
    assert call.get("error") is GenerationCancelled, call.get("error")
    # The server notices a departed client at its next check (every studio.jobs.HEARTBEAT_S, or a progress item);
    # from then on at most the running step finishes (the README's promise).
    assert call["base_steps"] <= call["cancel_seen_after"] + 1, call
    assert len(steps) <= at_leaving + 3 and steps[-1] < 16, (at_leaving, steps)  # noticed within ~3 tiny steps

    server.engine.fault_hook = None
    _, downloads, seed, _, _ = _generate(client, seed=6)
    assert seed == 6
    _check_clip(downloads)


def test_an_engine_that_fails_to_load_names_the_file_and_the_app_keeps_serving(tmp_path) -> None:
    folder = tmp_path / "distill"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(1000))  # a corrupt shard

    def loader(status):
        status("loading the distill DiT")
        return load_dit(folder, dit_presets("tiny")["distill"].dit, "cpu")

    slot = EngineSlot(loader).start()
    assert slot.wait(WAIT) and slot.status.state == "failed"
    demo = studio_app.build_demo(slot)
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    with launched(demo, show_error=True) as url:
        assert "model.safetensors" in demo.studio.status_markdown()
        client = Client(url, verbose=False, download_files=False)
        for _ in range(2):  # the same clear answer every time: the process is still up
            with pytest.raises(AppError, match=r"(?s)failed to load.*CheckpointError.*model\.safetensors"):
                _generate(client)
        client.predict(api_name="/stop")
        assert httpx.get(url + "config", timeout=10).status_code == 200
        client.close()
        if not CHROMIUM.exists():  # everything else above was checked
            pytest.skip(f"{CHROMIUM} is not installed: what a visitor sees of the failed load went unchecked")
        with browser_page(url, timeout_ms=30_000) as page:  # the error and the file in the status line, Generate off
            page.wait_for_function(
                "() => document.querySelector('#status-line')?.innerText.includes('model.safetensors')"
            )
            status = page.inner_text("#status-line")
            assert "failed" in status and "CheckpointError" in status
            assert page.locator("#generate").is_disabled()


# ---------------------------------------------------------------------------------------------------------
# 3. Hostile and broken input
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("empty.png", r"empty \(0 bytes\)"),
        ("cut.png", r"damaged or cut short"),
        ("bomb.png", r"10000×10000 pixels .*megapixels"),
        ("huge.png", r"far too large|megapixels"),
        ("animated.gif", r"animated"),
        ("notes.png", r"not an image we can read"),
    ],
)
def test_unusable_portraits_get_clear_errors(server, client, hostile, seen_portraits, name, expected) -> None:
    with pytest.raises(AppError) as failed:
        _generate(client, portrait=hostile.dir / name)
    message = str(failed.value)
    assert re.search(expected, message) and name in message, message
    assert "Could not preprocess" not in message and "/tmp" not in message  # for users, no server paths
    assert not seen_portraits  # refused from the header, before anything decoded the pixels


@pytest.mark.parametrize(
    ("name", "low", "high"), [("cmyk.jpg", 110, 145), ("deep.png", 110, 145), ("clear.png", 250, 256)]
)
def test_cmyk_16_bit_and_transparent_portraits_are_converted(server, client, hostile, seen_portraits, name, low, high):
    """They work, and the engine sees the picture as a viewer shows it: not clipped to white, not blackened."""
    _, downloads, seed, _, _ = _generate(client, portrait=hostile.dir / name, seed=31)
    assert seed == 31
    _check_clip(downloads)
    (picture,) = seen_portraits
    assert picture.mode == "RGB" and picture.size == (320, 400) and low <= picture.mean <= high, picture


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("silent.wav", r"silent"),
        ("noise.mp3", r"not an audio file we can read"),
        ("cut.wav", r"audio|damaged|ms of audio"),
        ("silent_film.mp4", r"no audio track"),
        ("photo.wav", r"no audio track|not an audio file"),
    ],
)
def test_unusable_audio_gets_clear_errors(server, client, hostile, name, expected) -> None:
    with pytest.raises(AppError) as failed:
        _generate(client, audio=hostile.dir / name)
    message = str(failed.value)
    assert re.search(expected, message) and name in message and "/tmp" not in message, message


def test_an_hour_of_audio_is_trimmed_not_refused(server, client, hostile) -> None:
    """The clip follows the first second of the hour (that decoding stops there is tests/test_media.py's)."""
    _, downloads, _, _, _ = _generate(client, audio=hostile.dir / "hour.wav", seed=41)
    _check_clip(downloads)
    path = downloads[0]["path"] if isinstance(downloads[0], dict) else downloads[0]
    assert probe_media(path).audio.seconds == pytest.approx(1.0, abs=0.05)  # 25 frames of the user's audio


VALID_PROMPTS = {
    "control characters": "A woman says hello.\x00\x07\x1b[31m\x7f\u200b",
    "right-to-left": "\u202eامرأة تقول: مرحبا بكم. אישה אומרת שלום",
    "emoji": "😀🎬 A man waves 👋🏽 and says: hi! 👨‍👩‍👧",
    "mixed CJK": "一位女士微笑着说：你好。こんにちは、元気ですか。안녕하세요. A woman says hello.",
}


@pytest.mark.parametrize("kind", VALID_PROMPTS)
def test_odd_but_valid_prompts_generate(server, client, kind) -> None:
    _, downloads, seed, _, _ = _generate(client, prompt=VALID_PROMPTS[kind], seed=51)
    assert seed == 51 and server.calls.calls[-1]["request"].prompt == VALID_PROMPTS[kind].strip()
    _check_clip(downloads)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("", r"prompt is empty"),
        (" \n\t ", r"prompt is empty"),
        ("x" * 20_000, r"20000 characters; the limit is 4000"),
        ("😀" * 20_000, r"20000 characters; the limit is 4000"),
    ],
)
def test_empty_and_oversized_prompts_are_refused(client, prompt, expected) -> None:
    with pytest.raises(AppError, match=expected):
        _generate(client, prompt=prompt)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("seed", -1, r"less than minimum value 0"),
        ("seed", 2**32, r"greater than maximum value 4294967295"),
        ("seed", 10**30, r"greater than maximum value"),
        ("seed", "forty-two", r"(?s)`number` component.*'forty-two'"),
        ("sr_steps", 0, r"less than minimum value 1"),
        ("seconds", 0, r"duration must be a whole number from 1 to 120"),  # the box takes 0 as empty
        ("seconds", MAX_TAKE_SECONDS + 1, rf"greater than maximum value {MAX_TAKE_SECONDS}"),
        ("seconds", 2.5, r"duration must be a whole number"),
        ("seconds", "ten", r"(?s)`number` component.*'ten'"),
        ("steps", 0, r"less than minimum value 1"),
        ("steps", 17, r"steps for the distill model must be 1 to 16"),
        ("steps", 10_000, r"greater than maximum value 64"),
        ("steps", 1.5, r"steps must be a whole number"),
        ("guidance", 16, r"greater than maximum value 15"),
    ],
)
def test_numbers_outside_their_ranges_are_refused_by_the_api(client, field, value, expected) -> None:
    with pytest.raises(AppError, match=expected):
        _generate(client, **{field: value})


def test_not_a_number_sent_raw_is_refused(server) -> None:
    """JSON can carry NaN (gradio_client refuses to send it; a script need not)."""
    outcome = _raw_outcome(server.url, _args(seconds=float("nan")))
    assert outcome["success"] is False and "duration must be a whole number" in outcome["output"]["error"]


def test_the_app_still_serves_after_hostile_inputs(server, client, hostile) -> None:
    """Hostile inputs of each kind, then an ordinary clip from the same server (also when run alone)."""
    for fields in ({"portrait": hostile.dir / "bomb.png"}, {"audio": hostile.dir / "empty.png"}, {"prompt": " "}):
        with pytest.raises(AppError):
            _generate(client, **fields)
    assert _raw_outcome(server.url, _args(seconds=float("nan")))["success"] is False
    _, downloads, seed, _, _ = _generate(client, seed=61)
    assert seed == 61
    _check_clip(downloads)


class Validated(Exception):  # noqa: N818  (a signal, not an error)
    """Raised instead of running the engine: validation passed with this request."""

    def __init__(self, request: GenerationRequest) -> None:
        super().__init__("validated")
        self.request = request


NUMBERS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**400), 2**32 - 1, 2**32, " 7 ", "1e3", "0x10", "", "nan"]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)


def test_numeric_fields_either_validate_in_range_or_give_a_clear_error(server) -> None:
    """Whatever reaches the handler, generate answers with a `gr.Error` or a request inside every range."""
    studio = Studio(EngineSlot.ready(server.engine))
    request = gr.Request(session_hash="hypothesis")

    def validate_only(gen_request):
        """gpu_generate's part here: the engine validates; its errors reach the handler as gr.Error."""
        try:
            valid = server.engine.validate(gen_request)
        except InputError as exc:
            raise gr.Error(str(exc)) from exc
        raise Validated(valid)

    @settings(max_examples=25, deadline=None)
    @given(seconds=NUMBERS, steps=NUMBERS, seed=NUMBERS)
    def check(seconds, steps, seed) -> None:
        try:
            studio.generate(prompt="A woman says hello.", seconds=seconds, steps=steps, seed=seed, request=request)
        except gr.Error as exc:
            assert 0 < len(exc.message) < 300, exc.message
            return
        except Validated as ok:
            r = ok.request
            empty = (None, "")  # steps and seed may be left empty: the model's own steps, a random seed
            assert MIN_SECONDS <= r.seconds <= MAX_TAKE_SECONDS
            assert r.seconds == (DEFAULT_SECONDS if seconds in empty else float(seconds))  # empty: 5 s
            assert 1 <= r.steps <= REQUEST_LIMITS.max_steps["distill"]
            assert r.steps == (REQUEST_LIMITS.default_steps["distill"] if steps in empty else float(steps))
            assert 0 <= r.seed <= REQUEST_LIMITS.max_seed and (seed in empty or r.seed == float(seed))
            return
        pytest.fail("generate returned without validating")

    with mock.patch.object(gpu, "gpu_generate", validate_only):
        check()


PROMPTS = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=200),  # any code point, lone surrogates included
    st.text(st.sampled_from(" \t\n\r\x0b\x0c\x00\x1b\u200b\u202e\u3000"), max_size=20),
    st.builds(lambda piece, n: piece * n, st.text(min_size=1, max_size=4), st.integers(900, 2100)),
)


def test_any_prompt_validates_and_encodes_or_gives_a_clear_error(server) -> None:
    engine = server.engine

    @settings(max_examples=25, deadline=None)
    @given(prompt=PROMPTS)
    def check(prompt: str) -> None:
        try:
            valid = engine.validate(GenerationRequest(prompt=prompt, seconds=1, seed=1))
        except InputError as exc:
            stripped = prompt.strip()
            assert ("empty" in str(exc) and not stripped) or (
                f"{len(stripped)} characters" in str(exc) and len(stripped) > REQUEST_LIMITS.max_prompt_chars
            ), str(exc)
            return
        assert valid.prompt == prompt.strip() and 0 < len(valid.prompt) <= REQUEST_LIMITS.max_prompt_chars
        if len(valid.prompt) <= 300:  # the tiny encoder is byte-level: keep its sequences short here
            assert engine.models.text.encode(valid.prompt).tokens.shape[0] >= 1

    check()


# ---------------------------------------------------------------------------------------------------------
# 4. Security
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_launch(server, monkeypatch) -> list[dict]:
    """`main()` up to `launch`: the launch arguments instead of a server; the tiny engine instead of a load."""
    launches: list[dict] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, *args, **kwargs: launches.append(kwargs))
    monkeypatch.setattr(studio_app, "demo", studio_app.build_demo(EngineSlot.ready(server.engine)))
    for name in (studio_app.AUTH_ENV, "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "GRADIO_SHARE"):
        monkeypatch.delenv(name, raising=False)
    return launches


def _warned_about_sharing(run, capsys, caplog) -> bool:
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        run()
    printed = capsys.readouterr()
    said = [str(w.message) for w in caught] + [printed.out, printed.err, caplog.text]
    return any(re.search(r"(?i)public", text) for text in said)


def test_main_binds_loopback_by_default_and_warns_when_sharing(fake_launch, capsys, caplog) -> None:
    assert not _warned_about_sharing(lambda: studio_app.main([]), capsys, caplog)
    defaults = fake_launch[-1]
    assert defaults["server_name"] == "127.0.0.1" and not defaults.get("share") and not defaults.get("auth")
    assert defaults["max_file_size"] == studio_app.MAX_UPLOAD

    assert _warned_about_sharing(lambda: studio_app.main(["--share"]), capsys, caplog)
    assert fake_launch[-1]["share"] is True
    assert _warned_about_sharing(lambda: studio_app.main(["--share", "--auth", "user:pass"]), capsys, caplog)
    assert tuple(fake_launch[-1]["auth"]) == ("user", "pass")


def test_main_binds_where_a_space_asks(fake_launch, monkeypatch) -> None:
    """Spaces start `python app.py` with GRADIO_SERVER_NAME=0.0.0.0: a loopback bind would be unreachable."""
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    studio_app.main([])
    assert (fake_launch[-1]["server_name"], fake_launch[-1]["server_port"]) == ("0.0.0.0", 7861)
    studio_app.main(["--host", "127.0.0.1"])
    assert fake_launch[-1]["server_name"] == "127.0.0.1"


def test_auth_blocks_the_page_the_api_and_the_files_without_credentials(server) -> None:
    demo = studio_app.build_demo(EngineSlot.ready(server.engine))
    demo.queue(max_size=studio_app.MAX_QUEUE, default_concurrency_limit=1)
    with launched(demo, auth=("user", "pass"), max_file_size=studio_app.MAX_UPLOAD) as url:
        assert httpx.get(url + "config", timeout=10).status_code == 401  # the page cannot load the app
        join = {"data": _args(), "fn_index": 0, "session_hash": "intruder", "event_data": None}
        assert httpx.post(url + "gradio_api/queue/join", json=join, timeout=10).status_code == 401
        with pytest.raises(Exception, match="(?i)credentials|login"):
            Client(url, verbose=False)
        with pytest.raises(Exception, match="(?i)login"):
            Client(url, auth=("user", "wrong"), verbose=False)
        client = Client(url, auth=("user", "pass"), verbose=False, download_files=False)
        _, downloads, seed, _, _ = _generate(client, seed=71)
        assert seed == 71
        assert httpx.get(downloads[0]["url"], timeout=10).status_code in (401, 403)  # not without the cookie
        client.close()


def test_uploads_over_the_limit_are_refused(server, client, tmp_path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.truncate(MEDIA_LIMITS.max_image_bytes + 1024)  # sparse: 50 MiB + 1 KiB
    with pytest.raises(Exception, match="(?i)size|large|exceed"):
        _generate(client, portrait=big)
    _, _, seed, _, _ = _generate(client, seed=81)
    assert seed == 81


def test_server_paths_sent_as_files_are_refused(server, client, seen_portraits) -> None:
    """A script can name any server file as an input; only files uploaded to this app are accepted, so
    neither /etc/passwd nor another user's clip (in the engine's output folder) can be read back."""
    _generate(client, seed=85)
    someone_elses_clip = server.calls.calls[-1]["video_path"]
    assert someone_elses_clip.is_file()
    for data in (
        _args(portrait={"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}),
        _args(audio={"path": "/etc/passwd", "orig_name": "speech.wav", "meta": {"_type": "gradio.FileData"}}),
        _args(audio={"path": str(someone_elses_clip), "meta": {"_type": "gradio.FileData"}}),
    ):
        outcome = _raw_outcome(server.url, data)
        error = outcome["output"].get("error") or ""
        assert outcome["success"] is False and re.search(r"(?i)not uploaded|not allowed", error), outcome
        assert "root:" not in json.dumps(outcome)
    assert not seen_portraits


def test_only_the_apps_own_files_are_served(server, client) -> None:
    _, downloads, _, _, _ = _generate(client, seed=91)
    served = httpx.get(downloads[0]["url"], timeout=10)
    assert served.status_code == 200 and served.content[4:8] == b"ftyp"  # an output, from Gradio's cache
    engine_copy = server.calls.calls[-1]["video_path"]  # the same clip where the engine wrote it
    for path in ("/etc/passwd", str(Path(studio_app.__file__).resolve()), str(engine_copy), "../../../etc/passwd"):
        for route in ("gradio_api/file=", "file="):
            response = httpx.get(server.url + route + path, timeout=10)
            assert response.status_code in (403, 404), (route, path, response.status_code)
            assert b"root:" not in response.content
