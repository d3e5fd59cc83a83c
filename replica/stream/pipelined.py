"""A small batch written and committed in one round trip: psycopg's pipeline mode.

Why: at a light load (the lag benchmark: 100 source transactions a second, 50 rows each) a
batch is one transaction, and the ordinary path spends about eight target round trips on it
(the key DELETE, a COPY into each table's stage - two trips each - the INSERT from each
stage, the progress row with the COMMIT). Each trip wakes the target backend and the
writer's thread; on two shared cores under load every wake-up waits for a core, and the
batch's time is the sum of those waits. Measured on the lag benchmark's batch shape (load
~4.4, 300 batches, 3 interleaved rounds): 5.2 ms p50 / 15-30 ms p99 with those statements,
1.2 ms / 8-11 ms as one pipeline. Native's apply worker has no round trip at all.

What goes in the pipeline: every statement with parameters (COPY cannot be pipelined, so
new rows travel as binary arrays through ``INSERT ... SELECT FROM unnest``), then the
progress row and the COMMIT - one Sync, one round trip. A run it cannot write that way (no
key, a TRUNCATE, unchanged TOAST values to keep, a column type without an array type) is
written the ordinary way first (``TargetWriter._flush``), in the same transaction.

Exactly once (DESIGN.md invariant 1) holds as before: the progress row and the COMMIT are
in the same transaction as the rows; an error anywhere aborts the pipeline before the
COMMIT runs, and the writer reports the batch failed (nothing acknowledged; the stream rolls
back and the source sends it again).
"""

from __future__ import annotations

import time
from datetime import datetime

import psycopg
from psycopg import sql

from decoder import accel
from replica.errors import ApplyError, NullRejected, TransientError
from replica.stream.batch import TableBatch
from replica.stream.runs import _ARRAY_TYPES_SQL
from replica.stream.statistics import analyze_if_stale
from replica.stream.tables import MirroredTable
from replica.target import progress

SMALL_BATCH = 1000  # row images: bigger batches are bound by rows, not round trips


def eligible(tw: MirroredTable, b: TableBatch) -> bool:
    """Can the run go into a pipeline? (The stream's thread asks; cheap.) A column type
    without an array type is found out in the writer's thread, once per table."""
    return (tw.layout.keyed and not b.truncated
            and (tw.array_types is None or all(arr for _, arr in tw.array_types)))


def take_small(dirty: dict[int, MirroredTable], rows: int
               ) -> list[tuple[MirroredTable, TableBatch]] | None:
    """A light load's batch - ``rows`` at most SMALL_BATCH, every run one a pipeline can
    write - taken out of the tables' hands as (table, run) pairs, ``dirty`` emptied; None
    (nothing taken) for the ordinary way."""
    if not dirty or rows > SMALL_BATCH \
            or not all(eligible(tw, tw.batch) for tw in dirty.values()):
        return None
    runs = []
    for tw in dirty.values():
        b, tw.batch = tw.batch, TableBatch(tw.layout)
        runs.append((tw, b))
    dirty.clear()
    return runs


def _types(conn: psycopg.Connection, tw: MirroredTable) -> tuple:
    """The target's (element, array) type per column, as runs.RunWriter keeps them."""
    if tw.array_types is None:
        found = {name: (elem, arr) for name, elem, arr in conn.execute(
            _ARRAY_TYPES_SQL, (tw.schema, tw.name))}
        tw.array_types = tuple(found.get(c, (0, 0)) if found.get(c, (0, 0))[1] else (0, 0)
                               for c in tw.layout.columns)
    return tw.array_types


def _insert(tw: MirroredTable, where: sql.Composable | None = None) -> sql.Composable:
    """INSERT the rows of one binary array per column (``where`` filters them)."""
    cols = sql.SQL(", ").join(map(sql.Identifier, tw.layout.columns))
    s = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u ({})").format(
        tw.ident, cols, sql.SQL(", ").join(sql.Identifier("u", c) for c in tw.layout.columns),
        sql.SQL(", ").join(sql.SQL("%b") for _ in tw.layout.columns), cols)
    return s if where is None else s + sql.SQL(" WHERE ") + where


def _update(tw: MirroredTable) -> sql.Composable | None:
    """An UPDATE of the run's full-row updates from one binary array per column, matched on
    the key: an update of a key the target does not hold changes nothing, as in
    runs.RunWriter. None when every column is a key column (nothing to set).

    Why an UPDATE and not the ordinary path's delete-and-insert: in one statement (a
    ``WITH d AS (DELETE ...) INSERT``) the statement-level AFTER triggers of a materialized
    exposure (sql/30_expose.sql) get a DELETE and an INSERT of the same keys in an order the
    plan decides, and the DELETE's removal could land after the INSERT's scoring (the
    predictions lost); an UPDATE fires the UPDATE trigger, which rescores the rows."""
    keys = [tw.layout.columns[i] for i in tw.layout.key_pos]
    rest = [c for c in tw.layout.columns if c not in keys]
    if not rest:
        return None
    cols = sql.SQL(", ").join(map(sql.Identifier, tw.layout.columns))
    return sql.SQL("UPDATE {} AS t SET {} FROM unnest({}) AS u ({}) WHERE {}").format(
        tw.ident,
        sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("u", c))
                           for c in rest),
        sql.SQL(", ").join(sql.SQL("%b") for _ in tw.layout.columns), cols,
        sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier("t", k),
                                                        sql.Identifier("u", k))
                              for k in keys))


def plan(writer, tw: MirroredTable, b: TableBatch) -> list[tuple[sql.Composable, list]] | None:
    """The run's statements with their parameters, or None: written the ordinary way. Runs
    queries of its own (the array types once, the statistics check): before the pipeline."""
    conn = writer.conn
    types = _types(conn, tw)
    if not all(arr for _, arr in types):
        return None
    fresh, deletes, updates, staged, patterns = b.split()
    if staged or patterns:
        return None
    key_pos, every = tw.layout.key_pos, range(len(types))

    def arrays(images: list, positions) -> list:
        data = accel.column_arrays(images, positions, [types[i][0] for i in positions])
        return [writer.runs._array(types[i], a) for i, a in zip(positions, data, strict=True)]

    stmts: list[tuple[sql.Composable, list]] = []
    if deletes or updates:
        if updates or len(key_pos) > 1:  # an unnest join: the planner's statistics matter
            analyze_if_stale(conn, tw, len(deletes) + len(updates))
        if deletes:
            stmts.append((tw.stmt("delete_any"), arrays(deletes, key_pos)))
        update = _update(tw) if updates else None
        if update is not None:
            stmts.append((update, arrays(updates, every)))
    if fresh:
        stmts.append((_insert(tw), arrays(fresh, every)))
    return stmts


def commit(writer, runs: list[tuple[MirroredTable, TableBatch]], end_lsn: int,
           commit_time: datetime | None) -> None:
    """Write ``runs`` and commit with the progress row, in the writer's thread: the runs a
    pipeline cannot take first, the ordinary way, then one pipeline for the rest."""
    conn = writer.conn
    planned = []
    for tw, b in runs:
        stmts = plan(writer, tw, b)
        if stmts is None:
            writer._flush(tw, b)
        else:
            planned.append((tw, b, stmts))
    t0 = time.perf_counter()
    try:
        with conn.pipeline():
            for _, _, stmts in planned:
                for stmt, params in stmts:
                    conn.execute(stmt, params)
            conn.execute(progress.advance_sql(writer.slot, end_lsn, commit_time))
            conn.execute("COMMIT")
    except psycopg.errors.LockNotAvailable as exc:
        raise TransientError("a write to the target waited past lock_timeout for a lock; "
                             "rolled back, replaying", "target") from exc
    except psycopg.OperationalError as exc:
        raise TransientError(f"target connection lost at commit: {exc}", "target") from exc
    except psycopg.errors.NotNullViolation as exc:
        d = exc.diag  # (the server names the table: the runner relaxes that column)
        tw = next((t for t, _, _ in planned if t.name == d.table_name), planned[0][0])
        raise NullRejected(d.schema_name or tw.schema, d.table_name or tw.name,
                           d.column_name or "", f"the target rejected a NULL in "
                           f"{tw.qualname}: {d.message_primary}") from exc
    except psycopg.Error as exc:
        where = f" ({exc.diag.table_name})" if exc.diag.table_name else ""
        raise ApplyError(f"the target rejected the batch's changes{where}: "
                         f"{exc.diag.message_primary or exc}") from exc
    for tw, b, _ in planned:
        writer._count(tw, b.ops)
        b.ops = [0, 0, 0, 0]
        b.clear()
    writer.busy_seconds += time.perf_counter() - t0
