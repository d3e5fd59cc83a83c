"""Fast constructors for the hot frozen dataclasses (TupleData, Insert, Update, XLogData...).

Why: a frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__(self, "name", value)``, which costs about as much as decoding the
message did. For slots classes each field is a member descriptor whose ``__set__`` stores
the value directly; calling those skips the name lookups and halves construction time. The
result is an ordinary instance (same equality, hash, repr, and still immutable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """A function ``(field1, field2, ...) -> cls instance`` for a slots dataclass whose
    fields are all init fields without defaults that matter (every field is passed).

    Typed as returning ``cls`` instances so callers' return types check; the cast runs
    once, here, at import time, never per message."""
    names = [f.name for f in fields(cls)]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for i, name in enumerate(names):
        env[f"_set{i}"] = cls.__dict__[name].__set__
    args = ", ".join(names)
    body = "".join(f"    _set{i}(o, {name})\n" for i, name in enumerate(names))
    source = f"def new({args}):\n    o = _new(_cls)\n{body}    return o\n"
    exec(source, env)  # noqa: S102 - code generated from the dataclass's own field names
    return cast("Callable[..., T]", env["new"])
