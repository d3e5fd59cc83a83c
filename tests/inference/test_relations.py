"""The loaders' column read (inference/float8_bytes.py float8_column_sql / float8_column) on a real
PL/Python cluster: the raw array bytes through pgml._float8_array_bytes and the float8send
fallback return the same values -- NULL as NaN, special values kept, no rows as no values --
and so does an array that keeps its NULLs (its NULL bitmap read)."""

from __future__ import annotations

import json
import math

import pytest

BOTH = """
CREATE FUNCTION pg_temp.both_reads(rel text, expr text) RETURNS text LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
import json
from inference import float8_bytes
out = {"raw_available": float8_bytes.raw_arrays()}
for raw in (True, False):
    sql = float8_bytes.float8_column_sql(expr, raw)
    row = plpy.execute(f"SELECT count(*) AS n, {sql} AS c FROM {rel}")[0]
    values = float8_bytes.float8_column(row["c"], row["n"], raw)
    out[str(raw)] = [None if v != v else v for v in values.tolist()]
row = plpy.execute(f"SELECT count(*) AS n, pgml._float8_array_bytes(array_agg({expr})) AS c"
                   f" FROM {rel}")[0]  # NULL kept as NULL: the array's NULL bitmap
out["bitmap"] = [None if v != v else v
                 for v in float8_bytes.float8_column(row["c"], row["n"], True).tolist()]
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
    assert got["True"] == got["False"] == got["bitmap"] == want
    assert [math.copysign(1, v) for v in got["True"] if v == 0] == [-1.0] * (0.0 in want)
    assert flags["True"] == flags["False"] == flags["bitmap"] == [
        None if v is None else float(v > 0) for v in rows]


SAME_AS_NUMPY = """
CREATE FUNCTION pg_temp.same_as_numpy() RETURNS text LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
import json
import numpy as np
from inference import column_stats, relations

def reference(col):  # the statistics as numpy's own functions compute them
    col = np.asarray(col, dtype=np.float64)
    nan = np.isnan(col)
    present = col[~nan]
    stats = {"count": int(present.size), "missing": int(nan.sum())}
    if present.size:
        stats.update(mean=float(present.mean()), stddev=float(present.std()),
                     min=float(present.min()), max=float(present.max()),
                     median=float(np.median(present)))
    return stats

rng = np.random.default_rng(7)
out = {"analyze": [], "gather": []}
for n in (0, 1, 2, 7, 70_000, 70_001):
    base = rng.normal(size=(n, 3)) * 1e3 + 5
    holes = base[:, 2].copy()
    holes[::3] = np.nan
    infinities = base[:, 0].copy()
    infinities[:2] = (np.inf, -np.inf)[:n]
    values = {"plain": base[:, 0].copy(), "strided": base[:, 1], "holes": holes,
              "infinities": infinities, "nulls": np.full(n, np.nan),
              "big_endian": base[:, 2].astype(">f8")}
    got, want = column_stats.analyze(values), {k: reference(v) for k, v in values.items()}
    out["analyze"].append([n, json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)])
    rows = rng.permutation(n)[: (3 * n) // 4]
    names = list(values)
    expected = np.column_stack([np.asarray(values[k], dtype=np.float64)[rows] for k in names]) \
        if n else np.empty((0, len(names)))
    matrix = relations.gather(values, names, rows)
    out["gather"].append([n, bool(np.array_equal(matrix, expected, equal_nan=True))
                          and matrix.flags.c_contiguous and matrix.shape == expected.shape])
return json.dumps(out)
$$
"""


def test_statistics_and_gather_equal_numpys_own_bit_for_bit(db):
    """analyze's in-place steps give numpy's mean/std/min/max/median exactly (NULLs, infinities,
    strided and big-endian columns, odd and even counts); gather equals fancy indexing across
    several blocks of rows."""
    with db.connect(autocommit=True) as conn:
        conn.execute(SAME_AS_NUMPY)
        got = json.loads(conn.execute("SELECT pg_temp.same_as_numpy()").fetchone()[0])
    sizes = [0, 1, 2, 7, 70_000, 70_001]
    assert got["analyze"] == [[n, True] for n in sizes]
    assert got["gather"] == [[n, True] for n in sizes]


LOAD_PATHS = """
CREATE FUNCTION pg_temp.load_paths(rel text) RETURNS text LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
import json
import numpy as np
from inference import float8_bytes, relations
oid, name = relations.resolve(rel)
cols = relations.columns(oid)
n, values = relations.load(name, cols)
float8_bytes._RAW[:] = [False]  # the float8send form, one aggregate per column, to compare with
try:
    n_plain, plain = relations.load(name, cols)
finally:
    float8_bytes._RAW[:] = [True]
limit = relations.MATRIX_VALUES
relations.MATRIX_VALUES = 10  # as for a relation too big for one array: by column
try:
    n_big, big = relations.load(name, cols)
finally:
    relations.MATRIX_VALUES = limit
names = [c.name for c in cols]
rows = np.random.default_rng(1).permutation(n)[: (4 * n) // 5]
def same(a, b):
    return bool(np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               equal_nan=True))
picks = (names[:-1], [names[3], names[0], names[2]], names, [names[-1]])
return json.dumps({
    "n": [n, n_plain, n_big],
    "matrix": [values.rows is not None, plain.rows is not None, big.rows is not None],
    "values": [same(values[k], plain[k]) and same(values[k], big[k]) for k in names],
    "nan": [int(np.isnan(values[k]).sum()) for k in names],
    "gather": [same(relations.gather(values, p, rows), relations.gather(plain, p, rows))
               and relations.gather(values, p, rows).flags.c_contiguous for p in picks]})
$$
"""


def test_one_matrix_read_equals_the_read_column_by_column(db):
    """load's row-major read (one array_agg of ARRAY[...] per row, NULLs through the array's
    bitmap) gives the values the float8send form and the raw read per column (a relation
    estimated too big for one array) give, and gather takes the same rows from the matrix as
    column by column (several blocks of rows, any column order)."""
    with db.connect(autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS mixed")
        conn.execute("CREATE TABLE mixed AS SELECT g AS i, CASE WHEN g % 7 = 0 THEN NULL ELSE"
                     " g / 3.0 END::float8 AS x, CASE WHEN g % 5 = 0 THEN NULL ELSE g % 2 = 0"
                     " END AS b, (g * 1.5)::real AS r, (g % 11)::numeric AS y"
                     " FROM generate_series(1, 9000) g")
        conn.execute(LOAD_PATHS)
        got = json.loads(conn.execute("SELECT pg_temp.load_paths('mixed')").fetchone()[0])
    assert got["n"] == [9000] * 3 and got["matrix"] == [True, False, False]
    assert got["values"] == [True] * 5
    assert got["nan"] == [0, 9000 // 7, 9000 // 5, 0, 0]
    assert got["gather"] == [True] * 4


HALVES = """
CREATE FUNCTION pg_temp.halves(rel text) RETURNS text LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
import json
import numpy as np
from inference import float8_bytes, relations
oid, name = relations.resolve(rel)
cols = relations.columns(oid)
limit = float8_bytes.HALVES_MIN_ROWS
read = {}
try:
    for key, at_least in (("one", 10 ** 12), ("halves", 0)):
        float8_bytes.HALVES_MIN_ROWS = at_least
        read[key] = relations.load(name, cols)
finally:
    float8_bytes.HALVES_MIN_ROWS = limit
middle = float8_bytes.middle_block(name)
for setting, value in float8_bytes.HALVES_SETTINGS.items():
    plpy.execute(f"SET LOCAL {setting} = '{value}'")
sql = (f"EXPLAIN SELECT 0 AS h, count(*) FROM {name} WHERE ctid < '({middle},0)'::tid"
       f" UNION ALL SELECT 1, count(*) FROM {name} WHERE ctid >= '({middle},0)'::tid")
plan = "" if middle is None else "\\n".join(r["QUERY PLAN"] for r in plpy.execute(sql))
(n1, one), (n2, two) = read["one"], read["halves"]
names = [c.name for c in cols]
return json.dumps({
    "n": [n1, n2], "middle": middle,
    "same": all(np.array_equal(one[k], two[k], equal_nan=True) for k in names),
    "matrix": bool(np.array_equal(one.rows[0], two.rows[0], equal_nan=True)),
    "aligned": two.rows[0].flags.aligned and two.rows[0].flags.c_contiguous,
    "parallel": "Parallel Append" in plan and "Partial" not in plan,
    "first_x": [float(v) for v in two["x"][:3]], "plan": plan})
$$
"""


def test_two_halves_read_equals_one_scan_in_its_order(db):
    """A table read as two halves of its blocks (one in a parallel worker) gives the rows of
    one sequential scan in the same order -- a table with holes (deleted rows) and NULLs --
    and the planner runs the halves as a Parallel Append (neither half split further); a view
    or a temporary table is read in one scan."""
    with db.connect(autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS holes CASCADE")
        conn.execute("CREATE TABLE holes AS SELECT g AS i, CASE WHEN g % 7 = 0 THEN NULL ELSE"
                     " g / 3.0 END::float8 AS x, g % 2 = 0 AS b, (g % 11)::numeric AS y"
                     " FROM generate_series(1, 20000) g")
        conn.execute("DELETE FROM holes WHERE i % 13 = 0 OR i BETWEEN 5000 AND 5400")
        conn.execute("UPDATE holes SET x = -x WHERE i % 17 = 0")  # new versions at the end
        conn.execute("CREATE VIEW holes_v AS SELECT * FROM holes")
        conn.execute("CREATE TEMP TABLE holes_t AS SELECT * FROM holes")
        conn.execute(HALVES)
        conn.execute("BEGIN")  # the function's SET LOCALs end with this transaction
        got = json.loads(conn.execute("SELECT pg_temp.halves('holes')").fetchone()[0])
        kept = conn.execute("SELECT count(*) FROM holes").fetchone()[0]
        first = [r[0] for r in conn.execute("SELECT x FROM holes LIMIT 3").fetchall()]
        view = conn.execute("SELECT pg_temp.halves('holes_v')").fetchone()[0]
        temp = conn.execute("SELECT pg_temp.halves('holes_t')").fetchone()[0]
        conn.rollback()
    assert got["n"] == [kept, kept] and got["middle"] > 0
    assert got["same"] and got["matrix"] and got["aligned"]
    assert got["parallel"], got["plan"]
    assert got["first_x"] == first
    assert json.loads(view)["middle"] is None and json.loads(temp)["middle"] is None
