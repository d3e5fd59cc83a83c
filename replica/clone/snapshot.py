"""The initial copy: every table read inside one exported snapshot, COPY BINARY source->target.

Why this shape:
- One snapshot for all tables, exported by the slot (or a temporary slot) at its consistent
  point, so the copy holds exactly the transactions that committed before the stream begins:
  nothing lost, nothing doubled (progress.py explains the rule that joins them).
- Binary COPY straight through: no parsing, Python only relays CopyData buffers.
- A table created here gets its primary key after the load: one index build instead of an
  index insert per row (what pgcopydb does too).
- Big tables are cut into ctid ranges so several workers share them; the last range is
  open-ended, so rows beyond the page count seen at planning time are not missed.
- A table counts as copied only when all its ranges are in and its ``tables`` row is written;
  after a crash the next run truncates and copies whatever is not marked.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from replica import metrics
from replica.clone.relay import relay_copy
from replica.connect import Watchdog, connect
from replica.errors import SnapshotInterrupted, translate
from replica.history import store as history_store
from replica.source.catalog import TableDef
from replica.state import SidecarState
from replica.target import progress, schema


@dataclass(frozen=True, slots=True)
class Chunk:
    table: TableDef
    lo: int | None = None  # first page; None = from the start
    hi: int | None = None  # first page after the range; None = to the end


def plan(tables: list[TableDef], chunk_pages: int) -> list[Chunk]:
    """Ranges of at most ``chunk_pages`` pages, biggest tables first (they finish last)."""
    chunks: list[Chunk] = []
    for t in sorted(tables, key=lambda t: t.pages, reverse=True):
        if t.relkind != "r" or t.pages <= chunk_pages:
            chunks.append(Chunk(t))
            continue
        starts = list(range(0, t.pages, chunk_pages))
        for i, lo in enumerate(starts):
            chunks.append(Chunk(t, lo or None, starts[i + 1] if i + 1 < len(starts) else None))
    return chunks


def copy_out(chunk: Chunk) -> sql.Composed:
    t = chunk.table
    cols = sql.SQL(", ").join(map(sql.Identifier, t.column_names))
    if chunk.lo is None and chunk.hi is None and not t.row_filter and t.relkind == "r":
        return sql.SQL("COPY {} ({}) TO STDOUT (FORMAT binary)").format(t.ident, cols)
    where = []
    if chunk.lo is not None:
        where.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({chunk.lo},0)")))
    if chunk.hi is not None:
        where.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({chunk.hi},0)")))
    if t.row_filter:  # the publication's own WHERE, from the source catalog
        where.append(sql.SQL("({})").format(sql.SQL(t.row_filter)))
    return sql.SQL("COPY (SELECT {} FROM {}{}{}) TO STDOUT (FORMAT binary)").format(
        cols, sql.SQL("ONLY ") if t.relkind == "r" else sql.SQL(""), t.ident,
        sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))


def copy_in(table: TableDef) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        table.ident, sql.SQL(", ").join(map(sql.Identifier, table.column_names)))


def prepare_target(conn: psycopg.Connection, table: TableDef, slot: str) -> bool:
    """Make the target table match and empty it; True when created here (key comes later)."""
    with conn.transaction():
        progress.unmark_synced(conn, slot, table.schema, table.name)
        current = schema.read_target(conn, table.schema, table.name)
        if current is None:
            schema.create_table(conn, table, with_key=False)
            return True
        conn.execute(sql.SQL("TRUNCATE {}").format(table.ident))  # first: a retype of
        d = schema.diff(current, list(table.columns))  # old rows could fail (a re-copy)
        if d:
            schema.apply_diff(conn, table.schema, table.name, d)
        if current.key != table.key:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                table.ident, sql.Identifier(f"{table.name}_pkey")))
        return current.key != table.key


def _rate(rows: int, started: float) -> dict[str, float]:
    """A table's copy rate since this copy began: what /status turns into rows/s and an ETA."""
    seconds = max(time.monotonic() - started, 1e-6)
    return {"seconds": round(seconds, 3), "rows_per_second": round(rows / seconds, 1)}


class Snapshot:
    """Copies tables in parallel inside one exported snapshot."""

    def __init__(self, source_dsn: str, target_dsn: str, *, slot: str, state: SidecarState,
                 workers: int = 2, chunk_pages: int = 8192,
                 stop: threading.Event | None = None, show_progress: bool | None = None,
                 history=None, watch: float | None = None):
        self.source_dsn, self.target_dsn, self.slot = source_dsn, target_dsn, slot
        self.watch = watch  # --receive-timeout: each connection's connect.Watchdog bound
        self.history = history  # replica.history.recorder.Recorder: seed versions at finish
        self.state, self.workers, self.chunk_pages = state, workers, chunk_pages
        self.stop = stop or threading.Event()
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        self._lock = threading.Lock()
        self._failed: BaseException | None = None

    def run(self, tables: list[TableDef], snapshot_name: str, sync_lsn: int
            ) -> dict[str, int]:
        """Copy ``tables`` as of ``snapshot_name``; mark each synced at ``sync_lsn``."""
        if not tables:
            return {}
        try:
            with connect(self.target_dsn, "target", "copy") as conn:
                self._watched(conn, self.target_dsn, "target")
                needs_key = {t.qualname: prepare_target(conn, t, self.slot) for t in tables}
        except psycopg.Error as exc:  # the watchdog cut it, or the target went away
            raise translate(exc, "target", "the initial copy") from exc
        chunks = plan(tables, self.chunk_pages)
        todo: queue.Queue[Chunk] = queue.Queue()
        for c in chunks:
            todo.put(c)
        remaining = {t.qualname: 0 for t in tables}
        for c in chunks:
            remaining[c.table.qualname] += 1
        rows = {t.qualname: 0 for t in tables}
        started = time.monotonic()
        for t in tables:
            # total is pg_class.reltuples until the table is done (then the rows copied):
            # labelled an estimate, and never shown below what is already copied
            self.state.snapshot[t.qualname] = {"rows": 0, "total": max(t.est_rows, 0),
                                               "total_is_estimate": True, "done": False,
                                               "seconds": 0.0, "rows_per_second": 0.0}
        ui = self._progress_ui(tables)

        def finish(conn: psycopg.Connection, table: TableDef) -> None:
            with conn.transaction():
                if needs_key[table.qualname]:
                    schema.add_key(conn, table)
                if self.history is not None and self.history.wants(table.qualname):
                    history_store.seed(conn, table.schema, table.name, table.column_names,
                                       list(table.key), sync_lsn, self.history.retention)
                progress.mark_synced(conn, self.slot, table.schema, table.name, sync_lsn,
                                     rows[table.qualname], table.filenode)
            conn.execute(sql.SQL("ANALYZE {}").format(table.ident))
            self.state.snapshot[table.qualname].update(
                rows=rows[table.qualname], total=rows[table.qualname], total_is_estimate=False,
                done=True, **_rate(rows[table.qualname], started))
            metrics.SNAPSHOT_PROGRESS.labels(table.qualname).set(1.0)

        def count(table: TableDef, n: int) -> None:
            with self._lock:
                rows[table.qualname] += n
                total = sum(rows.values())
            metrics.SNAPSHOT_ROWS.labels(table.qualname).inc(n)
            metrics.SNAPSHOT_ROWS_PER_SECOND.set(total / max(time.monotonic() - started, 1e-6))
            got = rows[table.qualname]
            entry = self.state.snapshot[table.qualname]
            entry.update(rows=got, total=max(entry["total"], got), **_rate(got, started))
            if table.est_rows:
                metrics.SNAPSHOT_PROGRESS.labels(table.qualname).set(
                    min(got / max(table.est_rows, got), 0.99))
            if ui is not None:
                ui[0].update(ui[1][table.qualname], completed=got)

        def worker() -> None:
            tgt = None
            try:
                with connect(self.source_dsn, "source", "copy", autocommit=False) as src, \
                        connect(self.target_dsn, "target", "copy") as tgt:
                    dog = self._watched(src, self.source_dsn, "source")
                    self._watched(tgt, self.target_dsn, "target")
                    src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                    src.read_only = True
                    src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                        sql.Literal(snapshot_name)))
                    tgt.execute("SET synchronous_commit = off")  # the final mark is synchronous
                    while not self.stop.is_set() and self._failed is None:
                        try:
                            chunk = todo.get_nowait()
                        except queue.Empty:
                            return
                        self._copy_chunk(src, tgt, chunk, count, dog and dog.moved)
                        with self._lock:
                            remaining[chunk.table.qualname] -= 1
                            last = remaining[chunk.table.qualname] == 0
                        if last:
                            tgt.execute("SET synchronous_commit = on")
                            finish(tgt, chunk.table)
                            tgt.execute("SET synchronous_commit = off")
            except psycopg.Error as exc:  # handed to the calling thread, classified
                lost = "target" if tgt is not None and tgt.broken else "source"
                with self._lock:
                    self._failed = self._failed or translate(exc, lost, "the initial copy")
            except BaseException as exc:
                with self._lock:
                    self._failed = self._failed or exc

        threads = [threading.Thread(target=worker, name=f"snapshot-{i}", daemon=True)
                   for i in range(min(self.workers, len(chunks)))]
        try:
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        finally:
            if ui is not None:
                ui[0].stop()
        if self._failed is not None:
            raise self._failed
        if self.stop.is_set() and any(remaining.values()):
            raise SnapshotInterrupted("stopped during the initial copy")
        metrics.SNAPSHOT_ROWS_PER_SECOND.set(sum(rows.values()) / max(
            time.monotonic() - started, 1e-6))
        return rows

    def _watched(self, conn: psycopg.Connection, dsn: str, peer: str) -> Watchdog | None:
        """A path that accepts bytes but never answers would hold the copy without end
        (keepalives and tcp_user_timeout see nothing wrong): the watchdog asks the server over
        a new session once a wait lasts ``watch`` and cuts only a backend that is idle, gone
        or unreachable - never one working ('active': a COPY TO sending into a slow sidecar,
        a COPY FROM waiting for the sidecar's next rows, a lock wait)."""
        return Watchdog(conn, dsn, peer, self.watch) if self.watch else None

    def _copy_chunk(self, src: psycopg.Connection, tgt: psycopg.Connection, chunk: Chunk,
                    count: Callable[[TableDef, int], None],
                    moved: Callable[[], None] | None = None) -> None:
        reported = 0
        with tgt.transaction(), tgt.cursor() as tcur:
            with tcur.copy(copy_in(chunk.table)) as cout:
                for rows in relay_copy(src, copy_out(chunk).as_bytes(src), cout,
                                       moved=moved):
                    count(chunk.table, rows - reported)
                    reported = rows
                    if self.stop.is_set():
                        raise SnapshotInterrupted("stopped during the initial copy")

    def _progress_ui(self, tables: list[TableDef]):
        if not self.show_progress:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        ui = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("rows"), transient=False)
        ids = {t.qualname: ui.add_task(t.qualname, total=t.est_rows or None) for t in tables}
        ui.start()
        return ui, ids
