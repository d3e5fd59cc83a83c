"""pgml.deploy strategies (best_score by number, most_recent, rollback, algorithm filter) and a
new deployment reaching backends that already cached the old one -- in another session on the
primary, and on a physical standby where the change arrives by WAL replay."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from devtools.localcluster import PG_BIN, LocalCluster, free_port
from tests.sql.helpers import connect, one

ROW = [0.038, 0.05, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.02, -0.018]


def deployed(conn) -> tuple[int, str]:
    return conn.execute("SELECT id, algorithm FROM pgml.deployed_models WHERE name = 'd'"
                        ).fetchone()


def mse(conn, model_id: int) -> float:
    return one(conn, "SELECT (metrics->>'mean_squared_error')::float8 FROM pgml.models"
               " WHERE id = %s", (model_id,))


@pytest.fixture
def trained(pgml_db):
    """Project 'd' with four models: linear, ridge, lasso (worst), ridge again (most recent)."""
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT pgml.train('d', 'regression', 'pgml.diabetes', 'target')")
        conn.execute("SELECT pgml.train('d', algorithm => 'ridge', hyperparams => '{\"alpha\": 0.1}')")
        conn.execute("SELECT pgml.train('d', algorithm => 'lasso', hyperparams => '{\"alpha\": 10}')")
        conn.execute("SELECT pgml.train('d', algorithm => 'ridge', hyperparams => '{\"alpha\": 5}')")
    return pgml_db


def test_best_score_most_recent_and_algorithm_filter(trained):
    with connect(trained) as conn:
        models = conn.execute("SELECT id, algorithm FROM pgml.models ORDER BY id").fetchall()
        best = min(models, key=lambda m: mse(conn, m[0]))
        assert conn.execute("SELECT * FROM pgml.deploy('d', 'most_recent')").fetchone() == (
            "d", "most_recent", "ridge")
        assert deployed(conn) == models[-1]
        assert conn.execute("SELECT * FROM pgml.deploy('d')").fetchone()[2] == best[1]
        assert deployed(conn) == best
        conn.execute("SELECT * FROM pgml.deploy('d', 'best_score', 'ridge')")
        ridges = [m for m in models if m[1] == "ridge"]
        assert deployed(conn) == min(ridges, key=lambda m: mse(conn, m[0]))
        conn.execute("SELECT * FROM pgml.deploy('d', 'most_recent', algorithm_name => 'lasso')")
        assert deployed(conn)[1] == "lasso"
        strategies = [r[0] for r in conn.execute("SELECT strategy FROM pgml.deployments ORDER BY id")]
        assert strategies[0] == "new_score"  # automatic deployments at train time
        assert strategies[-4:] == ["most_recent", "best_score", "best_score", "most_recent"]


def test_rollback_returns_to_the_previous_deployment(trained):
    with connect(trained) as conn:
        conn.execute("SELECT pgml.deploy('d', 'most_recent', 'lasso')")
        lasso = deployed(conn)
        conn.execute("SELECT pgml.deploy('d', 'most_recent')")
        latest = deployed(conn)
        before = one(conn, "SELECT pgml.predict('d', %s::float8[])", (ROW,))
        assert conn.execute("SELECT * FROM pgml.deploy('d', 'rollback')").fetchone()[2] == "lasso"
        assert deployed(conn) == lasso
        after = one(conn, "SELECT pgml.predict('d', %s::float8[])", (ROW,))
        assert after == one(conn, "SELECT pgml.model_predict(%s, %s::float8[])", (lasso[0], ROW))
        assert after != before
        conn.execute("SELECT pgml.deploy('d', 'rollback')")  # and back again
        assert deployed(conn) == latest


def test_best_score_compares_numbers_not_text(pgml_db):
    """MSE 4.x beats 16.x, although the text '16.x' sorts before '4.x'."""
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 4, 400)
    y = 3 * x + rng.normal(0, 2, 400)
    with connect(pgml_db) as conn:
        conn.execute("CREATE TABLE line (x float8, y float8)")
        with conn.cursor().copy("COPY line FROM STDIN") as copy:
            for row in zip(x.tolist(), y.tolist(), strict=True):
                copy.write_row(row)
        conn.execute("SELECT pgml.train('n', 'regression', 'line', 'y')")
        conn.execute("SELECT pgml.train('n', algorithm => 'lasso', hyperparams => '{\"alpha\": 100}',"
                     " automatic_deploy => false)")
        scores = dict(conn.execute("SELECT algorithm, metrics->>'mean_squared_error'"
                                   " FROM pgml.models").fetchall())
        assert 1 <= float(scores["linear"]) < 10 <= float(scores["lasso"]) < 100  # precondition
        assert scores["lasso"] < scores["linear"]  # as text, the worse model sorts first
        conn.execute("SELECT pgml.deploy('n', 'most_recent')")
        assert conn.execute("SELECT * FROM pgml.deploy('n', 'best_score')").fetchone()[2] == "linear"


def test_deploy_errors(trained):
    with connect(trained) as conn:
        with pytest.raises(psycopg.errors.UndefinedObject, match="project 'nope' does not exist"):
            conn.execute("SELECT pgml.deploy('nope')")
        with pytest.raises(psycopg.Error, match="best_score, most_recent, rollback"):
            conn.execute("SELECT pgml.deploy('d', 'newest')")
        with pytest.raises(psycopg.Error, match="no model with algorithm 'xgboost'"):
            conn.execute("SELECT pgml.deploy('d', 'best_score', 'xgboost')")
        conn.execute("SELECT pgml.load_dataset('iris')")
        conn.execute("SELECT pgml.train('one', 'classification', 'pgml.iris', 'target')")
        with pytest.raises(psycopg.Error, match="no earlier deployment"):
            conn.execute("SELECT pgml.deploy('one', 'rollback')")


def test_new_deployment_reaches_a_session_that_cached_the_old_one(trained):
    with connect(trained) as reader, connect(trained) as writer:
        first = one(reader, "SELECT pgml.predict('d', %s::float8[])", (ROW,))  # cached now
        reader.execute("BEGIN")  # READ COMMITTED: the next statement takes a new snapshot
        assert one(reader, "SELECT pgml.predict('d', %s::float8[])", (ROW,)) == first
        lasso_id = one(writer, "SELECT id FROM pgml.models WHERE algorithm = 'lasso'")
        writer.execute("SELECT pgml.deploy('d', 'most_recent', 'lasso')")
        now = one(reader, "SELECT pgml.predict('d', %s::float8[])", (ROW,))
        reader.execute("COMMIT")
        assert now == one(writer, "SELECT pgml.model_predict(%s, %s::float8[])", (lasso_id, ROW))
        assert now != first


def _as_server_user() -> dict:
    return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}


@contextlib.contextmanager
def physical_standby(primary: LocalCluster):
    """A hot standby of ``primary`` (pg_basebackup -R), on its own port."""
    root = Path(tempfile.mkdtemp(prefix="pgml-replica-standby-", dir=primary.root.parent))
    os.chmod(root, 0o755)
    standby = LocalCluster(name="standby", root=root, port=free_port())
    if os.geteuid() == 0:
        os.chown(root, *_postgres_ids())
    try:
        subprocess.run([str(PG_BIN / "pg_basebackup"), "-D", str(standby.datadir), "-h",
                        primary.host, "-p", str(primary.port), "-U", "postgres", "-R",
                        "-X", "stream", "-c", "fast"], check=True, capture_output=True,
                       timeout=120, **_as_server_user())
        standby.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(standby.socket_dir, *_postgres_ids())
        with open(standby.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(f"port = {standby.port}\nunix_socket_directories = '{standby.socket_dir}'\n"
                       "hot_standby = on\n")
        standby.start()
        yield standby
    finally:
        standby.destroy()


def _postgres_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def _wait_replayed(primary_conn, standby_conn, timeout: float = 30) -> None:
    lsn = one(primary_conn, "SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + timeout
    while one(standby_conn, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)) is not True:
        assert time.monotonic() < deadline, "the standby did not replay in time"
        time.sleep(0.05)


def test_new_deployment_reaches_a_physical_standby(trained, pg_replica):
    with physical_standby(pg_replica) as standby, connect(trained) as primary:
        with psycopg.connect(standby.dsn(trained.name), autocommit=True) as replica:
            assert one(replica, "SELECT pg_is_in_recovery()") is True
            first = one(replica, "SELECT pgml.predict('d', %s::float8[])", (ROW,))
            lasso_id = one(primary, "SELECT id FROM pgml.models WHERE algorithm = 'lasso'")
            primary.execute("SELECT pgml.deploy('d', 'most_recent', 'lasso')")
            _wait_replayed(primary, replica)
            now = one(replica, "SELECT pgml.predict('d', %s::float8[])", (ROW,))
            assert now != first
            assert now == one(replica, "SELECT pgml.model_predict(%s, %s::float8[])",
                              (lasso_id, ROW))
