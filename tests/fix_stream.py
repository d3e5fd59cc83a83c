"""Real replication streams for the suite: a slot, START_REPLICATION, decoded messages.

The ``stream`` fixture records what a logical slot delivers for what a test did: the test
writes to its own database (``source_db``), calls ``stream.end_marker(db)`` (a
non-transactional logical message with prefix ``golden-end``), and ``stream.capture`` reads
the slot from its consistent point until that marker, so the capture holds exactly what
the test did. Every wait is bounded.

Why a client of its own, on psycopg's ``pq`` layer, instead of the sidecar's
``ReplicationConnection``: the decoder is a library that must be testable without the
application built on it (issue 9: tests mirror the packages). This client is deliberately
small - no error tree, no secrets handling, no retry - and pins the session settings a
pgoutput consumer relies on, as PostgreSQL's own subscriber (libpqwalreceiver) does:
DateStyle=ISO, IntervalStyle=postgres, extra_float_digits=3, TimeZone=UTC and UTF8. Options
in the caller's DSN come after ours, so they win. A test of another replication client (the
sidecar's) passes ``connect=`` to ``capture`` and so reads the same stream through it.
"""

from __future__ import annotations

import itertools
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import decoder
from decoder import Decoder, LogicalMessage, Message, PrimaryKeepalive

END_PREFIX = "golden-end"
PINNED = {"datestyle": "ISO", "intervalstyle": "postgres", "extra_float_digits": "3",
          "timezone": "UTC"}
_slots = itertools.count()


class StreamClient(Protocol):
    """What ``capture`` needs of a replication connection (this module's or the sidecar's)."""

    def start(self, slot: str, start_lsn: int, options: dict[str, str]) -> None: ...
    def read(self, timeout: float) -> bytes | None: ...
    def send(self, data: bytes) -> None: ...
    def __enter__(self) -> StreamClient: ...
    def __exit__(self, *exc: object) -> None: ...


def _ident(name: str) -> str:
    return sql.Identifier(name).as_string()


def _literal(value: str) -> str:
    """The replication grammar has no E'' strings: quote by doubling."""
    return "'" + value.replace("'", "''") + "'"


class PqReplication:
    """One ``replication=database`` connection over ``pq.PGconn``: replication commands, then
    a COPY BOTH stream read with ``get_copy_data`` and a bounded ``select`` wait."""

    def __init__(self, dsn: str) -> None:
        params: dict[str, Any] = dict(conninfo_to_dict(dsn))
        pinned = " ".join(f"-c {k}={v}" for k, v in PINNED.items())
        params.update(replication="database", application_name="tests-fix-stream",
                      client_encoding="UTF8",
                      options=f"{pinned} {params.get('options') or ''}".strip())
        self._pgconn = pq.PGconn.connect(make_conninfo("", **params).encode())
        if self._pgconn.status != pq.ConnStatus.OK:
            message = self._message()
            self._pgconn.finish()
            raise ConnectionError(f"cannot open a replication connection: {message}")
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._pgconn.socket, selectors.EVENT_READ)

    def command(self, command: str) -> list[tuple[str | None, ...]]:
        """One replication command (not while streaming); its rows as text."""
        result = self._pgconn.exec_(command.encode())
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise RuntimeError(f"{command.split()[0]} failed: {self._message(result)}")
        return [tuple(None if (v := result.get_value(r, c)) is None else bytes(v).decode()
                      for c in range(result.nfields)) for r in range(result.ntuples)]

    def start(self, slot: str, start_lsn: int, options: dict[str, str]) -> None:
        """START_REPLICATION SLOT ... LOGICAL; ``publication_names`` is a comma-separated
        list of plain names, each quoted here."""
        parts = []
        for key, value in options.items():
            if key == "publication_names":
                value = ",".join(_ident(n.strip()) for n in value.split(",") if n.strip())
            parts.append(f"{_ident(key)} {_literal(value)}")
        command = (f"START_REPLICATION SLOT {_ident(slot)} LOGICAL "
                   f"{decoder.format_lsn(start_lsn)} ({', '.join(parts)})")
        self._pgconn.send_query(command.encode())
        result = self._pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            raise RuntimeError(f"START_REPLICATION failed: {self._message(result)}")

    def read(self, timeout: float) -> bytes | None:
        """The next CopyData payload, or None after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        while True:
            nbytes, data = self._pgconn.get_copy_data(1)
            if nbytes > 0:
                return bytes(data)
            if nbytes == -1:
                result = self._pgconn.get_result()
                raise RuntimeError(f"the server ended the stream: {self._message(result)}")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self._selector.select(left):
                self._pgconn.consume_input()

    def send(self, data: bytes) -> None:
        """One CopyData message to the server (a standby status update), flushed."""
        self._pgconn.put_copy_data(data)
        self._pgconn.flush()

    def close(self) -> None:
        self._selector.close()
        self._pgconn.finish()

    def __enter__(self) -> PqReplication:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _message(self, result: pq.abc.PGresult | None = None) -> str:
        raw = (result.error_message if result is not None else b"") or \
            self._pgconn.error_message
        return bytes(raw).decode("utf-8", "replace").strip() or "no message from the server"


@dataclass
class Capture:
    """What one START_REPLICATION session delivered, up to the end marker."""

    decoder: Decoder
    payloads: list[bytes] = field(default_factory=list)  # XLogData payloads, in order
    messages: list[Message] = field(default_factory=list)  # decoded, marker excluded
    keepalives: int = 0

    def of(self, cls: type) -> list:
        return [m for m in self.messages if isinstance(m, cls)]

    def names(self) -> list[str]:
        return [type(m).__name__ for m in self.messages]

    def rows(self, cls: type, attr: str = "new_tuple") -> list[tuple]:
        """values() of every ``attr`` tuple of messages of ``cls``."""
        return [getattr(m, attr).values(self.decoder.relation(m.relation_id))
                for m in self.of(cls)]


class Streams:
    """The ``stream`` fixture: make slots, mark the end of a test's writes, capture."""

    def connect(self, dsn: str) -> PqReplication:
        """A replication connection of this module's own, for a test that drives the
        stream itself (start, read, send)."""
        return PqReplication(dsn)

    def create_slot(self, db, *, two_phase: bool = False) -> tuple[str, int]:
        """A pgoutput slot (no snapshot) in ``db``; its name and consistent point."""
        name = f"golden_{next(_slots)}"
        with PqReplication(db.dsn) as conn:
            row = conn.command(f"CREATE_REPLICATION_SLOT {_ident(name)} LOGICAL pgoutput "
                               f"(SNAPSHOT 'nothing'{', TWO_PHASE' if two_phase else ''})")[0]
        assert row[1] is not None
        return name, decoder.parse_lsn(row[1])

    def end_marker(self, db) -> None:
        db.execute("SELECT pg_logical_emit_message(false, %s, '')", (END_PREFIX,))

    def capture(self, db, slot: str, start_lsn: int, *, publication: str = "pub",
                proto: int = 1, binary: bool = False, extra: dict[str, str] | None = None,
                dsn_options: str = "", timeout: float = 60,
                connect: Callable[[str], StreamClient] | None = None) -> Capture:
        """Stream ``slot`` from ``start_lsn`` until the end marker; decode every message.

        ``connect`` (a DSN -> client factory) reads through another replication client;
        by default this module's ``PqReplication``."""
        options = {"proto_version": str(proto), "publication_names": publication,
                   "messages": "true", "binary": "true" if binary else "false",
                   **(extra or {})}
        dsn = db.dsn + (f" options='{dsn_options}'" if dsn_options else "")
        cap = Capture(Decoder(protocol_version=proto))
        deadline = time.monotonic() + timeout
        with (connect or PqReplication)(dsn) as conn:
            conn.start(slot, start_lsn, options)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no end marker within {timeout}s; got {cap.names()}")
                data = conn.read(min(left, 1.0))
                if data is None:
                    continue
                frame = decoder.parse_copy_data(data)
                if isinstance(frame, PrimaryKeepalive):
                    cap.keepalives += 1
                    if frame.reply_requested:
                        conn.send(decoder.standby_status_update(frame.wal_end, 0, 0))
                    continue
                msg = cap.decoder.decode(frame.payload)
                if isinstance(msg, LogicalMessage) and msg.prefix == END_PREFIX:
                    return cap
                cap.payloads.append(frame.payload)
                cap.messages.append(msg)


@pytest.fixture(scope="session")
def stream() -> Streams:
    """Slots, end markers and captured replication streams (see the module docstring)."""
    return Streams()

