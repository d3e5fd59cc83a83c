"""pgml.history_compact: old versions out of Postgres into one immutable Parquet segment.

Why this shape: the sidecar only appends to ``pgml_history."<schema>__<table>"`` (cheap,
exactly once with the data); reading many millions of rows back through plpy is the slow part
of a point-in-time join, and DuckDB reads Parquet at columnar speed. So, in one transaction of
the caller:

1. L = the newest commit LSN among versions committed longer than ``older_than`` ago.
2. DuckDB (in this backend) reads the current segment and the table's rows (history.load:
   unchanged TOAST values filled), drops versions replaced before ``now() - retention``
   (the table's retention, from the sidecar's --history-retention) and writes every version
   up to L, sorted by key and version order, with their ordered times (``_tm``: readers then
   sort only the rows still in Postgres), to ``<dir>/<schema>__<table>/<from>-<to>.parquet``
   (named by LSN range, never written again).
3. The rows up to L are deleted from the table and the segment replaces the old one in
   ``pgml_history.segments`` - in the same transaction: a rollback leaves the old segment in
   force and the new file unreferenced (removed by a later compaction after an hour).

One segment per table: each compaction rewrites the old segment with the new rows (simple and
bounded by the table's retained history; merging many small segments is then never needed).
``<dir>`` is pgml.settings 'history_dir', else ``pgml_history`` in the data directory. The
segment files are not WAL-logged: a physical standby sees the versions still in Postgres and
the segment catalog, not the files (copy the directory, or compact less often; docs/history.md).
"""

from __future__ import annotations

import os
import time

import plpy

from inference.errors import PgmlError
from inference.history import _NEXT_TRUNCATE, History, _duck, _duck_ident, _duck_literal
from inference.history_io import Transfer

GARBAGE_SECONDS = 3600


def _directory() -> str:
    rows = plpy.execute("SELECT value #>> '{}' AS v FROM pgml.settings WHERE name = 'history_dir'")
    if rows.nrows() and rows[0]["v"]:
        return rows[0]["v"]
    return os.path.join(plpy.execute("SELECT current_setting('data_directory') AS d")[0]["d"],
                        "pgml_history")


def compact(relation_name: str | None, older_than) -> list[tuple]:
    """(relation, versions moved out of Postgres, segment path, segment bytes) per table."""
    if not plpy.execute("SELECT to_regclass('pgml_history.tables') IS NOT NULL AS x")[0]["x"]:
        return []
    names = [relation_name] if relation_name else [r["relation_name"] for r in plpy.execute(
        "SELECT relation_name FROM pgml_history.tables ORDER BY 1")]
    out = []
    for name in names:
        h = History(name)
        out.append(_compact_one(h, older_than or "0"))
    return out


def _compact_one(h: History, older_than) -> tuple:
    row = plpy.execute(plpy.prepare(
        f"SELECT max(_pgml_commit_lsn)::text AS l, (max(_pgml_commit_lsn) - '0/0')::int8 AS n,"  # noqa: S608
        f" count(*) AS c FROM {h.table} WHERE _pgml_commit_time < now() - $1::interval",
        ["interval"]), [older_than])[0]
    meta = plpy.execute(plpy.prepare(
        "SELECT (extract(epoch FROM now() - t.retention) * 1000000)::int8 AS cut,"
        " (extract(epoch FROM now()) * 1000000)::int8 AS now, s.lsn_to::text AS l,"
        " (s.lsn_to - '0/0')::int8 AS n FROM pgml_history.tables t LEFT JOIN"
        " pgml_history.segments s USING (relation_name) WHERE t.relation_name = $1",
        ["text"]), [h.relation_name])[0]
    if row["l"] is None:  # nothing new to move: only retention may still apply
        if meta["l"] is None or meta["cut"] is None:
            return (h.relation_name, 0, None, 0)
        row = meta
    lsn_to, upto = row["l"], row["n"]
    con = _duck()
    with Transfer() as io:
        h.load(con, "v", io)
    names = [c for c, _ in h.columns]
    keyc = ", ".join(f"c{names.index(k)}" for k in h.keys)
    keep = "true"
    if meta["cut"] is not None:  # replaced (by the key's next version or a truncate) before cut
        con.execute(
            "CREATE TEMP TABLE vr AS SELECT v.*, least(lead(_t) OVER (PARTITION BY"  # noqa: S608
            f" {keyc} ORDER BY _ord), {_NEXT_TRUNCATE}) AS _replaced FROM v")
        keep = f"(_op = 'T' OR _replaced IS NULL OR _replaced >= {int(meta['cut'])})"
    else:
        con.execute("CREATE TEMP TABLE vr AS SELECT * FROM v")
    directory = os.path.join(_directory(), h.history_table)
    os.makedirs(directory, exist_ok=True)
    _collect_garbage(directory, h.segments())
    (lsn_from,) = con.execute(f"SELECT min(_lsn) FROM vr WHERE _lsn <= {upto}").fetchone()  # noqa: S608
    path = os.path.join(directory, f"{lsn_from:016X}-{upto:016X}-{meta['now']}.parquet")
    cols = ", ".join([f"c{i} AS {_duck_ident(c)}" for i, c in enumerate(names)]
                     + ["_traw AS _t", "_t AS _tm", "_lsn", "_seq", "_op"])
    (versions,) = con.execute(f"SELECT count(*) FROM vr WHERE _lsn <= {upto} AND {keep}"  # noqa: S608
                              ).fetchone()
    con.execute(f"COPY (SELECT {cols} FROM vr WHERE _lsn <= {upto} AND {keep}"  # noqa: S608
                f" ORDER BY {keyc}, _lsn, _seq) TO {_duck_literal(path)} (FORMAT parquet,"
                " COMPRESSION zstd)")
    size = os.path.getsize(path)
    (newest,) = con.execute(f"SELECT max(_traw) FROM vr WHERE _lsn <= {upto}").fetchone()  # noqa: S608
    moved = plpy.execute(f"DELETE FROM {h.table} WHERE _pgml_commit_lsn <= "  # noqa: S608
                         f"{_pg_literal(lsn_to)}").nrows()
    plpy.execute(plpy.prepare("DELETE FROM pgml_history.segments WHERE relation_name = $1",
                              ["text"]), [h.relation_name])
    plpy.execute(plpy.prepare(
        "INSERT INTO pgml_history.segments (relation_name, path, lsn_from, lsn_to, versions,"
        " bytes, newest_commit_time) VALUES ($1, $2, ($3::text)::pg_lsn, $4::pg_lsn, $5, $6,"
        " to_timestamp($7 / 1e6))", ["text", "text", "text", "text", "int8", "int8", "int8"]),
        [h.relation_name, path, f"{lsn_from >> 32:X}/{lsn_from & 0xFFFFFFFF:X}", lsn_to,
         versions, size, newest])
    if meta["cut"] is not None:  # as_of before the cut would read versions no longer kept
        plpy.execute(plpy.prepare(
            "UPDATE pgml_history.tables SET started_at = greatest(started_at,"
            " to_timestamp($2 / 1e6)) WHERE relation_name = $1", ["text", "int8"]),
            [h.relation_name, meta["cut"]])
    return (h.relation_name, moved, path, size)


def _pg_literal(text: str) -> str:
    if not all(ch in "0123456789ABCDEFabcdef/" for ch in text):
        raise PgmlError(f"unexpected LSN {text!r}")
    return f"'{text}'::pg_lsn"


def _collect_garbage(directory: str, live: list[str]) -> None:
    """Segment files no committed catalog row names, older than an hour (a rolled-back
    compaction's, or replaced ones no reader can still be using)."""
    now = time.time()
    for entry in os.scandir(directory):
        if entry.path not in live and entry.name.endswith(".parquet") \
                and now - entry.stat().st_mtime > GARBAGE_SECONDS:
            os.unlink(entry.path)
