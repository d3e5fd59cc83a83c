"""`make demo` prints the SQL it runs with its values in place (devtools/demo.shown_sql),
quoted by psycopg exactly as the server would read it: the printed text, run as it is,
gives the same answer as the bound statement."""

from __future__ import annotations

import psycopg
from psycopg import sql

from devtools.demo import shown_sql


def test_printed_sql_has_the_values_and_runs_as_printed(source_db):
    with psycopg.connect(source_db.dsn, autocommit=True) as conn:
        query = ("SELECT * FROM (VALUES (%s::text, %s::text, %s::int)) v(project, algorithm, n)")
        params = ("diabetes progression", "it's xgboost", 3)
        text = shown_sql(conn, query, params)
        assert "%s" not in text
        assert text == ("SELECT * FROM (VALUES ('diabetes progression'::text,"
                        " 'it''s xgboost'::text, 3::int)) v(project, algorithm, n)")
        assert conn.execute(text).fetchall() == conn.execute(query, params).fetchall()
        composed = sql.SQL("SELECT {} FROM (SELECT 1 AS \"a b\") t WHERE 1 = %s").format(
            sql.Identifier("a b"))
        assert shown_sql(conn, composed, (1,)) == 'SELECT "a b" FROM (SELECT 1 AS "a b") t WHERE 1 = 1'
        # a statement without parameters is printed as it is, on one line
        assert shown_sql(conn, "SELECT 1,\n   2") == "SELECT 1, 2"
