"""`writeback()`: set up (or remove) a project's predictions readable on the source.

Why this order: the replica side first (the reader role, the mode of each exposure), because
it tells where the replica is and which views exist; then the source side, which proves at the
end that the source can read through what it made. Each side is one transaction. This is the
one place errors leave the package: every message is scrubbed of the DSNs' passwords and the
reader's, since servers may echo what they were sent.
"""

from __future__ import annotations

import logging
import os

import psycopg

from replica.errors import WritebackError
from replica.secrets import describe, scrub, secrets_of
from replica.writeback.model import (
    DEFAULT_PASSWORD_ENV,
    DEFAULT_READER,
    DEFAULT_SCHEMA,
    DEFAULT_SERVER,
    WritebackResult,
)
from replica.writeback.removal import drop as drop_writeback
from replica.writeback.replica_side import setup_replica
from replica.writeback.secret_ddl import read_password
from replica.writeback.source_side import setup_source

log = logging.getLogger(__name__)


def writeback(source_dsn: str, target_dsn: str, project: str, schema: str = DEFAULT_SCHEMA,
              replica_host: str | None = None, replica_port: int | str | None = None,
              replica_user: str = DEFAULT_READER, password_env: str | None = DEFAULT_PASSWORD_ENV,
              password_file: str | os.PathLike | None = None, materialize: bool = False,
              drop: bool = False, server: str = DEFAULT_SERVER) -> WritebackResult:
    """Set up (or with ``drop`` remove) predictions of ``project`` readable on the source.

    ``replica_host``/``replica_port`` say how the *source* reaches the replica; they default
    to the host and port of ``target_dsn``, which is how this process reaches it.
    """
    secrets = secrets_of(source_dsn, target_dsn)
    try:
        if drop:
            return drop_writeback(source_dsn, target_dsn, project, schema, server, replica_user)
        password = read_password(password_env, password_file)
        secrets.append(password)
        return _setup(source_dsn, target_dsn, project, schema, replica_host, replica_port,
                      replica_user, password, materialize, server)
    except WritebackError as exc:
        # servers may echo what they were sent; nothing secret leaves this package
        raise WritebackError(scrub(str(exc), secrets)) from None
    except psycopg.Error as exc:
        raise WritebackError(scrub(f"write-back failed ({describe(source_dsn)} -> "
                                   f"{describe(target_dsn)}): {exc}", secrets)) from None


def source_reaches(seen_here: dict[str, str], replica_host: str | None,
                   replica_port: int | str | None) -> tuple[dict[str, str], str | None]:
    """Where the *source* reaches the replica (host, port, dbname for the foreign server),
    and a note when part of it is a guess: how this process reaches it."""
    note = None
    if replica_host is None or replica_port is None:
        note = (f"the source reaches the replica at {replica_host or seen_here['host']}:"
                f"{replica_port or seen_here['port']} (as this process does); pass "
                f"--replica-host/--replica-port when it reaches it another way")
    where = dict(seen_here)
    if replica_host is not None:
        where["host"] = replica_host
    if replica_port is not None:
        where["port"] = str(replica_port)
    if where["host"].startswith("/"):
        raise WritebackError("the target DSN connects over a Unix socket, which the source "
                             "cannot use: pass --replica-host (and --replica-port)")
    return where, note


def _setup(source_dsn: str, target_dsn: str, project: str, schema: str,
           replica_host: str | None, replica_port: int | str | None, reader: str,
           password: str, materialize: bool, server: str) -> WritebackResult:
    exposures, everything, seen_here = setup_replica(target_dsn, project, reader, password,
                                                     materialize)
    result = WritebackResult(schema=schema, server=server, exposures=exposures)
    where, note = source_reaches(seen_here, replica_host, replica_port)
    if note:
        result.notes.append(note)
    setup_source(source_dsn, schema, server, reader, password, where, exposures,
                 everything, result)
    log.info("write-back of project %r ready: %s", project, ", ".join(result.foreign_tables))
    return result
