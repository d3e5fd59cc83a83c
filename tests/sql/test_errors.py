"""Errors: clear PostgreSQL errors for every mistake the issue lists, nothing half-written
after any of them, and names that are data, never SQL."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from tests.sql.helpers import connect, counts, one

E = psycopg.errors


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        c.execute("SELECT pgml.load_dataset('diabetes'), pgml.load_dataset('iris')")
        c.execute("CREATE TABLE victim (id int)")
        c.execute("CREATE TABLE empty (x float8, y float8)")
        c.execute("CREATE TABLE tiny (x float8, y float8)")
        c.execute("INSERT INTO tiny VALUES (1, 1), (2, 2)")
        c.execute("CREATE TABLE texty (x float8, label text, y float8)")
        c.execute("INSERT INTO texty SELECT g, 'a', g FROM generate_series(1, 20) g")
        c.execute("CREATE TABLE jsony AS SELECT g::float8 AS x, '{}'::jsonb AS doc, g::float8 AS y"
                  " FROM generate_series(1, 20) g")
        c.execute("CREATE TABLE one_class AS SELECT g::float8 AS x, 1 AS y"
                  " FROM generate_series(1, 20) g")
        c.execute("CREATE TABLE null_y AS SELECT g::float8 AS x,"
                  " CASE WHEN g % 5 = 0 THEN NULL ELSE g END::float8 AS y"
                  " FROM generate_series(1, 20) g")
        yield c


BAD_TRAINS = [
    # (call, SQLSTATE class, message fragment)
    ("pgml.train('new')", E.UndefinedObject, "needs task, relation_name and y_column_name"),
    ("pgml.train('p', 'regression', 'no_such_table', 'y')", E.UndefinedTable,
     "relation 'no_such_table' does not exist"),
    ("pgml.train('p', 'regression', 'pgml.diabetes', 'nope')", E.UndefinedColumn,
     "column 'nope' does not exist in pgml.diabetes; its columns are: age, sex"),
    ("pgml.train('p', 'regression', 'jsony', 'y')", E.DatatypeMismatch,
     "feature column 'doc' of public.jsony has type jsonb"),
    ("pgml.train('p', 'regression', 'jsony', 'doc')", E.DatatypeMismatch,
     "y column 'doc' of public.jsony has type jsonb"),
    ("pgml.train('p', 'regression', 'texty', 'label')", E.DatatypeMismatch,
     "y column 'label' is text: only classification takes text labels"),
    ("pgml.train('p', 'regression', 'empty', 'y')", E.DataException, "the relation is empty"),
    ("pgml.train('p', 'regression', 'tiny', 'y')", E.DataException,
     "has 2 row(s): test_size 0.25 leaves 1 for training"),
    ("pgml.train('p', 'classification', 'one_class', 'y')", E.DataException,
     "at least two classes"),
    ("pgml.train('p', 'regression', 'null_y', 'y')", E.DataException,
     "y column 'y' has 4 NULL value(s)"),
    ("pgml.train('p', 'regression', 'pgml.diabetes', 'target', 'ridge', '{\"alpah\": 1}')",
     E.InvalidParameterValue, "alpah"),
    ("pgml.train('p', 'regression', 'pgml.diabetes', 'target', 'xgboost', '{\"n_estimatorz\": 3}')",
     E.InvalidParameterValue, "n_estimatorz"),
    ("pgml.train('p', 'regression', 'pgml.diabetes', 'target', 'deep_magic')",
     E.InvalidParameterValue, "valid names: ada_boost, automatic_relevance_determination"),
    ("pgml.train('p', 'classification', 'pgml.iris', 'target', 'lasso')",
     E.InvalidParameterValue, "it exists for regression only"),
    ("pgml.train('p', 'text-generation', 'pgml.iris', 'target')", E.InvalidParameterValue,
     "task 'text-generation' is not supported"),
    ("pgml.train('p', 'clustering', 'pgml.iris', 'target')", E.InvalidParameterValue,
     "clustering learns without a label"),
    ("pgml.train('p', 'regression', 'pgml.diabetes', 'target', test_size => 1.5)",
     E.DataException, "test_size must be between 0 and 1"),
    ("pgml.train('p', 'regression', 'pgml.diabetes', 'target', test_sampling => 'middle')",
     E.InvalidParameterValue, "random, first, last"),
    ("pgml.train('p', 'regression', 'pgml.diabetes', 'target', hyperparams => '[1]')",
     E.InvalidParameterValue, "hyperparams must be a JSON object"),
    ("pgml.train_joint('p', 'classification', 'pgml.iris', ARRAY['target'])",
     E.InvalidParameterValue, "regression only"),
]


@pytest.mark.parametrize(("call", "error", "fragment"), BAD_TRAINS,
                         ids=[c[0][11:60] for c in BAD_TRAINS])
def test_bad_train_is_a_clear_error_and_writes_nothing(conn, call, error, fragment):
    before = counts(conn)
    with pytest.raises(error) as err:
        conn.execute(f"SELECT * FROM {call}")  # noqa: S608 - the test's own fixed calls
    assert fragment in err.value.diag.message_primary
    assert counts(conn) == before
    assert not conn.notices


def test_a_failed_train_of_an_existing_project_leaves_it_as_it_was(conn):
    conn.execute("SELECT pgml.train('kept', 'regression', 'pgml.diabetes', 'target')")
    before = counts(conn)
    with pytest.raises(E.InvalidParameterValue):
        conn.execute("SELECT pgml.train('kept', algorithm => 'ridge', hyperparams => '{\"x\": 1}')")
    conn.execute("CREATE TABLE holey AS SELECT * FROM pgml.diabetes")
    conn.execute("UPDATE holey SET target = NULL WHERE age > 0.05")
    with pytest.raises(E.DataException, match="NULL"):  # fails after materializing a snapshot
        conn.execute("SELECT pgml.train('kept', relation_name => 'holey')")
    assert counts(conn) == before
    # also when the error is caught inside a PL/pgSQL block (a subtransaction)
    conn.execute("""DO $$ BEGIN
        PERFORM pgml.train('kept', relation_name => 'pgml.diabetes', algorithm => 'nope');
        EXCEPTION WHEN invalid_parameter_value THEN NULL; END $$""")
    assert counts(conn) == before


def test_project_task_cannot_change(conn):
    conn.execute("SELECT pgml.train('fixed', 'regression', 'pgml.iris', 'target')")
    with pytest.raises(psycopg.Error, match="is a regression project, not classification"):
        conn.execute("SELECT pgml.train('fixed', 'classification')")


@pytest.mark.parametrize("name", ["victim; DROP TABLE victim", "x; DROP TABLE victim",
                                  "pgml.iris; DROP TABLE victim --", "\"victim\" CASCADE"])
def test_relation_names_cannot_inject_sql(conn, name):
    with pytest.raises(E.UndefinedTable):
        conn.execute("SELECT pgml.train('inj', 'regression', %s, 'target')", (name,))
    with pytest.raises(E.UndefinedTable):
        conn.execute("SELECT pgml.snapshot(%s, 'target')", (name,))
    assert one(conn, "SELECT to_regclass('victim') IS NOT NULL") is True


def test_odd_project_and_column_names_are_data(conn):
    """Quotes, semicolons and spaces in names survive as names: bound parameters and
    quote_ident all the way through train, snapshot and predict."""
    table, x, y = "we'ird; tab", "col; DROP TABLE victim", 'Y"q'
    conn.execute(sql.SQL("CREATE TABLE {} ({} float8, {} float8)").format(
        sql.Identifier(table), sql.Identifier(x), sql.Identifier(y)))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, 2 * g FROM generate_series(1, 40) g").format(
        sql.Identifier(table)))
    project = "it's; DROP TABLE victim --"
    row = conn.execute("SELECT * FROM pgml.train(%s, 'regression', %s, %s)",
                       (project, sql.Identifier(table).as_string(conn), y)).fetchone()
    assert row[0] == project and row[3] is True
    assert one(conn, "SELECT pgml.predict(%s, ARRAY[10]::float8[])", (project,)) == \
        pytest.approx(20, abs=1e-3)
    assert one(conn, "SELECT to_regclass('victim') IS NOT NULL") is True
