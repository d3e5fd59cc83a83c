"""The whole loop with the real sidecar: rows written on the source stream to the ML replica,
are scored there, and their predictions are read back *on the source* through postgres_fdw.
Both modes: live (scored on read) and materialized (scored as rows replicate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from replica.writeback.setup import writeback
from tests.writeback.conftest import FEATURES, ROOT, create_patients, train, wait_for

PROJECT = "progression"
BOUND_S = 60  # generous: the machine is shared; nothing here asserts a duration


@pytest.fixture
def sidecar(source_db, ml_db, tmp_path: Path):
    """`pgml-replica run` streaming public.patients from source_db into ml_db."""
    with source_db.connect() as conn:
        create_patients(conn)
    log = tmp_path / "sidecar.log"
    cmd = [sys.executable, "-m", "replica", "run", "--source", source_db.dsn,
           "--target", ml_db.dsn, "--tables", "public.patients",
           "--slot", f"s_{source_db.name}", "--publication", f"p_{source_db.name}",
           "--http-port", "0"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ})

    def mirrored():
        if proc.poll() is not None:
            pytest.fail(f"the sidecar exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with ml_db.connect() as conn:
            if conn.execute("SELECT to_regclass('public.patients')").fetchone()[0] is None:
                return False
            return conn.execute("SELECT count(*) FROM public.patients").fetchone()[0] == 442

    try:
        wait_for("the initial snapshot on the replica", mirrored, BOUND_S)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _on_source(source_db, key: int):
    rows = source_db.execute("SELECT prediction FROM ml.patients WHERE id = %s", (key,))
    return rows[0][0] if rows else None


def _on_replica(ml_db, key: int) -> float | None:
    """What the deployed model says for the row as the replica has it now."""
    arr = sql.SQL(", ").join(sql.Identifier(f) for f in ["id", *FEATURES])
    rows = ml_db.execute(sql.SQL("SELECT pgml.predict(%s, ARRAY[{}]::float8[]) FROM"
                                 " public.patients WHERE id = %s").format(arr), (PROJECT, key))
    return rows[0][0] if rows else None


def _eventually_equal(source_db, ml_db, key: int, what: str) -> float:
    def agree():
        want = _on_replica(ml_db, key)
        got = _on_source(source_db, key)
        return want is not None and got is not None and abs(got - want) < 1e-9 and [got]
    return wait_for(what, agree, BOUND_S)[0]


@pytest.mark.parametrize("materialize", [False, True], ids=["live", "materialized"])
def test_insert_update_delete_redeploy_seen_on_the_source(source_db, ml_db, sidecar, reader,
                                                          monkeypatch, materialize):
    role, password = reader
    with ml_db.connect() as conn:
        train(conn, PROJECT, "public.patients", "progression", "linear")
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'], 'patients')",
                     (PROJECT,))
    monkeypatch.setenv("PGML_REPLICA_READER_PASSWORD", password)
    writeback(source_db.dsn, ml_db.dsn, PROJECT, replica_user=role, materialize=materialize)

    # INSERT on the source -> its prediction is readable on the source
    key = source_db.execute(
        "INSERT INTO public.patients (age, sex, bmi, bp, s1, s2, s3, s4, s5, s6) VALUES"
        " (0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, 0.01) RETURNING id")[0][0]
    inserted = _eventually_equal(source_db, ml_db, key, "the inserted row's prediction")
    joined = source_db.execute("SELECT bmi, prediction FROM ml.patients_joined WHERE id = %s",
                               (key,))
    assert joined == [(0.06, inserted)]

    # UPDATE a feature -> the prediction changes
    source_db.execute("UPDATE public.patients SET bmi = 0.16, s5 = 0.09 WHERE id = %s", (key,))
    wait_for("the updated prediction", lambda: (
        (p := _on_source(source_db, key)) is not None and abs(p - inserted) > 1e-6), BOUND_S)
    updated = _eventually_equal(source_db, ml_db, key, "the updated row's prediction")
    assert updated != inserted

    # DELETE -> gone
    source_db.execute("DELETE FROM public.patients WHERE id = %s", (key,))
    wait_for("the deleted row's prediction to go",
             lambda: not source_db.execute("SELECT 1 FROM ml.patients WHERE id = %s", (key,)),
             BOUND_S)

    # the key filter runs on the replica
    plan = "\n".join(r[0] for r in source_db.execute(
        "EXPLAIN VERBOSE SELECT prediction FROM ml.patients WHERE id = 5"))
    assert "Remote SQL: SELECT prediction FROM pgml_out.patients WHERE ((id = 5))" in plan, plan

    # redeploy another model -> the source's answers change
    before = dict(source_db.execute("SELECT id, prediction FROM ml.patients WHERE id <= 20"))
    with ml_db.connect() as conn:
        train(conn, PROJECT, "public.patients", "progression", "xgboost")
        conn.execute("SELECT * FROM pgml.deploy(%s, 'most_recent')", (PROJECT,))
    after = dict(source_db.execute("SELECT id, prediction FROM ml.patients WHERE id <= 20"))
    assert after.keys() == before.keys()
    assert any(abs(after[k] - before[k]) > 1e-6 for k in after)
    for k in (1, 10, 20):
        assert abs(after[k] - _on_replica(ml_db, k)) < 1e-6

    # rows that arrive after the redeploy are scored by the new model too, also after the
    # source table gained a column (the sidecar alters the mirrored table under the view)
    source_db.execute("ALTER TABLE public.patients ADD COLUMN note text")
    key = source_db.execute(
        "INSERT INTO public.patients (age, sex, bmi, bp, s1, s2, s3, s4, s5, s6, note) VALUES"
        " (-0.02, -0.04, 0.01, 0.03, 0.02, 0.01, -0.01, 0.03, -0.02, 0.0, 'new') RETURNING id"
    )[0][0]
    _eventually_equal(source_db, ml_db, key, "a new row's prediction from the new model")
    assert sidecar.poll() is None, "the sidecar stopped while predictions were being served"

    # the reader behind the foreign server cannot read the mirrored table on the replica
    source_db.execute("CREATE FOREIGN TABLE public.sneak (id bigint) SERVER pgml_replica"
                      " OPTIONS (schema_name 'public', table_name 'patients')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        source_db.execute("SELECT * FROM public.sneak")
    source_db.execute("CREATE FOREIGN TABLE public.sneak2 (id bigint) SERVER pgml_replica"
                      " OPTIONS (schema_name 'pgml', table_name 'models')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        source_db.execute("SELECT * FROM public.sneak2")
