"""One replication connection (``replication=database``) over psycopg's ``pq`` layer.

Why ``pq`` and not ``psycopg.Connection``: a replication stream is one long COPY BOTH in
which both sides send CopyData whenever they like; psycopg's high-level COPY cannot
interleave reads and writes that way, ``pq.PGconn`` can. This module is the thin I/O
wrapper - blocking calls, a ``select`` wait bounded by the caller's timeout - and knows
nothing about pgoutput: ``read()`` hands back raw CopyData for ``decoder.parse_copy_data``
(``read_buffer()`` the same without copying it out of libpq's buffer).

Session settings: like PostgreSQL's own subscriber (libpqwalreceiver), the connection asks
the walsender for DateStyle=ISO, IntervalStyle=postgres and extra_float_digits=3, so text
values have the one form the decoder parses and floats round-trip exactly, and for
client_encoding=UTF8, the encoding the decoder reads. Options in the caller's DSN (for
example ``-c logical_decoding_work_mem=64kB``) come after ours, so they win.

Replication commands take no bound parameters: the slot name and option names are quoted
with ``psycopg.sql.Identifier``, option values as single-quoted literals with ``''``
doubling (the replication grammar has no ``E''`` strings, so psycopg's Literal does not fit).
"""

from __future__ import annotations

import re
import selectors
import time
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from decoder import format_lsn, parse_lsn
from replica.connect import network_defaults, resolve_password, with_pinned_options
from replica.errors import (
    ReplicationConnectionError,
    ReplicationDsnError,
    ReplicationError,
    ReplicationStreamEnded,
    command_error,
    permanent_connect_code,
    rejected,
)
from replica.secrets import describe, scrub, secrets_of

_OPTION_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
_SNAPSHOT_ACTIONS = ("export", "use", "nothing")


def _literal(value: str) -> str:
    if "\0" in value:
        raise ValueError("a replication option value cannot contain NUL")
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    if not name or "\0" in name:
        raise ValueError(f"{name!r} is not a valid identifier")
    return sql.Identifier(name).as_string()


def _publication_list(value: str) -> str:
    """``"a, My Pub"`` -> ``"a","My Pub"`` (already double-quoted names are kept)."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ValueError("publication_names needs at least one publication")
    return ",".join(n if len(n) > 1 and n[0] == n[-1] == '"' else _ident(n) for n in names)


class ReplicationConnection:
    """One replication=database connection (psycopg.pq.PGconn), blocking I/O only; no decoding."""

    def __init__(self, dsn: str, *, application_name: str = "pgml-replica") -> None:
        self._secrets = secrets_of(dsn)
        self._where = describe(dsn)
        try:
            params: dict[str, Any] = dict(conninfo_to_dict(dsn))
        except psycopg.Error:
            raise ReplicationDsnError("the source connection string cannot be parsed; check "
                                      "its key=value quoting or URI escaping") from None
        params.update(replication="database", application_name=application_name,
                      client_encoding="UTF8", options=with_pinned_options(params),
                      **resolve_password("source", params))
        params.update(network_defaults(params))  # a silent network path is noticed
        self._pgconn = pq.PGconn.connect(make_conninfo("", **params).encode())
        if self._pgconn.status != pq.ConnStatus.OK:
            message = self._server_message()
            self._pgconn.finish()
            doing = f"opening a replication connection to {self._where}"
            if code := permanent_connect_code(message):
                raise rejected(code, "source", doing, message)
            raise ReplicationConnectionError(f"cannot open a replication connection to "
                                             f"{self._where}: {message}")
        self._selector: selectors.DefaultSelector | None = None
        self._copying = False
        self._closed = False

    # -- commands --------------------------------------------------------------------

    def identify_system(self) -> dict:
        row = self._command("IDENTIFY_SYSTEM")[0]
        return {"systemid": row[0], "timeline": int(row[1]), "xlogpos": parse_lsn(row[2]),
                "dbname": row[3]}

    def create_slot(self, name: str, *, snapshot: str = "export", temporary: bool = False,
                    two_phase: bool = False, failover: bool = False) -> dict:
        """CREATE_REPLICATION_SLOT ... LOGICAL pgoutput. The exported snapshot stays valid
        only while this connection stays open and runs no other command. ``failover``
        (PostgreSQL 17+, not for a temporary slot): standbys with sync_replication_slots
        keep a copy of the slot, so it survives a failover to one of them."""
        if snapshot not in _SNAPSHOT_ACTIONS:
            raise ValueError(f"snapshot must be one of {_SNAPSHOT_ACTIONS}, not {snapshot!r}")
        options = (f"SNAPSHOT {_literal(snapshot)}" + (", TWO_PHASE" if two_phase else "")
                   + (", FAILOVER" if failover else ""))
        row = self._command(f"CREATE_REPLICATION_SLOT {_ident(name)}"
                            f"{' TEMPORARY' if temporary else ''} LOGICAL pgoutput ({options})")[0]
        return {"slot_name": row[0], "consistent_point": parse_lsn(row[1]),
                "snapshot_name": row[2], "output_plugin": row[3]}

    def alter_slot_failover(self, name: str, failover: bool = True) -> None:
        """ALTER_REPLICATION_SLOT (PostgreSQL 17+): make an existing, inactive slot a
        failover slot (or not)."""
        self._command(f"ALTER_REPLICATION_SLOT {_ident(name)} "
                      f"(FAILOVER {'true' if failover else 'false'})")

    def drop_slot(self, name: str, wait: bool = True) -> None:
        self._command(f"DROP_REPLICATION_SLOT {_ident(name)}{' WAIT' if wait else ''}")

    def start(self, slot: str, start_lsn: int, options: dict[str, str]) -> None:
        """START_REPLICATION SLOT ... LOGICAL; the connection is then in COPY BOTH mode.

        ``options`` are pgoutput's (proto_version, publication_names, binary, messages,
        streaming, two_phase, origin); ``publication_names`` is a comma-separated list of
        plain names, each quoted here.
        """
        parts = []
        for key, value in options.items():
            if not _OPTION_NAME.match(key):
                raise ValueError(f"{key!r} is not a pgoutput option name")
            text = _publication_list(value) if key == "publication_names" else str(value)
            parts.append(f"{_ident(key)} {_literal(text)}")
        command = (f"START_REPLICATION SLOT {_ident(slot)} LOGICAL {format_lsn(start_lsn)}"
                   + (f" ({', '.join(parts)})" if parts else ""))
        self._require_open()
        try:
            self._pgconn.send_query(command.encode())
        except psycopg.OperationalError:
            raise self._lost("cannot send START_REPLICATION") from None
        result = self._pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            self._drain()
            raise self._refused("START_REPLICATION", result)
        self._copying = True

    # -- the stream ------------------------------------------------------------------

    def read(self, timeout: float) -> bytes | None:
        """The next CopyData payload (starting b'w' or b'k'), or None after ``timeout``
        seconds without one."""
        data = self.read_buffer(timeout)
        return None if data is None else bytes(data)

    def read_buffer(self, timeout: float) -> bytes | memoryview | None:
        """``read`` without making bytes of it: the buffer libpq filled (a memoryview, kept
        alive as long as it is referenced). For the stream's hot path, which decodes a change
        straight out of it (decoder._speedups.frame_change): one copy per message less."""
        if not self._copying:  # (per message: the checks and the clock only when needed)
            self._require_copying()
        pgconn = self._pgconn
        deadline = None
        while True:
            try:
                nbytes, data = pgconn.get_copy_data(1)
            except psycopg.OperationalError:
                raise self._lost("the replication stream broke") from None
            if nbytes > 0:
                return data
            if nbytes == -1:
                self._copying = False
                raise self._ended()
            if deadline is None:
                deadline = time.monotonic() + timeout
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.readable(left):
                try:
                    pgconn.consume_input()
                except psycopg.OperationalError:
                    raise self._lost("the replication stream broke") from None

    def readable(self, timeout: float = 0.0) -> bool:
        """Is there something to read within ``timeout`` seconds? The one place the stream's
        socket is waited on (``read`` waits here too)."""
        if self._selector is None:
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._pgconn.socket, selectors.EVENT_READ)
        return bool(self._selector.select(timeout))

    def send(self, data: bytes) -> None:
        """Send one CopyData message (a standby status update) and flush it."""
        self._require_copying()
        try:
            self._pgconn.put_copy_data(data)
            self._pgconn.flush()
        except psycopg.OperationalError:
            raise self._lost("cannot send to the replication stream") from None

    def fileno(self) -> int:
        self._require_open()
        return self._pgconn.socket

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if not self._closed:
            self._closed = True
            self._pgconn.finish()
        self._copying = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ReplicationConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------

    def _command(self, command: str) -> list[tuple]:
        """Run one replication command; its rows as text."""
        self._require_open()
        if self._copying:
            raise ReplicationError(f"cannot run {command.split()[0]} while streaming; "
                                   "open another ReplicationConnection")
        try:
            result = self._pgconn.exec_(command.encode())
        except psycopg.OperationalError:
            raise self._lost(f"cannot run {command.split()[0]}") from None
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise self._refused(command.split()[0], result)
        return [tuple(None if (v := result.get_value(r, c)) is None else bytes(v).decode()
                      for c in range(result.nfields)) for r in range(result.ntuples)]

    def _require_open(self) -> None:
        if self._closed:
            raise ReplicationError("the replication connection is closed")

    def _require_copying(self) -> None:
        self._require_open()
        if not self._copying:
            raise ReplicationError("not streaming: call start() first")

    def _server_message(self, result: pq.abc.PGresult | None = None) -> str:
        raw = (result.error_message if result is not None else b"") or \
            self._pgconn.error_message
        text = bytes(raw).decode("utf-8", "replace").strip()
        return scrub(text, self._secrets) or "no message from the server"

    def _refused(self, command: str, result: pq.abc.PGresult | None) -> ReplicationError:
        if self._pgconn.status == pq.ConnStatus.BAD:
            return self._lost(f"{command} failed")
        sqlstate = None
        if result is not None and (code := result.error_field(pq.DiagnosticField.SQLSTATE)):
            sqlstate = code.decode()
        return command_error(
            f"{command} on {self._where} failed: {self._server_message(result)}", sqlstate)

    def _lost(self, what: str) -> ReplicationConnectionError:
        self._copying = False
        return ReplicationConnectionError(f"{what} ({self._where}): {self._server_message()}")

    def _ended(self) -> ReplicationError:
        """After the server's CopyDone or an error ending the COPY: collect why."""
        error = self._drain()
        sqlstate, message = None, "the server ended the replication stream"
        if error is not None:
            if code := error.error_field(pq.DiagnosticField.SQLSTATE):
                sqlstate = code.decode()
            message += f": {self._server_message(error)}"
        if self._pgconn.status == pq.ConnStatus.BAD:
            return self._lost(message)
        return ReplicationStreamEnded(f"{message} ({self._where})", sqlstate)

    def _drain(self) -> pq.abc.PGresult | None:
        """Read results until the connection is idle; return the first error among them.

        After the server's CopyDone libpq reports COPY_IN (we may still send): answer with
        our CopyDone so the server can finish the command.
        """
        error = None
        pgconn = self._pgconn
        while pgconn.status == pq.ConnStatus.OK:
            result = pgconn.get_result()
            if result is None:
                break
            if result.status == pq.ExecStatus.COPY_IN:
                try:
                    pgconn.put_copy_end()
                    pgconn.flush()
                except psycopg.OperationalError:
                    break
            elif result.status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = result
        return error
