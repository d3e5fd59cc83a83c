"""The reader's password: where it is read from, and how it reaches DDL without being seen.

Why this dance: the password ends up inside DDL (``CREATE ROLE ... PASSWORD``, a user
mapping's options), and DDL text is what ``log_statement = 'ddl'`` and pg_stat_statements
record. So the secret travels as a bound parameter into a transaction-local setting, and a
``DO`` block splices it in server-side with ``format()``; the statement text we send never
holds it. The password is read from an environment variable or a file, never printed, logged
or put in an error (``writeback`` scrubs every message that leaves the package).
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
from psycopg import sql

from replica.errors import WritebackError
from replica.writeback.model import DEFAULT_PASSWORD_ENV

SECRET_SETTING = "pgml_replica.writeback_secret"


def read_password(password_env: str | None = DEFAULT_PASSWORD_ENV,
                  password_file: str | os.PathLike | None = None) -> str:
    """The reader's password: from the file when one is named, else from the variable."""
    if password_file is not None:
        path = Path(password_file)
        try:
            password = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise WritebackError(f"cannot read the password file {path}: {exc.strerror}") from None
        if not password:
            raise WritebackError(f"the password file {path} is empty")
        return password
    name = password_env or DEFAULT_PASSWORD_ENV
    password = os.environ.get(name, "")
    if not password:
        raise WritebackError(f"no password for the replica's reader role: set the environment "
                             f"variable {name} or pass --password-file")
    return password


def db_error(what: str, exc: psycopg.Error) -> WritebackError:
    """A WritebackError naming the step and the server's message (``writeback`` masks any
    secret in it before it leaves the package)."""
    diag = exc.diag
    parts = [diag.message_primary or str(exc).strip()]
    if diag.message_detail:
        parts.append(diag.message_detail)
    if diag.message_hint:
        parts.append("hint: " + diag.message_hint)
    return WritebackError(f"{what}: {'; '.join(parts)}")


def secret_block(template: str, args: list[str]) -> sql.Composed:
    """The body of the ``DO`` block that runs ``format(template, *args, <the secret>)``.

    Pure: the secret is not an input, only the name of the setting that holds it; the block
    clears that setting once the DDL ran.
    """
    setting = sql.Literal(SECRET_SETTING)
    return sql.SQL("BEGIN EXECUTE format({}{}, current_setting({}));"
                   " PERFORM set_config({}, '', true); END").format(
        sql.Literal(template), sql.SQL("").join(sql.SQL(", {}").format(sql.Literal(a))
                                                for a in args),
        setting, setting)


def execute_with_secret(conn: psycopg.Connection, secret: str, template: str,
                        args: list[str]) -> None:
    """Run ``format(template, *args, secret)`` as DDL inside the server.

    The secret travels as a bind parameter into a transaction-local setting and is cleared
    right after; the DDL text that carries it never appears as a top-level statement. Needs
    an open transaction: the setting is transaction-local.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise RuntimeError("execute_with_secret must run inside a transaction")
    conn.execute("SELECT set_config(%s, %s, true)", (SECRET_SETTING, secret))
    body = secret_block(template, args).as_string(conn)
    conn.execute(sql.SQL("DO {}").format(sql.Literal(body)))
