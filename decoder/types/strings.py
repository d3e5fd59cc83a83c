"""Character types, bytea, uuid, json and jsonb: text and binary forms.

Binary layouts: text/varchar/bpchar/name/"char" and json are the characters themselves;
bytea is the bytes; uuid is 16 bytes; jsonb is a version byte (1) followed by JSON text.
bytea text form is ``\\x`` + hex (bytea_output = hex, the default) or the older escape
form (backslash + three octal digits, ``\\\\`` for a backslash).

Strings are UTF-8: ReplicationConnection sets client_encoding=UTF8, which is what the
walsender converts text to.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID


def text(raw: bytes) -> str:
    return raw.decode("utf-8")


def bytea_binary(raw: bytes) -> bytes:
    return raw


def bytea_text(raw: bytes) -> bytes:
    if raw[:2] == b"\\x":
        return bytes.fromhex(raw[2:].decode("ascii"))
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x5C:  # backslash
            out.append(c)
            i += 1
        elif raw[i + 1:i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        else:
            octal = raw[i + 1:i + 4]
            if len(octal) != 3 or not all(0x30 <= b <= 0x37 for b in octal):
                raise ValueError(f"bad bytea escape at byte {i}")
            out.append(int(octal, 8) & 0xFF)
            i += 4
    return bytes(out)


def uuid_text(raw: bytes) -> UUID:
    return UUID(raw.decode("ascii"))


def uuid_binary(raw: bytes) -> UUID:
    return UUID(bytes=raw)


def json_text(raw: bytes) -> Any:
    return json.loads(raw)


def jsonb_binary(raw: bytes) -> Any:
    if raw[:1] != b"\x01":
        raise ValueError(f"unsupported jsonb binary version {raw[:1]!r} (expected 1)")
    return json.loads(raw[1:])
