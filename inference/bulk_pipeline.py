"""predict_relation's overlap: read chunk k+1 while a worker thread scores chunk k.

Why a thread and not a second process: the reader is the backend itself (SPI, which only the
backend's own thread may call), and the scorers spend their time in C that releases the GIL
(XGBoost's predictor and the compiled trees through ctypes, onnxruntime's ``run``). While the
main thread runs the next chunk's scan inside Postgres -- holding the GIL, as PL/Python does
-- the worker's trees run on the other core; the worker only needs the GIL for the few Python
lines around each call.

Who does what::

    main thread  | read 1 | read 2          | read 3 | write 1 | read 4 | write 2 | ...
    worker       |        | score+prepare 1 | score+prepare 2  | score+prepare 3 | ...

- ``read``: the main thread pulls the next chunk from ``chunks`` (an SPI cursor in bulk).
- ``score`` and ``prepare`` run in the one worker, chunk after chunk in order: the scorer,
  then what the write needs (bulk: the chunk's binary COPY file). They must never call into
  Postgres (plpy): nothing but numpy, the scorer's C and files.
- ``write`` runs in the main thread (SPI again), in chunk order, as soon as the chunk at the
  head of the queue is prepared -- between reads, so writes overlap the worker too.

``score`` receives the number of threads it may use: ``threads - 1`` while the main thread is
busy reading or writing (it holds a core), all ``threads`` while it only waits for the worker
-- once the reading is done, or when MAX_PENDING chunks are waiting to be written.
With ``threads`` 1 (``max_parallel_workers_per_gather = 0``: one core per query) there is no
worker: each chunk is read, scored, prepared and written in turn by the main thread.

The GIL. PL/Python keeps the GIL while SPI runs a query, so the worker gets it only when the
backend's thread is in Python again; and each hand-over wakes a thread that the OS must
schedule -- on a loaded box, milliseconds each. So the worker does as little Python as
possible: with ``prepare_here`` (what bulk uses) it only scores -- for compiled trees one
float32 conversion and one C call -- and the backend's thread builds each COPY file before
writing it. Measured for 1M rows at load ~4.5, chunks of 131k rows: 0.78 s wall with
``prepare_here`` against 0.91 s with the files built in the worker (docs/benchmarks.md).

Nothing here knows about Postgres; tests/inference/test_bulk_pipeline.py drives it with plain
functions. Each step's wall and CPU seconds (the CPU of the thread that ran it, summed over
chunks) go to ``Steps``; a step's CPU does not count the helper threads a scorer starts, the
process total (``total``) does.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

# Chunks read but not yet written, at most (then the reader waits for the worker): bounds
# memory to a few chunks' rows (bulk_read.CHUNK_ROWS each) on a relation of any size.
MAX_PENDING = 8


@dataclass
class Steps:
    """Per step: [wall seconds, CPU seconds of the thread that ran it], summed over chunks."""
    seconds: dict[str, list[float]] = field(default_factory=dict)
    chunks: int = 0

    def add(self, step: str, wall: float, cpu: float) -> None:
        total = self.seconds.setdefault(step, [0.0, 0.0])
        total[0] += wall
        total[1] += cpu

    def report(self) -> dict[str, dict[str, float]]:
        return {k: {"wall": round(w, 4), "cpu": round(c, 4)} for k, (w, c) in self.seconds.items()}


class Timed:
    """Adds the wall and thread CPU seconds of a ``with`` block to ``steps`` under ``step``."""

    def __init__(self, steps: Steps, step: str):
        self.steps, self.step = steps, step

    def __enter__(self):
        self.start = (time.perf_counter(), time.thread_time())

    def __exit__(self, *exc):
        self.steps.add(self.step, time.perf_counter() - self.start[0],
                       time.thread_time() - self.start[1])


def run(chunks: Iterable, score: Callable, prepare: Callable, write: Callable,
        threads: int = 1, steps: Steps | None = None, overlap: bool = True,
        prepare_here: bool = False) -> Steps:
    """Every chunk of ``chunks`` through score(chunk, threads) -> scored, then
    prepare(chunk, scored) -> prepared in the worker, then write(prepared) here, in order.

    ``prepare_here``: prepare runs in this thread, just before the write, so that the worker
    only scores (see "The GIL" above).

    ``overlap`` False (a relation read as one chunk: nothing to overlap) or ``threads`` 1:
    every step in this thread, in turn, the scorer given all ``threads``.

    An error in any step stops the run: no further chunk is read or scored, the worker is
    waited for (it may be inside a scorer's C call), and the error is raised here.
    """
    steps = steps if steps is not None else Steps()
    if int(threads) <= 1 or not overlap:
        return _serial(chunks, score, prepare, write, steps, max(1, int(threads)))
    busy = threading.Event()  # set while this thread reads or writes (it holds a core)
    busy.set()
    threads = max(1, int(threads))

    def work(chunk):
        with Timed(steps, "score"):
            scored = score(chunk, max(1, threads - 1) if busy.is_set() else threads)
        if prepare_here:
            return chunk, scored
        with Timed(steps, "prepare"):
            return prepare(chunk, scored)

    def finish(result) -> None:
        if prepare_here:
            with Timed(steps, "prepare"):
                result = prepare(*result)
        with Timed(steps, "write"):
            write(result)

    end = object()
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgml-bulk")
    try:
        source = iter(chunks)
        while True:
            with Timed(steps, "read"):
                chunk = next(source, end)
            if chunk is end:
                break
            steps.chunks += 1
            pending.append(pool.submit(work, chunk))
            while pending and (pending[0].done() or len(pending) > MAX_PENDING):
                _write_next(pending, finish, steps, busy)
        while pending:
            _write_next(pending, finish, steps, busy)
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
    return steps


def _serial(chunks: Iterable, score: Callable, prepare: Callable, write: Callable,
            steps: Steps, threads: int) -> Steps:
    """The same steps one after another in this thread: read, score, prepare, write."""
    end = object()
    source = iter(chunks)
    while True:
        with Timed(steps, "read"):
            chunk = next(source, end)
        if chunk is end:
            return steps
        steps.chunks += 1
        with Timed(steps, "score"):
            scored = score(chunk, threads)
        with Timed(steps, "prepare"):
            prepared = prepare(chunk, scored)
        with Timed(steps, "write"):
            write(prepared)


def _write_next(pending: deque, finish: Callable, steps: Steps, busy: threading.Event) -> None:
    """Wait for the oldest chunk's worker (time counted as ``wait``; meanwhile the worker may
    take every thread), then finish it here."""
    future = pending.popleft()
    busy.clear()
    try:
        with Timed(steps, "wait"):
            result = future.result()
    finally:
        busy.set()
    finish(result)
