"""Rows between Postgres and the in-backend DuckDB of pgml.as_of / point_in_time / compaction.

Why a module of its own: moving rows is most of the cost of a point-in-time join (profiled at
800k versions and a 50k spine: reading the versions through plpy took over half the time, the
ASOF join itself a small part), and there are two ways to do it:

- **Files** (fast): when the caller may read and write server files (superuser, or a member of
  ``pg_read_server_files`` and ``pg_write_server_files``), Postgres writes the rows with
  ``COPY (query) TO 'file' (FORMAT csv)`` and DuckDB reads them with its CSV reader; the result
  goes back the same way (DuckDB ``COPY ... TO`` CSV, Postgres ``COPY table FROM 'file'``, one
  statement, in the caller's transaction). No Python object per value. The files live in a
  private (0700) directory of the server's OS user, removed when the call ends.
- **plpy** (any caller): one ``array_agg`` per column, a pandas frame registered in DuckDB; back
  with ``INSERT ... SELECT casts FROM unnest($1::text[], ...)``.

Both carry data columns as text (cast back to the column's type on the way out, so any type
travels) and give the same rows (tests/sql/test_history.py runs both: the plpy one as a role
without file rights).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import plpy

_CSV_IN = "header = false, delim = ',', quote = '\"', escape = '\"', auto_detect = false," \
          " allow_quoted_nulls = false"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Transfer:
    """One call's way of moving rows; use as a context manager (removes its files)."""

    def __init__(self, files: bool | None = None) -> None:
        if files is None:
            files = plpy.execute(
                "SELECT pg_has_role('pg_read_server_files', 'USAGE')"
                " AND pg_has_role('pg_write_server_files', 'USAGE') AS ok")[0]["ok"]
        self.files = bool(files)
        self.dir = tempfile.mkdtemp(prefix="pgml-history-") if self.files else None
        self._n = 0

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _path(self, suffix: str) -> str:
        self._n += 1
        return os.path.join(self.dir, f"{self._n}{suffix}")

    def read(self, con, name: str, select: list[tuple[str, str, str]], relation: str) -> int:
        """DuckDB temp table ``name`` from ``SELECT expr AS alias ... FROM relation``; select
        holds (Postgres expression, alias, DuckDB type). Returns its row count."""
        exprs = ", ".join(f"{e} AS {a}" for e, a, _ in select)
        query = f"SELECT {exprs} FROM {relation}"  # noqa: S608
        if self.files:
            path = self._path(".csv")
            plpy.execute(f"COPY ({query}) TO {_lit(path)} (FORMAT csv)")
            cols = ", ".join(f"'{a}': '{t}'" for _, a, t in select)
            con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM read_csv({_lit(path)},"  # noqa: S608
                        f" {_CSV_IN}, columns = {{{cols}}})")
            os.unlink(path)
        else:
            import pandas as pd

            aggs = ", ".join(f"array_agg({e}) AS {a}" for e, a, _ in select)
            row = plpy.execute(f"SELECT {aggs} FROM {relation}")[0]  # noqa: S608
            frame = pd.DataFrame({a: pd.Series(row[a] or [], dtype=object) for _, a, _ in select})
            con.register(f"{name}_frame", frame)
            casts = ", ".join(f"{a}::{t} AS {a}" for _, a, t in select)
            con.execute(f"CREATE TEMP TABLE {name} AS SELECT {casts} FROM {name}_frame")  # noqa: S608
            con.unregister(f"{name}_frame")
        return con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]  # noqa: S608

    def write(self, con, qual: str, columns: list[tuple[str, str]], query: str) -> None:
        """CREATE TABLE ``qual`` (columns) in Postgres and fill it with the rows of DuckDB
        ``query`` (text values, in its order)."""
        plpy.execute(f"CREATE TABLE {qual} ({', '.join(f'{plpy.quote_ident(c)} {t}' for c, t in columns)})")
        if self.files:
            path = self._path(".csv")
            con.execute(f"COPY ({query}) TO {_lit(path)} (FORMAT csv, HEADER false)")
            plpy.execute(f"COPY {qual} FROM {_lit(path)} (FORMAT csv)")
            os.unlink(path)
            return
        rows = con.execute(query).fetchall()
        if not rows:
            return
        n = len(columns)
        arrays = [[r[i] for r in rows] for i in range(n)]
        args = ", ".join(f"${i + 1}" for i in range(n))
        casts = ", ".join(f"u.a{i}::{t}" for i, (_, t) in enumerate(columns))
        alias = ", ".join(f"a{i}" for i in range(n))
        plan = plpy.prepare(f"INSERT INTO {qual} SELECT {casts} FROM unnest({args})"  # noqa: S608
                            f" AS u({alias})", ["text[]"] * n)
        plpy.execute(plan, arrays)
