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

from psycopg import sql

from decoder import accel
from replica.stream.batch import TableBatch
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


def plan(writer, tw: MirroredTable, b: TableBatch) -> list[tuple[sql.Composable, list]] | None:
    """The run's statements with their parameters, or None: written the ordinary way. Runs
    queries of its own (the array types once, the statistics check): before the pipeline.

    Full-row updates are one ``update_any``, not the ordinary path's delete + COPY: a
    pipeline cannot COPY, and as one statement (``WITH d AS (DELETE ...) INSERT``) the
    statement-level AFTER triggers of a materialized exposure (sql/30_expose.sql) got a
    DELETE and an INSERT of the same keys in an order the plan decided - the DELETE's
    removal could land after the INSERT's scoring, the predictions lost. An UPDATE fires
    the UPDATE trigger, which rescores the rows; an update of a key the target does not
    hold changes nothing, as in runs.RunWriter."""
    conn = writer.conn
    types = writer.runs.array_types(tw)
    if not all(arr for _, arr in types):
        return None
    fresh, deletes, updates, staged, patterns = b.split()
    if staged or patterns:
        return None
    key_pos, every = tw.layout.key_pos, range(len(types))

    def arrays(images: list, positions) -> list:
        data = accel.column_arrays(images, positions, [types[i][0] for i in positions])
        return [writer.runs.array_param(types[i], a)
                for i, a in zip(positions, data, strict=True)]

    stmts: list[tuple[sql.Composable, list]] = []
    if deletes or updates:
        if updates or len(key_pos) > 1:  # an unnest join: the planner's statistics matter
            analyze_if_stale(conn, tw, len(deletes) + len(updates))
        if deletes:
            stmts.append((tw.stmt("delete_any"), arrays(deletes, key_pos)))
        update = tw.stmt("update_any") if updates else None
        if update is not None:
            stmts.append((update, arrays(updates, every)))
    if fresh:
        stmts.append((tw.stmt("insert_any"), arrays(fresh, every)))
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
    with writer.target_errors([tw for tw, _, _ in planned], " at commit"), conn.pipeline():
        for _, _, stmts in planned:
            for stmt, params in stmts:
                conn.execute(stmt, params)
        conn.execute(progress.advance_sql(writer.slot, end_lsn, commit_time))
        conn.execute("COMMIT")
    for tw, b, _ in planned:
        writer._count(tw, b.ops)
        b.ops = [0, 0, 0, 0]
        b.clear()
    writer.busy_seconds += time.perf_counter() - t0
