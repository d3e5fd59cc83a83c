"""Writing one run of a table into the target's open transaction: the statements, the stage.

Why apart from apply.py: how a run becomes statements (COPY BINARY for new rows, one
``DELETE ... = ANY($1)`` for deletes and the keys of full-row updates, whose new images are
COPYed in like new rows, the stage table and its set operations for the rest) is one
concern; the writer thread, the COMMIT pipeline and error translation around it
(apply.TargetWriter) are another. A ``RunWriter`` uses the connection only from whichever
thread TargetWriter lets write: it never waits on anything but its own statements.

Stage tables (``pg_temp.pgml_replica_stage_<relation id>``) live as long as the connection,
``ON COMMIT DELETE ROWS``; within one transaction a reused stage is truncated first.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from decoder import accel
from replica.errors import ApplyError, TransientError
from replica.stream.batch import DELETE, FRESH, UPDATE, TableBatch, encode
from replica.stream.statistics import analyze_if_stale
from replica.stream.tables import MirroredTable

# Up to this many row images, new rows also go through the stage (one COPY and one round
# trip in all); bigger runs COPY new rows straight into the table (no double write).
SMALL_RUN = 1000

# The target's element and array type per column; arrays of arrays (typarray 0) cannot.
_ARRAY_TYPES_SQL = (
    "SELECT a.attname, t.oid, t.typarray FROM pg_attribute a JOIN pg_type t ON t.oid ="
    " a.atttypid WHERE a.attrelid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON"
    " n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s) AND a.attnum > 0"
    " AND NOT a.attisdropped")
_ARRAY_CLASSES: dict[int, tuple[type, type]] = {}


def _array_class(array_oid: int) -> tuple[type, type]:
    """A bytes subclass whose values psycopg sends as-is, binary, typed ``array_oid``."""
    found = _ARRAY_CLASSES.get(array_oid)
    if found is None:
        cls = type(f"BinaryArray{array_oid}", (bytes,), {})
        dumper = type(f"BinaryArray{array_oid}Dumper", (Dumper,), {
            "oid": array_oid, "format": Format.BINARY, "dump": lambda self, obj: obj})
        found = _ARRAY_CLASSES[array_oid] = (cls, dumper)
    return found


class RunWriter:
    """Writes runs on one connection and knows which stage tables exist on it."""

    def __init__(self, conn: psycopg.Connection, skip_locked: bool = False) -> None:
        self.conn = conn
        self.skip_locked = skip_locked  # the main connection: see _multiset_delete
        self._stages_ready: set[int] = set()  # relation ids with a committed stage table
        self._stages_new: set[int] = set()  # created in the open transaction
        self._dirty: set[int] = set()  # stages holding rows in the open transaction
        self._array_oids: set[int] = set()  # array dumpers registered on this connection

    def forget(self, tw: MirroredTable) -> None:
        """The table's columns changed: its stage must be built again."""
        if tw.relation_id in self._stages_ready or tw.relation_id in self._stages_new:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tw.stage))
        self._stages_ready.discard(tw.relation_id)
        self._stages_new.discard(tw.relation_id)
        self._dirty.discard(tw.relation_id)
        tw._stmts.clear()
        tw.array_types = None

    def committed(self) -> None:
        """The open transaction committed: its new stage tables stay."""
        self._stages_ready |= self._stages_new
        self.reset()

    def rolled_back_to_savepoint(self) -> None:
        """Stage tables created since may be undone (``stage`` rebuilds them: DROP IF
        EXISTS); every stage may hold rows of the subtransaction: truncate first."""
        self._stages_new.clear()
        self._dirty = set(self._stages_ready)

    def reset(self) -> None:
        """The open transaction ended (committed or rolled back)."""
        self._stages_new.clear()
        self._dirty.clear()

    def write(self, tw: MirroredTable, b: TableBatch) -> int:
        """COPY into the stage (and, for a big run, new rows straight into the table), then
        every set operation in one round trip (a multi-statement without parameters)."""
        conn = self.conn
        if tw.layout.keyed:  # one pass over the run (compiled where it can be)
            fresh, deletes, updates, staged, patterns = b.split()
            if (deletes or updates) and not b.truncated:
                deletes, updates, replaced = self._write_arrays(tw, deletes, updates)
                fresh += replaced  # (split's own list) updated rows go in as new ones
            if deletes or updates:
                staged = [(DELETE, 0, r) for r in deletes] + [(UPDATE, 0, r) for r in updates] \
                    + staged
        else:
            staged, patterns = b.staged()
            fresh = b.fresh_rows()
        via_stage = bool(fresh) and len(fresh) + len(staged) <= SMALL_RUN
        rows = staged + [(FRESH, 0, r) for r in fresh] if via_stage else staged
        if rows:
            self.stage(tw, encode(rows, extra=True))
        stmts = [sql.SQL("TRUNCATE {}").format(tw.ident)] if b.truncated else []
        if staged and tw.layout.keyed:
            stmts.append(tw.stmt("delete"))
            stmts.append(tw.stmt("update"))
            stmts += [tw.stmt("patch", kinds, code) for kinds, code in patterns.items()]
        if via_stage:
            stmts.append(tw.stmt("insert_staged"))
        stmts = [st for st in stmts if st is not None]
        if stmts:
            conn.execute(sql.SQL("; ").join(stmts))
        if fresh and not via_stage:
            with conn.cursor().copy(tw.stmt("copy_table")) as cp:
                cp.write(encode(fresh))
        if staged and not tw.layout.keyed:  # after the inserts: a delete may match one
            self._multiset_delete(tw, staged)
        return len(staged) + len(fresh)

    def _write_arrays(self, tw: MirroredTable, deletes: list, updates: list
                      ) -> tuple[list, list, list]:
        """Deletes and full-row updates as one ``DELETE ... WHERE key = ANY($1)`` with binary
        array parameters instead of the stage. A full-row update replaces the row whole, so
        its key is deleted here with the deletes' and its new image COPYed in with the run's
        new rows (returned third): 1.3-1.6x the rows/s of ``UPDATE ... FROM unnest`` and a
        third less target CPU per row (benchmarks/update_forms.py; why that is the same for a
        mirror: docs/sidecar.md, Apply). An update whose key the target does not hold is
        dropped, as the UPDATE matched nothing. Returns the deletes and updates still for
        the stage (a key column's type cannot travel as an array) and the images to COPY."""
        types = self.array_types(tw)
        key_pos = tw.layout.key_pos
        if not all(types[i][1] for i in key_pos):
            return deletes, updates, []
        images = deletes + updates if deletes and updates else deletes or updates
        if updates or len(key_pos) > 1:  # (an unnest join, or rows that were UPDATEd before)
            analyze_if_stale(self.conn, tw, len(images))
        arrays = accel.column_arrays(images, key_pos, [types[i][0] for i in key_pos])
        params = [self.array_param(types[i], a) for i, a in zip(key_pos, arrays, strict=True)]
        if not updates:
            self.conn.execute(tw.stmt("delete_any"), params)
            return [], [], []
        cur = self.conn.cursor(binary=True)  # the keys found: read only when some were not
        if cur.execute(tw.stmt("replace_any"), params).rowcount != len(images):
            res = cur.pgresult
            found = {tuple(res.get_value(r, c) for c in range(len(key_pos)))
                     for r in range(res.ntuples)}
            updates = [raw for raw in updates if tuple(raw[i] for i in key_pos) in found]
        return [], [], updates

    def array_types(self, tw: MirroredTable) -> tuple[tuple[int, int], ...]:
        """The target's (element, array) type oids per column, looked up once per table
        (kept on ``tw``; (0, 0) for a column whose type has no array type)."""
        if tw.array_types is None:
            found = {name: (elem, arr) for name, elem, arr in self.conn.execute(
                _ARRAY_TYPES_SQL, (tw.schema, tw.name))}
            tw.array_types = tuple(found.get(c, (0, 0)) if found.get(c, (0, 0))[1] else (0, 0)
                                   for c in tw.layout.columns)
        return tw.array_types

    def array_param(self, types: tuple[int, int], data: bytes) -> bytes:
        """``data`` (a binary array of element type ``types[0]``) as a parameter psycopg
        sends as-is, typed ``types[1]``."""
        cls, dumper = _array_class(types[1])
        if types[1] not in self._array_oids:
            self.conn.adapters.register_dumper(cls, dumper)
            self._array_oids.add(types[1])
        return cls(data)

    def _multiset_delete(self, tw: MirroredTable, staged: list) -> None:
        """Delete n of each set of equal rows; fewer found means the target differs - or, with
        skip_locked, that a streamed transaction holds them: either way never go on wrong."""
        what = "multiset_delete_skip_locked" if self.skip_locked else "multiset_delete"
        deleted = self.conn.execute(tw.stmt(what)).rowcount
        wanted = sum(n for _, n, _ in staged)
        if deleted != wanted and self.skip_locked:
            raise TransientError(f"{tw.qualname}: {deleted} of {wanted} equal rows to delete "
                                 "were free (others are held by a streamed transaction); "
                                 "rolled back, replaying", "target")
        if deleted != wanted:
            raise ApplyError(f"{tw.qualname}: the target holds {deleted} of the {wanted} rows "
                             "the source deleted - it differs from the source; run with "
                             "--resnapshot")

    def stage(self, tw: MirroredTable, data: bytes) -> None:
        rid = tw.relation_id
        if rid not in self._stages_ready and rid not in self._stages_new:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tw.stage))
            self.conn.execute(tw.stmt("create_stage"))
            self._stages_new.add(rid)
        elif rid in self._dirty:
            self.conn.execute(sql.SQL("TRUNCATE {}").format(tw.stage))
        with self.conn.cursor().copy(tw.stmt("copy_stage")) as cp:
            cp.write(data)
        self._dirty.add(rid)
