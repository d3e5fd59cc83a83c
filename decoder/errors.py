"""The decoder's one error tree.

Why a ValueError: every failure here means "these bytes are not what the protocol says", the
same policy as ``int("x")``. Callers never see IndexError, struct.error or
UnicodeDecodeError from this package; they catch :class:`DecodeError` (stop: the stream is
corrupt or the decoder is out of step with it) or :class:`ValueConversionError` (one column
value has no Python form; its raw bytes are still in ``TupleData.raw``).
"""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes that do not follow the pgoutput / replication framing layout.

    ``message_type`` names the message being decoded ("Insert", "XLogData", ...) and
    ``offset`` the byte offset inside that message where decoding failed.
    """

    def __init__(self, message_type: str, offset: int, detail: str) -> None:
        self.message_type = message_type
        self.offset = offset
        self.detail = detail
        super().__init__(self._text())

    def _text(self) -> str:
        return f"{self.message_type} message: {self.detail} (at byte {self.offset})"


class ValueConversionError(DecodeError):
    """One column value could not be turned into a Python value.

    The message is intact, only this value has no Python form (for example a BC date, a
    year past 9999, time 24:00:00, or bytes that do not match the column's type). The raw
    bytes stay available in ``TupleData.raw`` and can be passed on unconverted.
    ``offset`` is -1: the value is not at a known place in a message.
    """

    def __init__(self, type_oid: int, detail: str, column: str | None = None) -> None:
        self.type_oid = type_oid
        self.column = column
        super().__init__("TupleData", -1, detail)

    def _text(self) -> str:
        where = f"column {self.column!r} " if self.column is not None else ""
        return f"{where}(type OID {self.type_oid}): {self.detail}"
