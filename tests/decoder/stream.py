"""Golden-test plumbing: a real slot, a real START_REPLICATION stream, decoded messages.

Each test writes to its own database, then reads the slot from its consistent point until
an end marker (a non-transactional logical message with prefix ``golden-end``), so the
captured stream holds exactly what the test did. Every wait is bounded.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import decoder
from decoder import Decoder, LogicalMessage, Message, PrimaryKeepalive
from replica.source.replconn import ReplicationConnection

END_PREFIX = "golden-end"
_slots = itertools.count()


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


def create_slot(db, *, two_phase: bool = False) -> tuple[str, int]:
    name = f"golden_{next(_slots)}"
    with ReplicationConnection(db.dsn) as conn:
        created = conn.create_slot(name, snapshot="nothing", two_phase=two_phase)
    return name, created["consistent_point"]


def end_marker(db) -> None:
    db.execute("SELECT pg_logical_emit_message(false, %s, '')", (END_PREFIX,))


def capture(db, slot: str, start_lsn: int, *, publication: str = "pub", proto: int = 1,
            binary: bool = False, extra: dict[str, str] | None = None,
            dsn_options: str = "", timeout: float = 60) -> Capture:
    """Stream ``slot`` from ``start_lsn`` until the end marker; decode every message."""
    options = {"proto_version": str(proto), "publication_names": publication,
               "messages": "true", "binary": "true" if binary else "false", **(extra or {})}
    dsn = db.dsn + (f" options='{dsn_options}'" if dsn_options else "")
    cap = Capture(Decoder(protocol_version=proto))
    deadline = time.monotonic() + timeout
    with ReplicationConnection(dsn) as conn:
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
