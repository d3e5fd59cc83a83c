"""The loaders' column read (inference/relations.py float8_column_sql / float8_column) on a real
PL/Python cluster: the raw array bytes through pgml._float8_array_bytes and the float8send
fallback return the same values -- NULL as NaN, special values kept, no rows as no values."""

from __future__ import annotations

import json
import math

import pytest

BOTH = """
CREATE FUNCTION pg_temp.both_reads(rel text, expr text) RETURNS text LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
import json
from inference import relations
out = {"raw_available": relations.raw_arrays()}
for raw in (True, False):
    sql = relations.float8_column_sql(expr, raw)
    row = plpy.execute(f"SELECT count(*) AS n, {sql} AS c FROM {rel}")[0]
    values = relations.float8_column(row["c"], row["n"], raw)
    out[str(raw)] = [None if v != v else v for v in values.tolist()]
return json.dumps(out)
$$
"""

VALUES = [1.5, None, float("nan"), -0.0, 1e308, float("inf"), -5e-324, 42.0]


@pytest.fixture(scope="module")
def db(shared_pgml_db):
    return shared_pgml_db


@pytest.mark.parametrize("rows", [VALUES, []])
def test_raw_array_read_equals_the_float8send_read(db, rows):
    with db.connect(autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute("CREATE TABLE t (n serial, x float8, b bool)")
        for v in rows:
            conn.execute("INSERT INTO t (x, b) VALUES (%s, %s)",
                         (v, None if v is None else v > 0))
        conn.execute(BOTH)
        got = json.loads(conn.execute("SELECT pg_temp.both_reads('t', 'x')").fetchone()[0])
        flags = json.loads(conn.execute("SELECT pg_temp.both_reads('t', 'b::int::float8')")
                           .fetchone()[0])
    assert got["raw_available"] is True
    want = [None if v is None or math.isnan(v) else v for v in rows]
    assert got["True"] == got["False"] == want
    assert [math.copysign(1, v) for v in got["True"] if v == 0] == [-1.0] * (0.0 in want)
    assert flags["True"] == flags["False"] == [None if v is None else float(v > 0) for v in rows]
