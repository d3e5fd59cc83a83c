"""bulk_pipeline: the overlap of read, score and write, driven by plain functions (no server).

The invariants predict_relation relies on: every chunk is written exactly once and in the
order it was read; the scorer gets one core less while the reader still runs; one thread
means no worker at all; an error anywhere stops the run and surfaces in the caller's thread,
after the worker has finished (it may be inside a scorer's C call).
"""

from __future__ import annotations

import threading

import pytest

from inference import bulk_pipeline


def _run(chunks, threads, **overrides):
    log = {"written": [], "score_threads": [], "score_thread_ids": set(), "write_thread_ids": set()}

    def score(chunk, n_threads):
        log["score_threads"].append(n_threads)
        log["score_thread_ids"].add(threading.get_ident())
        return chunk * 10

    def prepare(chunk, scored):
        return (chunk, scored + 1)

    def write(prepared):
        log["write_thread_ids"].add(threading.get_ident())
        log["written"].append(prepared)

    overlap = overrides.pop("overlap", True)
    funcs = {"score": score, "prepare": prepare, "write": write, **overrides}
    steps = bulk_pipeline.run(chunks, funcs["score"], funcs["prepare"], funcs["write"],
                              threads=threads, overlap=overlap)
    return steps, log


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_every_chunk_is_written_once_in_read_order(threads):
    steps, log = _run(iter(range(50)), threads)
    assert log["written"] == [(k, k * 10 + 1) for k in range(50)]
    assert steps.chunks == 50
    assert {"read", "score", "prepare", "write"} <= set(steps.report())


def test_writes_run_in_the_calling_thread_and_scoring_in_a_worker():
    _, log = _run(iter(range(20)), threads=2)
    assert log["write_thread_ids"] == {threading.get_ident()}
    assert threading.get_ident() not in log["score_thread_ids"]


def test_one_thread_scores_in_the_calling_thread_without_a_worker():
    steps, log = _run(iter(range(5)), threads=1)
    assert log["score_thread_ids"] == {threading.get_ident()}
    assert log["score_threads"] == [1] * 5
    assert "wait" not in steps.report()


def test_the_scorer_gets_one_thread_less_while_the_reader_runs():
    """Chunk 0 is scored while the reader is held inside the source: it gets threads - 1;
    every chunk gets threads - 1 or, once the reading is over, all threads."""
    started = threading.Event()

    def chunks():
        yield 0
        started.wait(5)  # the reader stays busy until the worker is inside score(0)
        yield 1
        yield 2

    def score(chunk, n_threads):
        if chunk == 0:
            started.set()
        return n_threads

    got = []
    bulk_pipeline.run(chunks(), score, lambda chunk, scored: scored, got.append, threads=4)
    assert got[0] == 3 and len(got) == 3
    assert set(got) <= {3, 4}


def test_a_full_queue_makes_the_reader_wait(monkeypatch):
    """MAX_PENDING chunks read and not written: the reader waits for the oldest before it reads
    another, so memory stays bounded by the queue on a relation of any size."""
    monkeypatch.setattr(bulk_pipeline, "MAX_PENDING", 2)
    read, seen = [], []

    def chunks():
        for k in range(6):
            read.append(k)
            yield k

    def score(chunk, n_threads):
        if chunk == 0:
            while len(read) < 3:  # chunks 0, 1, 2 read: more than MAX_PENDING pending
                threading.Event().wait(0.01)
            threading.Event().wait(0.2)  # room for a reader that would not wait
            seen.append(len(read))
        return n_threads

    got = []
    bulk_pipeline.run(chunks(), score, lambda chunk, scored: scored, got.append, threads=2)
    assert seen == [3] and len(got) == 6 and set(got) <= {1, 2}


def test_without_overlap_every_step_runs_here_with_every_thread():
    steps, log = _run(iter(range(3)), threads=2, overlap=False)
    assert log["score_thread_ids"] == {threading.get_ident()}
    assert log["score_threads"] == [2] * 3 and len(log["written"]) == 3


def test_no_chunks_writes_nothing():
    steps, log = _run(iter(()), threads=2)
    assert log["written"] == [] and steps.chunks == 0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("failing", ["score", "prepare", "write", "read"])
def test_an_error_in_any_step_stops_the_run_and_reaches_the_caller(threads, failing):
    read = []

    def chunks():
        for k in range(100):
            read.append(k)
            if failing == "read" and k == 3:
                raise ValueError("read failed")
            yield k

    def broken(*args):
        raise ValueError(f"{failing} failed")

    overrides = {} if failing == "read" else {failing: broken}
    with pytest.raises(ValueError, match=f"{failing} failed"):
        _run(chunks(), threads, **overrides)
    if failing in ("read", "write"):  # the calling thread's own steps stop it at once
        assert len(read) < 100


def test_the_worker_is_finished_before_an_error_is_raised():
    """A reader error while the worker is still scoring: run() returns only after it ends."""
    inside = threading.Event()
    finished = []

    def chunks():
        yield 0
        inside.wait(5)
        raise RuntimeError("the scan was cancelled")

    def score(chunk, n_threads):
        inside.set()
        threading.Event().wait(0.2)
        finished.append(chunk)
        return chunk

    with pytest.raises(RuntimeError, match="cancelled"):
        bulk_pipeline.run(chunks(), score, lambda c, s: s, lambda p: None, threads=2)
    assert finished == [0]
