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
- A table copied by one session is written with COPY FREEZE (``_copy_chunk`` says why).
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
from replica.clone import steps
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


#: a table of at least this many pages per worker is split so every worker gets a share,
#: even below ``chunk_pages`` (a lone table of 400k rows is ~5,000 pages: one chunk, one
#: worker busy, the others idle); smaller ones are not worth a range scan's overhead
SPLIT_MIN_PAGES = 1024


def plan(tables: list[TableDef], chunk_pages: int, workers: int = 1) -> list[Chunk]:
    """Ranges of at most ``chunk_pages`` pages, biggest tables first (they finish last);
    with several ``workers``, a big table has at least one range per worker."""
    chunks: list[Chunk] = []
    for t in sorted(tables, key=lambda t: t.pages, reverse=True):
        step = chunk_pages
        if workers > 1 and t.pages >= SPLIT_MIN_PAGES * workers:
            step = min(step, -(-t.pages // workers))
        if t.relkind != "r" or t.pages <= step:
            chunks.append(Chunk(t))
            continue
        starts = list(range(0, t.pages, step))
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


def copy_in(table: TableDef, freeze: bool = False) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary{})").format(
        table.ident, sql.SQL(", ").join(map(sql.Identifier, table.column_names)),
        sql.SQL(", FREEZE") if freeze else sql.SQL(""))


#: bytes the relay gathers from the source before each write to the target (1 MB was no
#: faster, with the pure relay (~0.3 us a row) and the compiled one (~0.1 us): 1M rows 0.80
#: vs 0.91 s, median of 5, load ~4.8; issue 14)
RELAY_BYTES = 256 * 1024


#: maintenance_work_mem the key build asks for per copied row, and at most (kB). Why: the key
#: is built after the load, and its sort spills to disk above the server's setting (64 MB by
#: default: ~1M rows); trace_sort shows a bigint key of 4M rows sorting in memory in 254 MB
#: (~64 bytes a row, 96 leaves room for wider keys). The setting is local to the key's
#: transaction, never below the server's own, and the cap bounds what a huge table asks for.
KEY_SORT_BYTES_PER_ROW, KEY_SORT_MAX_KB = 96, 1024 * 1024


def key_sort_memory(conn: psycopg.Connection, rows: int) -> None:
    """Let the key build of a table of ``rows`` rows sort in memory (issue 14: the key was
    1.05 s of a fresh 4M-row replica's 4.7 s); for the current transaction only."""
    kb = min(KEY_SORT_MAX_KB, rows * KEY_SORT_BYTES_PER_ROW // 1024)
    conn.execute("SELECT set_config('maintenance_work_mem', greatest(pg_size_bytes("
                 "current_setting('maintenance_work_mem')) / 1024, %s)::text || 'kB', true)",
                 (kb,))


def prepare_target(conn: psycopg.Connection, table: TableDef, slot: str) -> bool:
    """Make the target table match and empty it; True when created here (key comes later)."""
    with conn.transaction():
        progress.unmark_synced(conn, slot, table.schema, table.name)
        current = schema.read_target(conn, table.schema, table.name)
        if current is None:  # key after the load: a fresh 400k-row copy into a keyed
            schema.create_table(conn, table, with_key=False)  # table took 0.63 s, this
            return True  # 0.41 s + 0.13 s for the key (issue 14, same run)
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
        self._early: list[threading.Thread] = []  # prepare_early's threads
        self._early_error: BaseException | None = None
        self._needs_key: dict[str, bool] | None = None
        self._spare: list[tuple] = []  # (src, its watchdog, tgt) opened ahead of the snapshot

    def prepare_early(self, tables: list[TableDef]) -> None:
        """Start the target's side of the copy in threads now, before the snapshot exists:
        the tables made to match and emptied, each worker's connections opened (in
        parallel: a worker connecting later would wait for the GIL behind the first one's
        relay). Why: the slot's creation waits on the source (for its open transactions,
        then for its snapshot), and none of this needs the snapshot; ``run`` waits for it,
        ``close`` ends it. Issue 14: a fresh replica is measured from process start."""
        if not tables:
            return
        streams = min(self.workers, len(plan(tables, self.chunk_pages, self.workers)))

        def work(job: Callable[[], None]) -> None:
            try:
                job()
            except BaseException as exc:  # handed to run(), which raises it
                with self._lock:
                    self._early_error = self._early_error or exc

        def spare() -> None:
            pair = self._new_pair()
            with self._lock:
                self._spare.append(pair)

        jobs = [lambda: self._prepare(tables)] + [spare] * (streams - 1)
        self._early = [threading.Thread(target=work, args=(job,), name=f"copy-prepare-{i}",
                                        daemon=True) for i, job in enumerate(jobs)]
        for th in self._early:
            th.start()

    def _prepare(self, tables: list[TableDef]) -> None:
        tgt = self._target()
        try:
            try:
                self._needs_key = {t.qualname: prepare_target(tgt, t, self.slot)
                                   for t in tables}
            except psycopg.Error as exc:  # the watchdog cut it, or the target went away
                raise translate(exc, "target", "the initial copy") from exc
            steps.mark("copy_target_prepared")
            src, dog = self._source()
        except BaseException:
            tgt.close()
            raise
        with self._lock:
            self._spare.append((src, dog, tgt))  # the copy's connection pair, snapshot aside

    def _target(self) -> psycopg.Connection:
        tgt = connect(self.target_dsn, "target", "copy")
        try:
            self._watched(tgt, self.target_dsn, "target")
            tgt.execute("SET synchronous_commit = off")  # the final mark is synchronous
        except psycopg.Error as exc:  # the watchdog cut it, or the target went away
            tgt.close()
            raise translate(exc, "target", "the initial copy") from exc
        return tgt

    def _source(self) -> tuple[psycopg.Connection, Watchdog | None]:
        src = connect(self.source_dsn, "source", "copy", autocommit=False)
        dog = self._watched(src, self.source_dsn, "source")
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        src.read_only = True
        return src, dog

    def _pair(self) -> tuple[psycopg.Connection, Watchdog | None, psycopg.Connection]:
        """A worker's (source, its watchdog, target): one opened ahead, or new ones."""
        with self._lock:
            if self._spare:
                return self._spare.pop()
        return self._new_pair()

    def _new_pair(self) -> tuple[psycopg.Connection, Watchdog | None, psycopg.Connection]:
        src, dog = self._source()
        try:
            return src, dog, self._target()
        except BaseException:
            src.close()
            raise

    def _wait_early(self) -> None:
        for th in self._early:
            th.join()
        self._early = []
        if self._early_error is not None:
            raise self._early_error

    def close(self) -> None:
        """End what ``prepare_early`` started and close connections no worker took."""
        for th in self._early:
            th.join()
        self._early = []
        with self._lock:
            spare, self._spare = self._spare, []
        for src, _, tgt in spare:
            src.close()
            tgt.close()

    def run(self, tables: list[TableDef], snapshot_name: str, sync_lsn: int
            ) -> dict[str, int]:
        """Copy ``tables`` as of ``snapshot_name``; mark each synced at ``sync_lsn``."""
        if not tables:
            return {}
        try:
            self._wait_early()
            if self._needs_key is None:
                self._prepare(tables)
            needs_key = self._needs_key
            return self._run(tables, needs_key, snapshot_name, sync_lsn)
        finally:
            self.close()

    def _run(self, tables: list[TableDef], needs_key: dict[str, bool], snapshot_name: str,
             sync_lsn: int) -> dict[str, int]:
        chunks = plan(tables, self.chunk_pages, self.workers)
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
                    if table.key:
                        key_sort_memory(conn, rows[table.qualname])
                    schema.add_key(conn, table)
                    steps.mark("keyed")
                if self.history is not None and self.history.wants(table.qualname):
                    history_store.seed(conn, table.schema, table.name, table.column_names,
                                       list(table.key), sync_lsn, self.history.retention)
                progress.mark_synced(conn, self.slot, table.schema, table.name, sync_lsn,
                                     rows[table.qualname], table.filenode)
            steps.mark("synced")
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
                src, dog, tgt = self._pair()
                with src, tgt:
                    src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                        sql.Literal(snapshot_name)))
                    steps.mark("copy_connected")
                    while not self.stop.is_set() and self._failed is None:
                        try:
                            chunk = todo.get_nowait()
                        except queue.Empty:
                            return
                        self._copy_chunk(src, tgt, chunk, count, dog and dog.moved)
                        steps.mark("chunk_copied")
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
        # a whole table in one session is written frozen: COPY FREEZE needs the table
        # truncated (or created) in its own transaction - it is empty already (prepare_target)
        # and no other session copies into it. Why: the key's build and ANALYZE then set no
        # hint bits, and the table never needs an anti-wraparound rewrite (400k rows: copy +
        # key 0.68 -> 0.64 s, median of 7, interleaved, load ~6.6; issue 14)
        whole = chunk.lo is None and chunk.hi is None
        with tgt.transaction(), tgt.cursor() as tcur:
            if whole:
                tcur.execute(sql.SQL("TRUNCATE {}").format(chunk.table.ident))
            with tcur.copy(copy_in(chunk.table, freeze=whole)) as cout:
                for rows in relay_copy(src, copy_out(chunk).as_bytes(src), cout,
                                       chunk_bytes=RELAY_BYTES, moved=moved):
                    if not reported:
                        steps.mark("first_rows")
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
