"""The harness itself: two real servers with the settings later tests rely on."""

import psycopg
import pytest


def test_source_is_a_logical_replication_primary(pg_source):
    with pg_source.connect() as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            (["wal_level", "max_replication_slots", "max_wal_senders",
              "max_prepared_transactions"],)).fetchall())
    assert settings["wal_level"] == "logical"
    assert int(settings["max_replication_slots"]) >= 10
    assert int(settings["max_wal_senders"]) >= 10
    assert int(settings["max_prepared_transactions"]) > 0


def test_replica_has_plpython_and_postgres_fdw(replica_db):
    with replica_db.connect() as conn:
        conn.execute("CREATE EXTENSION plpython3u")
        conn.execute("CREATE EXTENSION postgres_fdw")
        conn.execute("CREATE FUNCTION py_version() RETURNS text LANGUAGE plpython3u AS "
                     "$$ import sys; return '%d.%d' % sys.version_info[:2] $$")
        assert conn.execute("SELECT py_version()").fetchone()[0] == "3.11"


def test_plpython_imports_the_project_environment(replica_db, plpython_path):
    """PL/Python (running as the postgres OS user) imports numpy, sklearn, onnxruntime and
    this checkout's inference package from the environment `make test` built."""
    with replica_db.connect() as conn:
        conn.execute("CREATE EXTENSION plpython3u")
        conn.execute("""
            CREATE FUNCTION probe(paths text[]) RETURNS text[] LANGUAGE plpython3u AS $$
            import site, sys
            for p in reversed(paths):
                if p not in sys.path:
                    sys.path.insert(0, p)
                    site.addsitedir(p)
            import numpy, sklearn, onnxruntime, inference
            a = numpy.arange(4.0)
            return [numpy.__version__, sklearn.__version__, onnxruntime.__version__,
                    inference.__file__, str(float(a.sum()))]
            $$""")
        np_v, skl_v, ort_v, inference_file, total = conn.execute(
            "SELECT probe(%s)", (plpython_path,)).fetchone()[0]
    import numpy
    import onnxruntime
    import sklearn

    assert (np_v, skl_v, ort_v) == (numpy.__version__, sklearn.__version__,
                                    onnxruntime.__version__)
    assert inference_file.startswith(plpython_path[0])
    assert total == "6.0"


def test_fresh_databases_are_isolated(source_db, pg_source):
    source_db.execute("CREATE TABLE t (id int primary key)")
    with pg_source.connect() as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
    assert source_db.name in names
    with pytest.raises(psycopg.errors.UndefinedTable):
        with pg_source.connect() as conn:
            conn.execute("SELECT * FROM t")


def test_password_roles_need_their_password(pg_source):
    with pg_source.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS pw_user")
        conn.execute("CREATE ROLE pw_user LOGIN PASSWORD 's3cret' IN ROLE pw_required")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_source.dsn(user="pw_user", password="wrong")).close()
    psycopg.connect(pg_source.dsn(user="pw_user", password="s3cret")).close()
