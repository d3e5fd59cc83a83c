"""Relaying a COPY ... TO STDOUT from one server into a COPY ... FROM STDIN on another.

Why its own module: it works at psycopg's ``pq`` level (see ``relay_copy``) with a wait loop of
its own - protocol plumbing that the snapshot's planning and bookkeeping need not see.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator

import psycopg
from psycopg import pq


def relay_copy(src: psycopg.Connection, query: bytes, cout: psycopg.Copy,
              chunk_bytes: int = 256 * 1024, moved: Callable[[], None] | None = None
              ) -> Iterator[int]:
    """Run COPY ... TO STDOUT on ``src`` and write its data to ``cout`` in big pieces,
    yielding the rows seen so far now and then (the exact count last).

    Why at the ``pq`` level: the server sends one CopyData message per row and psycopg's
    ``Copy`` iterator costs a generator round per row; reading with ``get_copy_data`` and
    waiting with ``select`` ourselves relays the same bytes about three times faster
    (measured: 1M rows 1.75 s -> 0.6 s), and the waiting still frees the GIL.

    ``src.lock`` is held exactly while this waits on the source - not while ``cout.write``
    waits on the target or the caller holds a yield: that is what a ``connect.Watchdog`` on
    ``src`` watches (psycopg's own calls hold it the same way), so a source that stops
    answering mid-COPY is cut, and a source waiting on a slow target is not (its backend may
    already be idle, everything sent, while the sidecar still writes the tail). ``moved``
    (``Watchdog.moved``) is told whenever bytes arrive: a slow path that still delivers what
    an idle backend sent is not a stuck one.
    """
    pg = src.pgconn
    fd = pg.socket
    waiting = _Holding(src.lock)
    try:
        waiting.hold()
        pg.send_query(query)
        res = wait_result(pg, fd)
        if res.status != pq.ExecStatus.COPY_OUT:
            drain(pg, fd)
            raise psycopg.errors.error_from_result(res, encoding=src.info.encoding)
        parts: list = []
        size = rows = 0
        while True:
            nbytes, data = pg.get_copy_data(1)
            if nbytes > 0:
                parts.append(data)
                size += nbytes
                rows += 1
                if size >= chunk_bytes:
                    waiting.release()
                    cout.write(b"".join(parts))
                    parts.clear()
                    size = 0
                    yield rows - 1  # at most: the trailer is a message of its own
            elif nbytes == 0:
                waiting.hold()
                if select.select([fd], [], [], 1.0)[0] and moved is not None:
                    moved()
                pg.consume_input()
            elif nbytes == -1:
                break
            else:
                raise psycopg.OperationalError(pg.error_message.decode(errors="replace"))
        waiting.release()
        cout.write(b"".join(parts))
        waiting.hold()
        res = wait_result(pg, fd)
        drain(pg, fd)
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(res, encoding=src.info.encoding)
    finally:
        waiting.release()
    yield int(res.command_tuples or 0)  # "COPY n": exact


class _Holding:
    """A lock taken once however often ``hold`` is called, until ``release``."""

    def __init__(self, lock) -> None:
        self.lock, self.held = lock, False

    def hold(self) -> None:
        if not self.held:
            self.lock.acquire()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.lock.release()
            self.held = False


def wait_result(pg: pq.abc.PGconn, fd: int) -> pq.abc.PGresult:
    while True:
        pg.consume_input()
        if not pg.is_busy():
            res = pg.get_result()
            if res is None:
                raise psycopg.OperationalError("the server sent no result")
            return res
        select.select([fd], [], [], 1.0)


def drain(pg: pq.abc.PGconn, fd: int) -> None:
    while True:
        pg.consume_input()
        if pg.is_busy():
            select.select([fd], [], [], 1.0)
        elif pg.get_result() is None:
            return
