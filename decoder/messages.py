"""The logical replication messages of pgoutput protocol versions 1-4, as typed values.

Byte layouts (PostgreSQL docs, "Logical Replication Message Formats"). Integers big-endian;
String = NUL-terminated UTF-8; LSNs unsigned Int64; times Int64 µs since 2000-01-01 UTC.
``[xid]`` = Int32 transaction id, present only between Stream Start and Stream Stop
(protocol 2+); it is the subtransaction's id for changes made in one.

======================  ====  ==========================================================
message                 tag   fields after the tag byte
======================  ====  ==========================================================
Begin                   B     Int64 final_lsn, Int64 commit_time, Int32 xid
Commit                  C     Int8 flags, Int64 commit_lsn, Int64 end_lsn, Int64 commit_time
Origin                  O     Int64 commit_lsn, String name
Relation                R     [xid] Int32 relation_id, String namespace ('' = pg_catalog),
                              String name, Int8 replica_identity, Int16 ncols,
                              ncols x (Int8 flags (1 = key), String name, Int32 type_oid,
                              Int32 type_modifier)
Type                    Y     [xid] Int32 type_oid, String namespace, String name
Insert                  I     [xid] Int32 relation_id, 'N' TupleData
Update                  U     [xid] Int32 relation_id, ['K' TupleData | 'O' TupleData],
                              'N' TupleData
Delete                  D     [xid] Int32 relation_id, 'K' | 'O', TupleData
Truncate                T     [xid] Int32 nrels, Int8 options (1 cascade, 2 restart
                              identity), nrels x Int32 relation_id
Message                 M     [xid] Int8 flags (1 = transactional), Int64 lsn, String
                              prefix, Int32 length, Byte[length] content
Stream Start (v2)       S     Int32 xid, Int8 first_segment
Stream Stop (v2)        E     (nothing)
Stream Commit (v2)      c     Int32 xid, Int8 flags, Int64 commit_lsn, Int64 end_lsn,
                              Int64 commit_time
Stream Abort (v2)       A     Int32 xid, Int32 subxid; v4 with streaming = parallel also
                              Int64 abort_lsn, Int64 abort_time
Begin Prepare (v3)      b     Int64 prepare_lsn, Int64 end_lsn, Int64 prepare_time,
                              Int32 xid, String gid
Prepare (v3)            P     Int8 flags, Int64 prepare_lsn, Int64 end_lsn,
                              Int64 prepare_time, Int32 xid, String gid
Commit Prepared (v3)    K     Int8 flags, Int64 commit_lsn, Int64 end_lsn,
                              Int64 commit_time, Int32 xid, String gid
Rollback Prepared (v3)  r     Int8 flags, Int64 prepare_end_lsn, Int64 rollback_end_lsn,
                              Int64 prepare_time, Int64 rollback_time, Int32 xid, String gid
Stream Prepare (v3)     p     Int8 flags, Int64 prepare_lsn, Int64 end_lsn,
                              Int64 prepare_time, Int32 xid, String gid
======================  ====  ==========================================================

TupleData is described in tuples.py. Why frozen dataclasses with slots: messages are values
handed between the stream loop and the apply path; nobody should mutate one in flight, and
slots keep a million of them cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from decoder.tuples import TupleData

if TYPE_CHECKING:
    from decoder.types.registry import LoaderPlan


class Message:
    """Base of every logical replication message (for isinstance checks)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Begin(Message):
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit(Message):
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin(Message):
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a Relation message; ``flags`` bit 1 marks a replica identity column."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation(Message):
    """A table's shape as published; sent before its first change and after DDL.

    ``replica_identity`` is the pg_class.relreplident letter: 'd' default (primary key),
    'n' nothing, 'f' full, 'i' index.
    """

    xid: int | None
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]
    # The loaders per column, filled on first TupleData.values() (see tuples._plan).
    _loaders: LoaderPlan | None = field(default=None, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Type(Message):
    """A non-built-in data type used by a following Relation (enums, domains, composites)."""

    xid: int | None
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert(Message):
    xid: int | None
    relation_id: int
    new_tuple: TupleData


@dataclass(frozen=True, slots=True)
class Update(Message):
    """``key_tuple`` ('K') when the replica identity key changed; ``old_tuple`` ('O') with
    REPLICA IDENTITY FULL; both None otherwise."""

    xid: int | None
    relation_id: int
    old_tuple: TupleData | None
    key_tuple: TupleData | None
    new_tuple: TupleData


@dataclass(frozen=True, slots=True)
class Delete(Message):
    """Exactly one of ``key_tuple`` ('K', identity columns) or ``old_tuple`` ('O', FULL)."""

    xid: int | None
    relation_id: int
    old_tuple: TupleData | None
    key_tuple: TupleData | None


@dataclass(frozen=True, slots=True)
class Truncate(Message):
    xid: int | None
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage(Message):
    """pg_logical_emit_message(); needs the ``messages 'true'`` option."""

    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart(Message):
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop(Message):
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit(Message):
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class StreamAbort(Message):
    """``subxid == xid`` aborts the whole streamed transaction, otherwise one
    subtransaction. ``abort_lsn``/``abort_time`` only with protocol 4 parallel streaming."""

    xid: int
    subxid: int
    abort_lsn: int | None = None
    abort_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class BeginPrepare(Message):
    prepare_lsn: int
    end_lsn: int
    prepare_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class Prepare(Message):
    flags: int
    prepare_lsn: int
    end_lsn: int
    prepare_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class CommitPrepared(Message):
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class RollbackPrepared(Message):
    flags: int
    prepare_end_lsn: int
    rollback_end_lsn: int
    prepare_time: datetime
    rollback_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class StreamPrepare(Message):
    flags: int
    prepare_lsn: int
    end_lsn: int
    prepare_time: datetime
    xid: int
    gid: str
