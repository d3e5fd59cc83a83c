"""pgml.expose on the ML replica: live and materialized prediction views, pushdown of key
filters, the reader role's reach, and refresh on redeploy. Real pgml, real models."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from tests.writeback.conftest import FEATURES, create_patients, train

PROJECT = "diabetes"


@pytest.fixture
def trained(ml_db):
    """ml_db with public.patients (442 diabetes rows) and a deployed linear model on it."""
    with ml_db.connect() as conn:
        create_patients(conn)
        train(conn, PROJECT, "public.patients", "progression", "linear")
    return ml_db


def _expected(conn, project: str = PROJECT, where: str = "TRUE") -> dict[int, float]:
    feats = sql.SQL(", ").join(sql.Identifier(f) for f in ["id", *FEATURES])
    rows = conn.execute(sql.SQL("SELECT id, pgml.predict(%s, ARRAY[{}]::float8[]) FROM "
                                "public.patients WHERE {} ORDER BY id").format(
        feats, sql.SQL(where)), (project,)).fetchall()
    return dict(rows)


def _view(conn, name: str = "diabetes") -> dict[int, float]:
    return dict(conn.execute(sql.SQL("SELECT id, prediction FROM pgml_out.{} ORDER BY id")
                             .format(sql.Identifier(name))).fetchall())


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-6 * max(1, abs(b[k])) for k in a)


def test_live_view_scores_every_row_like_pgml_predict(trained):
    with trained.connect() as conn:
        assert conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'])",
                            (PROJECT,)).fetchone()[0] == "pgml_out.diabetes"
        features, task, materialized = conn.execute(
            "SELECT features, task, materialized FROM pgml.exposures").fetchone()
        # default features: the training columns, in training order (the id was one of them)
        assert features == ["id", *FEATURES]
        assert (task, materialized) == ("regression", False)
        cols = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'pgml_out.diabetes'::regclass"
            " AND attnum > 0 ORDER BY attnum")]
        assert cols == ["id", "prediction"]
        view = _view(conn)
        assert len(view) == 442
        assert _close(view, _expected(conn))


def test_point_lookup_pushes_the_key_down_and_scores_one_row(trained):
    with trained.connect() as conn:
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'])", (PROJECT,))
        conn.execute("ANALYZE public.patients")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN (VERBOSE) SELECT prediction FROM pgml_out.diabetes WHERE id = 17"))
        assert "Index Cond: (r.id = 17)" in plan, plan
        assert "Seq Scan" not in plan, plan
        conn.execute("SET track_functions = 'all'")
        value, calls = _counting_calls(
            conn, "SELECT prediction FROM pgml_out.diabetes WHERE id = 17")
        assert calls == 1
        assert abs(value[0][0] - _expected(conn, where="id = 17")[17]) < 1e-6
        # selecting only the key scores nothing
        rows, calls = _counting_calls(conn, "SELECT id FROM pgml_out.diabetes WHERE id < 50")
        assert len(rows) == 49 and calls == 0


def _counting_calls(conn, query: str) -> tuple[list, int]:
    """Rows of `query` and how many times it called the scoring wrappers (the backend's
    not-yet-flushed function statistics, read before and after in one transaction)."""
    count = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
             " WHERE schemaname = 'pgml_expose'")
    with conn.transaction():
        before = conn.execute(count).fetchone()[0]
        rows = conn.execute(query).fetchall()
        after = conn.execute(count).fetchone()[0]
    return rows, int(after - before)


def test_classification_exposes_probabilities(ml_db):
    with ml_db.connect() as conn:
        conn.execute("SELECT * FROM pgml.load_dataset('iris')")
        conn.execute("CREATE TABLE public.flowers AS SELECT row_number() OVER () AS fid, *"
                     " FROM pgml.iris")
        conn.execute("ALTER TABLE public.flowers ADD PRIMARY KEY (fid)")
        feats = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'pgml.iris'::regclass"
            " AND attnum > 0 AND NOT attisdropped AND attname <> 'target' ORDER BY attnum")]
        train(conn, "iris", "pgml.iris", "target", "linear", task="classification")
        conn.execute("SELECT pgml.expose('iris', 'public.flowers', ARRAY['fid'], 'iris_out')")
        arr = sql.SQL("ARRAY[{}]::float8[]").format(
            sql.SQL(", ").join(sql.Identifier(f) for f in feats))
        rows = conn.execute(sql.SQL(
            "SELECT o.prediction = pgml.predict('iris', {0}),"
            " o.probabilities = pgml.predict_proba('iris', {0}), cardinality(o.probabilities)"
            " FROM pgml_out.iris_out o JOIN public.flowers f USING (fid)").format(arr)).fetchall()
        assert len(rows) == 150
        assert all(r[0] and r[1] and r[2] == 3 for r in rows)
        for materialized in (True, False):
            conn.execute("SELECT pgml.materialize('iris_out', %s)", (materialized,))
            again = conn.execute(sql.SQL(
                "SELECT count(*) FROM pgml_out.iris_out o JOIN public.flowers f USING (fid)"
                " WHERE o.prediction = pgml.predict('iris', {0})"
                " AND o.probabilities = pgml.predict_proba('iris', {0})").format(arr)).fetchone()
            assert again[0] == 150


def test_explicit_features_and_view_name(trained):
    with trained.connect() as conn:
        train(conn, "small", "public.patients", "progression", "linear")  # a second project
        # a model trained on a view of 3 columns, exposed over the full table by name
        conn.execute("CREATE VIEW public.three AS SELECT bmi, bp, s5, progression"
                     " FROM public.patients")
        train(conn, "three", "public.three", "progression", "ridge")
        conn.execute("SELECT pgml.expose('three', 'public.patients', ARRAY['id'], 'by_bmi',"
                     " ARRAY['bmi', 'bp', 's5'])")
        got = dict(conn.execute("SELECT id, prediction FROM pgml_out.by_bmi").fetchall())
        want = dict(conn.execute("SELECT id, pgml.predict('three', ARRAY[bmi, bp, s5])"
                                 " FROM public.patients").fetchall())
        assert _close(got, want)
        # re-exposing is idempotent and keeps the view (and its grants)
        oid = conn.execute("SELECT 'pgml_out.by_bmi'::regclass::oid").fetchone()[0]
        conn.execute("SELECT pgml.expose('three', 'public.patients', ARRAY['id'], 'by_bmi',"
                     " ARRAY['bmi', 'bp', 's5'])")
        assert conn.execute("SELECT 'pgml_out.by_bmi'::regclass::oid").fetchone()[0] == oid
        # a view name belongs to one project
        with pytest.raises(psycopg.errors.RaiseException, match="already exposes project"):
            conn.execute("SELECT pgml.expose('small', 'public.patients', ARRAY['id'], 'by_bmi')")


@pytest.mark.parametrize("call, message", [
    ("SELECT pgml.expose('nope', 'public.patients', ARRAY['id'])", "project 'nope' does not"),
    ("SELECT pgml.expose('diabetes', 'public.nope', ARRAY['id'])", "relation 'public.nope'"),
    ("SELECT pgml.expose('diabetes', 'public.patients', ARRAY['nope'])", "key column nope"),
    ("SELECT pgml.expose('diabetes', 'public.patients', ARRAY[]::text[])", "key_columns is empty"),
    ("SELECT pgml.expose('diabetes', 'public.patients', ARRAY['id'], 'v', ARRAY['age', 'note'])",
     "type text, which is not numeric"),
    ("SELECT pgml.expose('diabetes', 'public.patients; DROP TABLE public.patients',"
     " ARRAY['id'])", "does not exist"),
    ("SELECT pgml.materialize('nope')", "is not an exposure"),
])
def test_bad_input_gets_a_clear_error_and_changes_nothing(trained, call, message):
    with trained.connect() as conn:
        conn.execute("ALTER TABLE public.patients ADD COLUMN note text")
        with pytest.raises(psycopg.Error, match=message):
            conn.execute(call)
        assert conn.execute("SELECT count(*) FROM pgml.exposures").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM public.patients").fetchone()[0] == 442


def test_hostile_view_name_is_only_a_name(trained):
    with trained.connect() as conn:
        name = 'x"; DROP TABLE public.patients; --'
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'], %s)",
                     (PROJECT, name))
        conn.execute("SELECT pgml.materialize(%s)", (name,))
        assert conn.execute(sql.SQL("SELECT count(*) FROM pgml_out.{}").format(
            sql.Identifier(name))).fetchone()[0] == 442
        conn.execute("INSERT INTO public.patients (id, age) VALUES (1000, 0.01)")
        assert conn.execute(sql.SQL("SELECT count(*) FROM pgml_out.{}").format(
            sql.Identifier(name))).fetchone()[0] == 443
        conn.execute("SELECT pgml.unexpose(%s)", (name,))
        assert conn.execute("SELECT count(*) FROM public.patients").fetchone()[0] == 443
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid ="
                            " 'public.patients'::regclass").fetchone()[0] == 0


def test_reader_reads_the_views_and_nothing_else(trained, reader):
    role, password = reader
    with trained.connect() as conn:
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'])", (PROJECT,))
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
        conn.execute("SELECT pgml.grant_reader(%s)", (role,))
        # a view exposed after the grant is readable too
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'], 'later')",
                     (PROJECT,))
        conn.execute("SELECT pgml.materialize('later')")
    dsn = trained.cluster.dsn(trained.name, user=role, password=password)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pgml_out.diabetes WHERE id <= 10"
                            ).fetchone()[0] == 10
        assert conn.execute("SELECT count(*) FROM pgml_out.later").fetchone()[0] == 442
        denied = [
            "SELECT * FROM public.patients",               # the mirrored table
            "SELECT * FROM pgml.models",                   # model tables
            "SELECT * FROM pgml.deployments",
            "SELECT * FROM pgml.projects",
            "SELECT * FROM pgml.snapshots",
            "SELECT * FROM pgml.exposures",
            "SELECT * FROM pgml_expose.later",             # the materialized store itself
            "SELECT pgml_expose.predict('diabetes', ARRAY[1.0])",  # wrappers: views only
            "SELECT pgml_expose.refresh('later')",
            "CREATE VIEW pgml_out.mine AS SELECT 1",
            "SELECT pgml.materialize('diabetes', true)",
        ]
        for query in denied:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)
    with trained.connect() as conn:
        conn.execute("SELECT pgml.revoke_reader(%s)", (role,))
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM pgml_out.diabetes")


def test_materialized_table_follows_every_kind_of_write(trained):
    with trained.connect() as conn:
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'])", (PROJECT,))
        assert conn.execute("SELECT pgml.materialize('diabetes')").fetchone()[0] == "materialized"
        assert _close(_view(conn), _expected(conn))
        # as the sidecar (or a native subscription) applies: with and without replica role
        for role in ("origin", "replica"):
            conn.execute(sql.SQL("SET session_replication_role = {}").format(sql.Literal(role)))
            with conn.cursor().copy("COPY public.patients (id, age, bmi) FROM STDIN") as copy:
                copy.write_row((2001, 0.02, 0.05))
                copy.write_row((2002, -0.01, 0.01))
            conn.execute("INSERT INTO public.patients (id, bmi) VALUES (2003, 0.1)")
            conn.execute("UPDATE public.patients SET bmi = bmi + 0.05 WHERE id IN (1, 2001)")
            conn.execute("UPDATE public.patients SET id = id + 5000 WHERE id = 2")  # key moves
            conn.execute("DELETE FROM public.patients WHERE id IN (3, 2002)")
            conn.execute("CREATE TEMP TABLE stage AS SELECT * FROM public.patients"
                         " WHERE id IN (4, 5)")
            conn.execute("UPDATE stage SET s1 = 0.5")
            conn.execute("INSERT INTO stage (id, bmi) VALUES (2004, 0.2)")
            conn.execute("MERGE INTO public.patients p USING stage s ON p.id = s.id"
                         " WHEN MATCHED THEN UPDATE SET s1 = s.s1"
                         " WHEN NOT MATCHED THEN INSERT (id, bmi) VALUES (s.id, s.bmi)")
            conn.execute("DROP TABLE stage")
            assert _close(_view(conn), _expected(conn)), role
            conn.execute("DELETE FROM public.patients WHERE id >= 2001")
            conn.execute("UPDATE public.patients SET id = 2 WHERE id = 5002")
            conn.execute("INSERT INTO public.patients SELECT 3, age, sex, bmi, bp, s1, s2, s3,"
                         " s4, s5, s6, progression FROM public.patients WHERE id = 1")
        conn.execute("RESET session_replication_role")
        # an update of a column that is not a feature leaves the prediction as scored
        before = conn.execute("SELECT scored_at FROM pgml_expose.diabetes WHERE id = 10"
                              ).fetchone()[0]
        conn.execute("UPDATE public.patients SET progression = 0 WHERE id = 10")
        assert conn.execute("SELECT scored_at FROM pgml_expose.diabetes WHERE id = 10"
                            ).fetchone()[0] == before
        conn.execute("TRUNCATE public.patients")
        assert _view(conn) == {}
        # and back to live: the table and triggers go
        assert conn.execute("SELECT pgml.materialize('diabetes', false)").fetchone()[0] == "live"
        assert conn.execute("SELECT to_regclass('pgml_expose.diabetes')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid ="
                            " 'public.patients'::regclass").fetchone()[0] == 0


def test_materialize_needs_unique_keys(trained):
    with trained.connect() as conn:
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['age'], 'by_age')",
                     (PROJECT,))
        with pytest.raises(psycopg.Error, match="not unique"):
            conn.execute("SELECT pgml.materialize('by_age')")
        assert conn.execute("SELECT materialized FROM pgml.exposures").fetchone()[0] is False


def test_redeploy_rescores_materialized_and_live(trained):
    with trained.connect() as conn:
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'], 'live')",
                     (PROJECT,))
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'], 'mat')",
                     (PROJECT,))
        conn.execute("SELECT pgml.materialize('mat')")
        first = _view(conn, "mat")
        train(conn, PROJECT, "public.patients", "progression", "xgboost")
        conn.execute("SELECT * FROM pgml.deploy(%s, 'most_recent')", (PROJECT,))
        now = _expected(conn)
        assert not _close(first, now)  # the new model answers differently
        assert _close(_view(conn, "mat"), now)
        assert _close(_view(conn, "live"), now)
        conn.execute("SELECT * FROM pgml.deploy(%s, 'rollback')", (PROJECT,))
        assert _close(_view(conn, "mat"), first)


def test_a_model_that_cannot_score_the_exposure_never_blocks_writes(trained):
    """A deployment trained on other columns: materialized predictions disappear (with a
    WARNING) instead of standing stale, and writes to the mirrored table still succeed."""
    warnings = []
    with trained.connect() as conn:
        conn.add_notice_handler(lambda d: warnings.append(d.message_primary))
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'])", (PROJECT,))
        conn.execute("SELECT pgml.materialize('diabetes')")
        conn.execute("CREATE VIEW public.two AS SELECT bmi, bp, progression FROM public.patients")
        train(conn, PROJECT, "public.two", "progression", "linear")
        conn.execute("SELECT * FROM pgml.deploy(%s, 'most_recent')", (PROJECT,))
        assert any("cannot score pgml_out.diabetes" in w for w in warnings), warnings
        assert _view(conn) == {}
        conn.execute("INSERT INTO public.patients (id, bmi) VALUES (5000, 0.1)")
        assert any("could not score insert rows" in w for w in warnings), warnings
        assert conn.execute("SELECT count(*) FROM public.patients WHERE id = 5000"
                            ).fetchone()[0] == 1
        assert _view(conn) == {}
        # exposing again with the new model's columns brings predictions back
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'])", (PROJECT,))
        view = _view(conn)
        assert len(view) == 443
        want = dict(conn.execute("SELECT id, pgml.predict(%s, ARRAY[bmi, bp]) FROM"
                                 " public.patients", (PROJECT,)).fetchall())
        assert _close(view, want)
