"""One long-lived worker thread per purpose and process (magihuman.threads)."""

from __future__ import annotations

import multiprocessing
import threading

from magihuman.threads import worker_thread


def test_the_same_thread_serves_every_job_of_a_purpose() -> None:
    first = worker_thread("test-purpose").submit(threading.get_ident).result(timeout=30)
    second = worker_thread("test-purpose").submit(threading.get_ident).result(timeout=30)
    other = worker_thread("test-other").submit(threading.get_ident).result(timeout=30)
    assert first == second != other
    assert worker_thread("test-purpose") is worker_thread("test-purpose")


def _run_in_fork(results) -> None:
    # The parent's thread does not exist here: submitting to it would wait forever; a new one must serve.
    results.put(worker_thread("test-purpose").submit(lambda: "served").result(timeout=30))


def test_a_forked_process_gets_its_own_thread() -> None:
    worker_thread("test-purpose").submit(lambda: None).result(timeout=30)  # started in the parent
    ctx = multiprocessing.get_context("fork")
    results = ctx.SimpleQueue()
    child = ctx.Process(target=_run_in_fork, args=(results,))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and results.get() == "served"
