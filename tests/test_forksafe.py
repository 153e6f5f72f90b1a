"""Forking while media objects with threads exist (magihuman.forksafe): the child starts and ends, whatever the
parent did with PyAV before. Without the guard the first case hangs the child inside `os.fork()` (measured: a
plain script with the same steps leaves the child stuck in `sws_freeContext`)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import av
import numpy as np

from magihuman.forksafe import MediaJob, media_in_flight, wait_for_media
from magihuman.media import Mp4Writer, read_video_frames

CHILD_WAIT_S = 60


def _child_ends(what: str, target=int) -> None:
    """Fork a child that runs `target` and assert it ends (killed and reported if it does not)."""
    child = multiprocessing.get_context("fork").Process(target=target, name=f"child after {what}")
    child.start()
    child.join(CHILD_WAIT_S)
    if child.is_alive():
        child.kill()
        child.join(10)
        raise AssertionError(f"the child forked after {what} was still alive after {CHILD_WAIT_S} s (stuck in fork)")
    assert child.exitcode == 0, f"the child forked after {what} exited with {child.exitcode}"


def test_a_fork_survives_a_threaded_scaler_cached_by_another_thread() -> None:
    converted, release = threading.Event(), threading.Event()

    def convert() -> None:  # PyAV caches a scaler with slice threads for this thread
        frame = av.VideoFrame.from_ndarray(np.zeros((720, 1280, 3), np.uint8), format="rgb24")
        frame.reformat(format="yuv420p")
        converted.set()
        release.wait(CHILD_WAIT_S)

    thread = threading.Thread(target=convert, daemon=True)
    thread.start()
    try:
        assert converted.wait(CHILD_WAIT_S), "the converting thread never converted"
        _child_ends("a scaler was cached by a live thread")
    finally:
        release.set()
        thread.join(CHILD_WAIT_S)


def test_a_fork_survives_finished_encoders_and_decoders(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (8, 64, 96, 3), dtype=np.uint8)
    audio = np.zeros((44100 // 3, 2), np.float32)
    for i in range(3):  # writers whose PyAV objects await the garbage collector
        with Mp4Writer(tmp_path / f"clip{i}.mp4", audio, preset="ultrafast") as writer:
            writer.write(frames)
    assert read_video_frames(tmp_path / "clip0.mp4").shape == frames.shape
    assert media_in_flight() == []  # every writer and reader ended its media job
    _child_ends("three clips were written and one read back")


def test_a_fork_waits_for_media_work_in_flight() -> None:
    ended_at: list[float] = []
    started = threading.Event()

    def encode() -> None:
        with MediaJob("encoding a test clip"):
            started.set()
            time.sleep(0.5)
            ended_at.append(time.monotonic())

    thread = threading.Thread(target=encode, daemon=True)
    thread.start()
    assert started.wait(CHILD_WAIT_S)
    assert media_in_flight() == ["encoding a test clip"]
    child_started_at = multiprocessing.get_context("fork").Value("d", 0.0)

    def child() -> None:
        child_started_at.value = time.monotonic()  # CLOCK_MONOTONIC: one clock for both processes
        assert media_in_flight() == []  # the parent's jobs are not the child's

    _child_ends("a media job was in flight", child)
    thread.join(CHILD_WAIT_S)
    assert ended_at and ended_at[0] <= child_started_at.value, "the fork did not wait for the media job"
    assert wait_for_media(0) == []
