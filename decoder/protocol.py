"""The stateful pgoutput decoder: one payload (the bytes after the XLogData header) in, one
message out. Byte layouts of every message are tabled in messages.py, TupleData in tuples.py.

Why stateful: between Stream Start and Stream Stop (protocol 2+) the change messages carry
an extra leading xid that nothing inside the message announces, so the decoder must know
whether a streamed block is open. It also remembers Relation and Type messages, which the
server sends once per session before the first change that needs them.

Strictness: every field is bounds-checked, trailing bytes are an error, and messages that
the negotiated protocol version cannot send, or that cannot appear where they did (Begin
inside a streamed block, Stream Stop outside one), raise DecodeError naming the message and
byte offset. The state changes only when a message decodes completely.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from decoder import accel
from decoder._construct import fast_constructor
from decoder.errors import DecodeError
from decoder.framing import pg_time
from decoder.messages import (
    Begin,
    BeginPrepare,
    Column,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)
from decoder.tuples import read_tuple

_U32 = struct.Struct(">I").unpack_from
_U32X2 = struct.Struct(">II").unpack_from
_I32 = struct.Struct(">i").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_BEGIN = struct.Struct(">QqI")  # final_lsn, commit_time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit_lsn, end_lsn, commit_time
_PREPARE_HEAD = struct.Struct(">BQQqI")  # flags, lsn, end_lsn, time, xid
_BEGIN_PREPARE_HEAD = struct.Struct(">QQqI")  # prepare_lsn, end_lsn, prepare_time, xid
_ROLLBACK_PREPARED_HEAD = struct.Struct(">BQQqqI")
_STREAM_COMMIT = struct.Struct(">IBQQq")
_STREAM_ABORT_V4 = struct.Struct(">IIQq")
_COLUMN = struct.Struct(">Ii")  # type_oid, type_modifier
_MESSAGE_HEAD = struct.Struct(">BQ")  # flags, lsn

_new_insert = fast_constructor(Insert)
_new_update = fast_constructor(Update)
_new_delete = fast_constructor(Delete)

_NAMES = {
    b"B": "Begin", b"C": "Commit", b"O": "Origin", b"R": "Relation", b"Y": "Type",
    b"I": "Insert", b"U": "Update", b"D": "Delete", b"T": "Truncate", b"M": "Message",
    b"S": "Stream Start", b"E": "Stream Stop", b"c": "Stream Commit", b"A": "Stream Abort",
    b"b": "Begin Prepare", b"P": "Prepare", b"K": "Commit Prepared",
    b"r": "Rollback Prepared", b"p": "Stream Prepare",
}
_MIN_VERSION = {b"S": 2, b"E": 2, b"c": 2, b"A": 2,
                b"b": 3, b"P": 3, b"K": 3, b"r": 3, b"p": 3}
_IN_STREAM = frozenset(b"RYIUDTMOE")  # may appear between Stream Start and Stream Stop


def _need(buf: bytes, pos: int, size: int, mtype: str, what: str) -> None:
    if pos + size > len(buf):
        raise DecodeError(mtype, pos, f"truncated: {what} needs {size} bytes, "
                          f"{max(0, len(buf) - pos)} left")


def _done(buf: bytes, pos: int, mtype: str) -> None:
    if pos != len(buf):
        raise DecodeError(mtype, pos, f"{len(buf) - pos} unexpected bytes after the message")


def _string(buf: bytes, pos: int, mtype: str, what: str) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise DecodeError(mtype, pos, f"truncated: {what} has no terminating NUL")
    try:
        return buf[pos:end].decode("utf-8"), end + 1
    except UnicodeDecodeError as exc:
        raise DecodeError(mtype, pos + exc.start, f"{what} is not valid UTF-8") from None


class Decoder:
    """Decodes one START_REPLICATION session's pgoutput messages, in order.

    Use one Decoder per replication connection: ``protocol_version`` must be the
    ``proto_version`` requested in START_REPLICATION.
    """

    def __init__(self, protocol_version: int = 1) -> None:
        if protocol_version not in (1, 2, 3, 4):
            raise ValueError(f"pgoutput protocol_version must be 1-4, got {protocol_version!r}")
        self.protocol_version = protocol_version
        #: Relation messages seen so far, by relation_id (the latest one wins).
        self.relations: dict[int, Relation] = {}
        #: Type messages seen so far, by type_oid.
        self.types: dict[int, Type] = {}
        #: The top-level xid of the open streamed block, None outside one.
        self.stream_xid: int | None = None
        self._parsers: dict[int, Callable[[bytes], Message]] = {
            ord(tag): getattr(self, "_" + name.lower().replace(" ", "_"))
            for tag, name in _NAMES.items()
        }

    @property
    def in_stream(self) -> bool:
        return self.stream_xid is not None

    def reset(self) -> None:
        """Forget all state, as for a new replication connection."""
        self.relations.clear()
        self.types.clear()
        self.stream_xid = None

    def relation(self, relation_id: int) -> Relation:
        """The last Relation message for ``relation_id``; DecodeError if none was seen."""
        try:
            return self.relations[relation_id]
        except KeyError:
            raise DecodeError("Relation", 0, f"no Relation message seen for relation "
                              f"{relation_id}; changes must follow their Relation") from None

    def decode(self, payload: bytes) -> Message:
        """Decode one pgoutput message (an XLogData payload)."""
        fast = accel.fast  # compiled Insert/Update/Delete (decoder/accel.py); None back for
        if fast is not None and type(payload) is bytes:  # other tags and anything malformed
            msg = fast.change(payload, self.stream_xid)
            if msg is not None:
                return msg  # type: ignore[no-any-return]
        if type(payload) is not bytes:
            payload = bytes(payload)
        if not payload:
            raise DecodeError("pgoutput", 0, "empty message")
        tag = payload[0]
        parse = self._parsers.get(tag)
        if parse is None:
            raise DecodeError("pgoutput", 0, f"unknown message tag {bytes([tag])!r}")
        if self.stream_xid is not None and tag not in _IN_STREAM:
            raise DecodeError(_NAMES[bytes([tag])], 0, "cannot appear inside a streamed "
                              f"block (xid {self.stream_xid}); was a Stream Stop lost?")
        return parse(payload)

    # -- changes (hot path) ----------------------------------------------------------

    def _head(self, buf: bytes, mtype: str,
              what: str = "relation id") -> tuple[int | None, int, int]:
        """[xid] + one Int32 id; returns (xid, the id, offset after them)."""
        if self.stream_xid is not None:
            _need(buf, 1, 8, mtype, f"xid and {what}")
            xid, relid = _U32X2(buf, 1)
            return xid, relid, 9
        _need(buf, 1, 4, mtype, what)
        return None, _U32(buf, 1)[0], 5

    def _insert(self, buf: bytes) -> Insert:
        if self.stream_xid is None and len(buf) > 5:  # inline _head: the hottest path
            xid, relid, pos = None, _U32(buf, 1)[0], 5
        else:
            xid, relid, pos = self._head(buf, "Insert")
        if buf[pos:pos + 1] != b"N":
            raise DecodeError("Insert", pos, f"expected 'N' before the new tuple, got "
                              f"{buf[pos:pos + 1]!r}")
        tup, pos = read_tuple(buf, pos + 1, "Insert")
        _done(buf, pos, "Insert")
        return _new_insert(xid, relid, tup)

    def _update(self, buf: bytes) -> Update:
        if self.stream_xid is None and len(buf) > 5:
            xid, relid, pos = None, _U32(buf, 1)[0], 5
        else:
            xid, relid, pos = self._head(buf, "Update")
        old = key = None
        marker = buf[pos:pos + 1]
        if marker == b"K":
            key, pos = read_tuple(buf, pos + 1, "Update")
        elif marker == b"O":
            old, pos = read_tuple(buf, pos + 1, "Update")
        if buf[pos:pos + 1] != b"N":
            raise DecodeError("Update", pos, f"expected 'N' (or 'K'/'O' first), got "
                              f"{buf[pos:pos + 1]!r}")
        new, pos = read_tuple(buf, pos + 1, "Update")
        _done(buf, pos, "Update")
        return _new_update(xid, relid, old, key, new)

    def _delete(self, buf: bytes) -> Delete:
        xid, relid, pos = self._head(buf, "Delete")
        marker = buf[pos:pos + 1]
        if marker not in (b"K", b"O"):
            raise DecodeError("Delete", pos, f"expected 'K' or 'O', got {marker!r}")
        tup, end = read_tuple(buf, pos + 1, "Delete")
        _done(buf, end, "Delete")
        if marker == b"K":
            return _new_delete(xid, relid, None, tup)
        return _new_delete(xid, relid, tup, None)

    def _truncate(self, buf: bytes) -> Truncate:
        xid, pos = self._xid(buf, "Truncate")
        _need(buf, pos, 5, "Truncate", "nrels and options")
        (nrels,) = _I32(buf, pos)
        options = buf[pos + 4]
        pos += 5
        if nrels < 0 or pos + 4 * nrels != len(buf):
            raise DecodeError("Truncate", pos - 5, f"{nrels} relation ids do not match the "
                              f"{len(buf) - pos} bytes left")
        relids = struct.unpack_from(f">{nrels}I", buf, pos)
        return Truncate(xid, relids, bool(options & 1), bool(options & 2))

    # -- schema ----------------------------------------------------------------------

    def _xid(self, buf: bytes, mtype: str) -> tuple[int | None, int]:
        if self.stream_xid is None:
            return None, 1
        _need(buf, 1, 4, mtype, "xid")
        return _U32(buf, 1)[0], 5

    def _relation(self, buf: bytes) -> Relation:
        m = "Relation"
        xid, relid, pos = self._head(buf, m)
        namespace, pos = _string(buf, pos, m, "namespace")
        name, pos = _string(buf, pos, m, "relation name")
        _need(buf, pos, 3, m, "replica identity and ncols")
        ident = chr(buf[pos])
        if ident not in "dnfi":
            raise DecodeError(m, pos, f"unknown replica identity {ident!r}")
        ncols = struct.unpack_from(">h", buf, pos + 1)[0]
        if ncols < 0:
            raise DecodeError(m, pos + 1, f"negative column count {ncols}")
        pos += 3
        columns = []
        for i in range(ncols):
            _need(buf, pos, 1, m, f"column {i + 1} flags")
            flags = buf[pos]
            cname, pos = _string(buf, pos + 1, m, f"column {i + 1} name")
            _need(buf, pos, 8, m, f"column {i + 1} type")
            type_oid, typmod = _COLUMN.unpack_from(buf, pos)
            pos += 8
            columns.append(Column(flags, cname, type_oid, typmod))
        _done(buf, pos, m)
        rel = Relation(xid, relid, namespace, name, ident, tuple(columns))
        self.relations[relid] = rel
        return rel

    def _type(self, buf: bytes) -> Type:
        xid, oid, pos = self._head(buf, "Type", "type OID")
        namespace, pos = _string(buf, pos, "Type", "namespace")
        name, pos = _string(buf, pos, "Type", "type name")
        _done(buf, pos, "Type")
        typ = Type(xid, oid, namespace, name)
        self.types[oid] = typ
        return typ

    def _message(self, buf: bytes) -> LogicalMessage:
        m = "Message"
        xid, pos = self._xid(buf, m)
        _need(buf, pos, 9, m, "flags and lsn")
        flags, lsn = _MESSAGE_HEAD.unpack_from(buf, pos)
        prefix, pos = _string(buf, pos + 9, m, "prefix")
        _need(buf, pos, 4, m, "content length")
        (length,) = _I32(buf, pos)
        pos += 4
        if length < 0 or pos + length != len(buf):
            raise DecodeError(m, pos - 4, f"content length {length} does not match the "
                              f"{len(buf) - pos} bytes left")
        return LogicalMessage(xid, bool(flags & 1), lsn, prefix, buf[pos:])

    # -- transactions ----------------------------------------------------------------

    def _fixed(self, buf: bytes, layout: struct.Struct, mtype: str) -> tuple[Any, ...]:
        """Unpack a message that is exactly the tag plus ``layout``."""
        if len(buf) != 1 + layout.size:
            raise DecodeError(mtype, min(len(buf), 1 + layout.size),
                              f"expected {1 + layout.size} bytes, got {len(buf)}")
        return layout.unpack_from(buf, 1)

    def _check_version(self, tag: bytes) -> None:
        need = _MIN_VERSION[tag]
        if self.protocol_version < need:
            raise DecodeError(_NAMES[tag], 0, f"needs protocol version {need}+, but this "
                              f"Decoder was made for version {self.protocol_version}")

    def _begin(self, buf: bytes) -> Begin:
        final_lsn, when, xid = self._fixed(buf, _BEGIN, "Begin")
        return Begin(final_lsn, pg_time(when, "Begin", 9), xid)

    def _commit(self, buf: bytes) -> Commit:
        flags, lsn, end, when = self._fixed(buf, _COMMIT, "Commit")
        return Commit(flags, lsn, end, pg_time(when, "Commit", 18))

    def _origin(self, buf: bytes) -> Origin:
        _need(buf, 1, 8, "Origin", "commit lsn")
        name, pos = _string(buf, 9, "Origin", "origin name")
        _done(buf, pos, "Origin")
        return Origin(_U64(buf, 1)[0], name)

    # -- streaming (protocol 2+) -----------------------------------------------------

    def _stream_start(self, buf: bytes) -> StreamStart:
        self._check_version(b"S")
        if len(buf) != 6:
            raise DecodeError("Stream Start", min(len(buf), 6),
                              f"expected 6 bytes, got {len(buf)}")
        xid = _U32(buf, 1)[0]
        msg = StreamStart(xid, buf[5] == 1)
        self.stream_xid = xid
        return msg

    def _stream_stop(self, buf: bytes) -> StreamStop:
        self._check_version(b"E")
        if self.stream_xid is None:
            raise DecodeError("Stream Stop", 0, "Stream Stop without a Stream Start")
        _done(buf, 1, "Stream Stop")
        self.stream_xid = None
        return StreamStop()

    def _stream_commit(self, buf: bytes) -> StreamCommit:
        self._check_version(b"c")
        xid, flags, lsn, end, when = self._fixed(buf, _STREAM_COMMIT, "Stream Commit")
        return StreamCommit(xid, flags, lsn, end, pg_time(when, "Stream Commit", 22))

    def _stream_abort(self, buf: bytes) -> StreamAbort:
        self._check_version(b"A")
        if self.protocol_version >= 4 and len(buf) == 1 + _STREAM_ABORT_V4.size:
            xid, subxid, lsn, when = _STREAM_ABORT_V4.unpack_from(buf, 1)
            return StreamAbort(xid, subxid, lsn, pg_time(when, "Stream Abort", 17))
        if len(buf) != 9:
            expected = "9 or 25" if self.protocol_version >= 4 else "9"
            raise DecodeError("Stream Abort", min(len(buf), 9),
                              f"expected {expected} bytes, got {len(buf)}")
        xid, subxid = _U32X2(buf, 1)
        return StreamAbort(xid, subxid)

    # -- two-phase (protocol 3+) -----------------------------------------------------

    def _gid_message(self, buf: bytes, layout: struct.Struct, mtype: str) -> tuple[Any, ...]:
        _need(buf, 1, layout.size, mtype, "header")
        head = layout.unpack_from(buf, 1)
        gid, pos = _string(buf, 1 + layout.size, mtype, "gid")
        _done(buf, pos, mtype)
        return (*head, gid)

    def _begin_prepare(self, buf: bytes) -> BeginPrepare:
        self._check_version(b"b")
        lsn, end, when, xid, gid = self._gid_message(buf, _BEGIN_PREPARE_HEAD, "Begin Prepare")
        return BeginPrepare(lsn, end, pg_time(when, "Begin Prepare", 17), xid, gid)

    def _prepare(self, buf: bytes) -> Prepare:
        self._check_version(b"P")
        flags, lsn, end, when, xid, gid = self._gid_message(buf, _PREPARE_HEAD, "Prepare")
        return Prepare(flags, lsn, end, pg_time(when, "Prepare", 18), xid, gid)

    def _commit_prepared(self, buf: bytes) -> CommitPrepared:
        self._check_version(b"K")
        m = "Commit Prepared"
        flags, lsn, end, when, xid, gid = self._gid_message(buf, _PREPARE_HEAD, m)
        return CommitPrepared(flags, lsn, end, pg_time(when, m, 18), xid, gid)

    def _rollback_prepared(self, buf: bytes) -> RollbackPrepared:
        self._check_version(b"r")
        m = "Rollback Prepared"
        flags, prep_end, rb_end, prep_time, rb_time, xid, gid = self._gid_message(
            buf, _ROLLBACK_PREPARED_HEAD, m)
        return RollbackPrepared(flags, prep_end, rb_end, pg_time(prep_time, m, 18),
                                pg_time(rb_time, m, 26), xid, gid)

    def _stream_prepare(self, buf: bytes) -> StreamPrepare:
        self._check_version(b"p")
        flags, lsn, end, when, xid, gid = self._gid_message(buf, _PREPARE_HEAD,
                                                            "Stream Prepare")
        return StreamPrepare(flags, lsn, end, pg_time(when, "Stream Prepare", 18), xid, gid)
