"""pgoutput, decoded in pure Python: bytes in, typed messages out. No I/O, no psycopg.

Public API
----------
Framing of the replication COPY stream (framing.py)::

    parse_copy_data(buf) -> XLogData | PrimaryKeepalive
        XLogData(wal_start, wal_end, send_time, payload); payload goes to Decoder.decode
        PrimaryKeepalive(wal_end, send_time, reply_requested)
    split_frame(buf) -> bytes | PrimaryKeepalive   (XLogData's payload alone, for a hot loop)
    standby_status_update(written_lsn, flushed_lsn, applied_lsn, now=None,
                          reply_requested=False) -> bytes   # the 'r' message to send back
    format_lsn(int) -> "X/Y";  parse_lsn("X/Y") -> int

Messages (protocol.py, messages.py)::

    d = Decoder(protocol_version=1)     # the proto_version asked for; one per connection
    msg = d.decode(xlogdata.payload)    # Begin, Commit, Origin, Relation, Type, Insert,
                                        # Update, Delete, Truncate, LogicalMessage,
                                        # StreamStart, StreamStop, StreamCommit, StreamAbort,
                                        # BeginPrepare, Prepare, CommitPrepared,
                                        # RollbackPrepared, StreamPrepare
    d.relations[relation_id] / d.relation(relation_id) -> the last Relation seen
    d.in_stream, d.stream_xid          # inside a Stream Start .. Stream Stop block

All messages are frozen dataclasses (slots) with snake_case fields named after the
PostgreSQL docs; LSNs are ints, times aware UTC datetimes; change, Relation, Type and
Message messages have ``xid`` (None outside a streamed block).

Row images (tuples.py)::

    TupleData(kinds, raw)       # kinds: 'n' null, 'u' unchanged TOAST, 't' text, 'b' binary
    tup.raw                     # each column's bytes as sent (binary = COPY BINARY field)
    tup.values(relation)        # Python values; None for NULL; UNCHANGED_TOAST for 'u'
    to_python(type_oid, raw, binary)   # one value; unknown OIDs -> str / bytes

Errors (errors.py): anything malformed raises DecodeError (a ValueError) naming the message
type and byte offset; a single value with no Python form raises ValueConversionError (a
DecodeError). See docs/decoder.md for the type mapping and decisions.
"""

from decoder.errors import DecodeError, ValueConversionError
from decoder.framing import (
    PrimaryKeepalive,
    XLogData,
    format_lsn,
    parse_copy_data,
    parse_lsn,
    split_frame,
    standby_status_update,
)
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
from decoder.protocol import Decoder
from decoder.tuples import UNCHANGED_TOAST, TupleData
from decoder.types import REGISTRY, Interval, TypeRegistry, to_python

__all__ = [
    "Begin", "BeginPrepare", "Column", "Commit", "CommitPrepared", "DecodeError", "Decoder",
    "Delete", "Insert", "Interval", "LogicalMessage", "Message", "Origin", "Prepare",
    "PrimaryKeepalive", "REGISTRY", "Relation", "RollbackPrepared", "StreamAbort",
    "StreamCommit", "StreamPrepare", "StreamStart", "StreamStop", "Truncate", "TupleData",
    "Type", "TypeRegistry", "UNCHANGED_TOAST", "Update", "ValueConversionError", "XLogData",
    "format_lsn", "parse_copy_data", "parse_lsn", "standby_status_update", "to_python",
    "split_frame",
]
