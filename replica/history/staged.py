"""Versions of a streamed transaction (protocol 2), stamped with its commit at Stream Commit.

Why a stage: a transaction streamed while it runs has no commit time and no commit LSN until
its Stream Commit, yet its changes are applied as they arrive (stream/inflight.py), and its
versions may outgrow memory as its changes do. So the rows the ordinary recorder builds go,
as they come, into a temporary table of the streamed transaction's own target transaction
(``ON COMMIT DROP``; no WAL), with zero for time and LSN; at Stream Commit one
``INSERT ... SELECT`` moves them into the history table with the commit's time and LSN, just
before the progress row commits (recorder.py's invariant). What the target undoes the
history loses with it: ``ROLLBACK TO SAVEPOINT`` of an aborted subtransaction removes its
staged rows (and may remove a stage made after the savepoint: made again when needed, and
only the stages that exist at commit are read), Stream Abort rolls the whole stage back.

The history tables are touched only at commit: the main target transaction may be writing
them at any time before, and a streamed transaction must not hold a lock it waits for (the
stream commits that one first, then this).
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import sql

from replica.history import store
from replica.history.recorder import Recorder

_STAGE = "pgml_history_stage_"


class StagedRecorder(Recorder):
    """The versions of one streamed transaction."""

    def __init__(self, tables, retention) -> None:
        super().__init__(tables, retention)
        self._stages: dict[tuple[int, tuple], tuple[str, object]] = {}  # -> (name, tw)
        self._commit: tuple[int, datetime] | None = None
        self._made: set[str] = set()  # stages made in this transaction (and not undone)
        self._staged_bytes = 0
        self.reports = False  # the stream's own recorder reads the sizes
        self.counts_copies = False  # staged rows count when they reach the history table

    def stamp(self, commit_lsn: int, commit_time: datetime) -> None:
        """The Stream Commit's LSN and time: what ``write`` puts on every version."""
        self._commit = (commit_lsn, commit_time)

    def _copy(self, conn: psycopg.Connection, tw, data: bytes) -> int:
        key = (tw.relation_id, tw.layout.columns)
        found = self._stages.get(key)
        if found is None:
            found = self._stages[key] = (f"{_STAGE}{len(self._stages)}", tw)
        stage = sql.Identifier(found[0])
        cols = sql.SQL(", ").join(map(sql.Identifier, tw.layout.columns))
        meta = sql.SQL(", ").join(
            sql.SQL("NULL::{} AS {}").format(sql.SQL(t), sql.Identifier(n))
            for n, t in zip(store.META, store.META_TYPES, strict=True))
        if found[0] not in self._made:
            conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DROP AS SELECT"
                                 " {}, {} FROM {} WITH NO DATA").format(
                stage, cols, meta, sql.Identifier(tw.schema, tw.name)))
            self._made.add(found[0])
        target = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(stage)
        size = self._write_rows(conn, target, data)
        self._staged_bytes += size
        return size

    def write(self, conn: psycopg.Connection) -> int:
        """At Stream Commit: the rest into the stages, then every stage that still exists
        into its history table, stamped with the commit; return how many versions."""
        self._write(conn, self._taken(), self._gen)
        if not self._stages:
            return 0
        if self._commit is None:
            raise RuntimeError("a streamed transaction's history written before its commit")
        lsn, when = self._commit
        have = {r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
            " AND relname LIKE %s", (_STAGE + "%",))}
        staged = self._staged_bytes
        n = 0
        moved: dict[str, int] = {}
        for name, tw in self._stages.values():
            if name not in have:
                continue
            self._ensure(conn, tw)
            cols = sql.SQL(", ").join(map(sql.Identifier, tw.layout.columns))
            cur = conn.execute(sql.SQL(
                "INSERT INTO {} ({}, {}) SELECT {}, %s, %s::pg_lsn, _pgml_seq, _pgml_op,"
                " _pgml_unchanged FROM {}").format(
                sql.Identifier(store.SCHEMA, store.history_name(tw.schema, tw.name)), cols,
                sql.SQL(", ").join(map(sql.Identifier, store.META)), cols,
                sql.Identifier(name)),
                (when, f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"))
            moved[tw.qualname] = moved.get(tw.qualname, 0) + cur.rowcount
            n += cur.rowcount
        rows = sum(moved.values()) or 1
        for qualname, k in moved.items():  # bytes: the staged COPY's, shared out by rows
            pending = self._pending.setdefault(qualname, [0, 0])
            pending[0] += k
            pending[1] += staged * k // rows
        self._stages.clear()
        self.versions += n
        return n

    def clear(self) -> None:
        """A subtransaction rolled back: its rows go, and a stage made after its savepoint
        with them (made again, IF NOT EXISTS, at the next write)."""
        super().clear()
        self._made.clear()

    def forget(self) -> None:
        super().forget()
        self._made.clear()
        self._stages.clear()
        self._staged_bytes = 0
