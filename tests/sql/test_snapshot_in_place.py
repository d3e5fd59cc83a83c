"""pgml.train's snapshots read in place (PostgresML's ``materialize_snapshot => false``, the
default) or copied (``=> true``): no copy unless asked for or needed, the same model from
either, retrains that read the relation as it is then (or the copy, unchanged), and the cases
where a copy is kept anyway (text and array columns, temporary relations, pgml.snapshot)."""

from __future__ import annotations

import psycopg.errors as E
import pytest

from tests.sql.helpers import connect, latest_model, one

NUMBERS = ("CREATE TABLE nums AS SELECT g::float8 AS x, (g % 7)::int AS k, g % 3 = 0 AS b,"
           " 2.5 * g + (g % 5) AS y FROM generate_series(1, 400) g")


def snapshots(conn) -> list[tuple]:
    return conn.execute("SELECT relation_name, materialized, num_rows FROM pgml.snapshots"
                        " ORDER BY id").fetchall()


def copies(conn) -> int:
    return one(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'pgml'"
                     " AND tablename LIKE 'snapshot\\_%'")


def test_the_default_reads_in_place_and_trains_the_model_a_copy_trains(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute(NUMBERS)
        conn.execute("SELECT pgml.train('in_place', 'regression', 'nums', 'y')")
        assert copies(conn) == 0
        conn.execute("SELECT pgml.train('copied', 'regression', 'nums', 'y',"
                     " materialize_snapshot => true)")
        assert copies(conn) == 1
        assert snapshots(conn) == [("public.nums", False, 400), ("public.nums", True, 400)]
        in_place, copied = latest_model(conn, "in_place"), latest_model(conn, "copied")
        analyses = conn.execute("SELECT analysis FROM pgml.snapshots ORDER BY id").fetchall()
        assert not conn.notices
    for key in ("r2", "mean_squared_error", "mean_absolute_error"):
        assert in_place["metrics"][key] == copied["metrics"][key]
    assert analyses[0] == analyses[1]
    assert analyses[0][0]["x"]["count"] == 400 and analyses[0][0]["b"]["mean"] == 133 / 400


def test_a_retrain_reads_the_relation_in_place_as_it_is_then(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute(NUMBERS)
        conn.execute("SELECT pgml.train('p', 'regression', 'nums', 'y')")
        first = latest_model(conn, "p")
        conn.execute("DELETE FROM nums WHERE x > 200")
        conn.execute("SELECT pgml.train('p', algorithm => 'linear')")
        second = latest_model(conn, "p")
        conn.execute("SELECT pgml.train('fresh', 'regression', 'nums', 'y')")
        fresh = latest_model(conn, "fresh")
        assert second["snapshot_id"] == first["snapshot_id"]
        assert second["metrics"]["r2"] == fresh["metrics"]["r2"] != first["metrics"]["r2"]
        conn.execute("ALTER TABLE nums ADD COLUMN later float8 DEFAULT 1")  # not a feature
        conn.execute("SELECT pgml.train('p', algorithm => 'linear')")
        assert latest_model(conn, "p")["metrics"]["r2"] == second["metrics"]["r2"]
        conn.execute("ALTER TABLE nums DROP COLUMN k")
        with pytest.raises(E.UndefinedColumn, match="no longer has the column"):
            conn.execute("SELECT pgml.train('p')")
        conn.execute("TRUNCATE nums")
        conn.execute("ALTER TABLE nums ADD COLUMN k int")
        with pytest.raises(E.DataException, match="empty"):
            conn.execute("SELECT pgml.train('p')")
        conn.execute("DROP TABLE nums")
        with pytest.raises(E.UndefinedTable, match="pass relation_name"):
            conn.execute("SELECT pgml.train('p')")


def test_a_materialized_snapshot_retrains_on_its_copy(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute(NUMBERS)
        conn.execute("SELECT pgml.train('m', 'regression', 'nums', 'y', 'random_forest',"
                     " '{\"n_estimators\": 5}', materialize_snapshot => true)")
        first = latest_model(conn, "m")
        conn.execute("TRUNCATE nums")
        conn.execute("SELECT pgml.train('m', algorithm => 'random_forest',"
                     " hyperparams => '{\"n_estimators\": 5}')")
        second = latest_model(conn, "m")
    assert second["snapshot_id"] == first["snapshot_id"]
    assert second["metrics"]["r2"] == first["metrics"]["r2"]


def test_a_copy_is_kept_where_one_statement_cannot_read_it_all(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("CREATE TABLE texts AS SELECT g::float8 AS x, (ARRAY['a', 'b'])[g % 2 + 1]"
                     " AS t, g % 2 AS y FROM generate_series(1, 100) g")
        conn.execute("CREATE TABLE arrays AS SELECT ARRAY[g, g * 2]::float8[] AS v, g % 2 AS y"
                     " FROM generate_series(1, 100) g")
        conn.execute("CREATE TEMP TABLE temp_nums AS SELECT g::float8 AS x, 3.0 * g AS y"
                     " FROM generate_series(1, 100) g")
        conn.execute("SELECT pgml.train('t', 'classification', 'texts', 'y')")
        conn.execute("SELECT pgml.train('a', 'classification', 'arrays', 'y')")
        conn.execute("SELECT pgml.train('tmp', 'regression', 'temp_nums', 'y')")
        conn.execute("SELECT * FROM pgml.snapshot('public.texts', 'y')")
        assert [s[1] for s in snapshots(conn)] == [True, True, True, True]
        assert copies(conn) == 4


@pytest.mark.parametrize("materialize", [False, True])
def test_a_failed_train_leaves_no_snapshot_and_no_copy(pgml_db, materialize):
    with connect(pgml_db) as conn:
        conn.execute("CREATE TABLE holes AS SELECT g::float8 AS x,"
                     " CASE WHEN g > 5 THEN g END::float8 AS y FROM generate_series(1, 50) g")
        with pytest.raises(E.DataException, match="NULL"):  # found after the snapshot is taken
            conn.execute("SELECT pgml.train('h', 'regression', 'holes', 'y',"
                         " materialize_snapshot => %s)", (materialize,))
        assert one(conn, "SELECT count(*) FROM pgml.snapshots") == 0
        assert one(conn, "SELECT count(*) FROM pgml.projects") == 0
        assert copies(conn) == 0
