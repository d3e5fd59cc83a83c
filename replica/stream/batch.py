"""The net effect of a run of changes to one table: what the target must do, per key.

Why net effects: within one target transaction only the final state of each key matters
(DESIGN.md invariant 2: several changes to one key keep the last), and the target has no
foreign keys or triggers that could observe the order between keys. So a run of changes
becomes, per key, one of:

=======  ==================  ================  =========================================
state    row at run start    row at run end    written as
=======  ==================  ================  =========================================
FRESH    absent              this full row     COPY BINARY straight into the table
UPDATE   present             this full row     UPDATE ... FROM a COPY-loaded stage
PATCH    present             some columns new  UPDATE of the known columns only: 'u'
                                               (unchanged TOAST) columns keep their value
DELETE   present             absent            DELETE ... USING the stage
=======  ==================  ================  =========================================

"Present at run start" is known exactly because the target equals the source as of the run's
start (invariant 1): a key first seen in an Insert did not exist, a key first seen in an
Update or Delete did. A key that is inserted and deleted inside one run leaves no entry.

A table without a key (REPLICA IDENTITY FULL, no primary key) holds a multiset: each full
row image maps to a net count; positive counts are inserted, negative ones delete that many
equal rows. The one change that cannot be netted is a key change whose new image has
unchanged-TOAST columns the run does not know: ``update`` returns False and the caller
writes the run so far, then moves that row on the target itself.

Values stay the raw bytes pgoutput sent with ``binary 'true'``, which are COPY BINARY's field
format; ``encode`` only adds the length words. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from decoder import Delete, Insert, Message, TupleData, Update, accel
from replica.errors import UnsupportedError, UnsupportedTypeError

FRESH, UPDATE, PATCH, DELETE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Layout:
    """A published table as the stream sends it: columns in Relation order, key positions."""

    qualname: str
    columns: tuple[str, ...]
    types: tuple[str, ...]  # target types, for error messages
    key_pos: tuple[int, ...]  # positions of the target's primary key; () = multiset

    @property
    def keyed(self) -> bool:
        return bool(self.key_pos)


def fill(raw: tuple, kinds: str, known: tuple) -> tuple:
    """``raw`` with every unchanged-TOAST column taken from ``known``."""
    return tuple(k if kind == "u" else v for v, kind, k in zip(raw, kinds, known, strict=True))


def overlay(old_raw: tuple, old_kinds: str, raw: tuple, kinds: str) -> tuple[tuple, str]:
    """A newer partial image over an older one: the newer wins where it has a value."""
    return (tuple(o if kind == "u" else v for o, v, kind in zip(old_raw, raw, kinds, strict=True)),
            "".join(ok if kind == "u" else kind for ok, kind in zip(old_kinds, kinds,
                                                                    strict=True)))


class TableBatch:
    """Absorbs one table's changes in source order; apply.py writes the result."""

    __slots__ = ("layout", "entries", "counts", "truncated", "ops", "_key", "key_pos")

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.entries: dict = {}  # key -> (state, raw, kinds or None)
        self.counts: dict[tuple, int] = {}  # multiset tables: row image -> net count
        self.truncated = False  # TRUNCATE first, then the entries
        self.ops = [0, 0, 0, 0]  # insert, update, delete, truncate (for metrics)
        self._key = itemgetter(*layout.key_pos) if layout.key_pos else None
        self.key_pos = layout.key_pos  # for the compiled netting (see the end of the module)

    def __len__(self) -> int:
        return len(self.entries) + len(self.counts)

    @property
    def empty(self) -> bool:
        return not (self.entries or self.counts or self.truncated)

    def _text_value(self, tup: TupleData) -> None:
        """A type without a binary send function: COPY BINARY cannot carry it."""
        i = tup.kinds.index("t")
        raise UnsupportedTypeError(self.layout.qualname, self.layout.columns[i],
                                   self.layout.types[i], "the source sends it as text only "
                                   "(no binary send function)")

    def absorb(self, msg: Message) -> bool:
        """One Insert, Update, Delete or Truncate, in source order; False when the caller
        must write the run first and move the row itself (``update``). The compiled netting
        (end of the module) takes what it can; the methods below are the reference and take
        the rest."""
        fast = accel.fast
        if fast is not None and fast.net(self, msg):
            return True
        return self.absorb_pure(msg)

    def absorb_pure(self, msg: Message) -> bool:
        """``absorb`` in Python only (the reference the compiled netting is tested against)."""
        kind = type(msg)
        if kind is Insert:
            self.insert(msg.new_tuple)
        elif kind is Update:
            return self.update(msg.new_tuple, msg.old_tuple or msg.key_tuple,
                               msg.old_tuple is not None)
        elif kind is Delete:
            self.delete(msg.old_tuple or msg.key_tuple)
        else:  # Truncate
            self.truncate()
        return True

    def insert(self, new: TupleData) -> None:
        self.ops[0] += 1
        raw = new.raw
        if "t" in new.kinds:
            self._text_value(new)
        if self._key is None:
            self._count(raw, 1)  # (a row deleted then inserted again nets to no entry)
            return
        k = self._key(raw)
        prev = self.entries.get(k)
        self.entries[k] = (FRESH if prev is None or prev[0] == FRESH else UPDATE, raw, None)

    def update(self, new: TupleData, old: TupleData | None, old_is_full: bool) -> bool:
        """Absorb an Update; False when the caller must write the run first (see module)."""
        self.ops[1] += 1
        raw, kinds = new.raw, new.kinds
        if "t" in kinds:
            self._text_value(new)
        has_u = "u" in kinds
        if has_u and old_is_full:
            raw, has_u = fill(raw, kinds, old.raw), False
        if self._key is None:
            if not old_is_full:
                raise UnsupportedError(f"table {self.layout.qualname} has no key on the "
                                       "target and the source sent no old row: ALTER TABLE "
                                       "... REPLICA IDENTITY FULL on the source")
            self._count(old.raw, -1)
            self._count(raw, 1)
            return True
        key = self._key
        if has_u and any(kinds[i] == "u" for i in self.layout.key_pos):
            raw = tuple(old.raw[i] if kinds[i] == "u" and i in self.layout.key_pos else v
                        for i, v in enumerate(raw))  # an unchanged TOASTed key
        new_key = key(raw)
        old_key = key(old.raw) if old is not None else new_key
        entries = self.entries
        if old_key == new_key:
            prev = entries.get(new_key)
            if not has_u:
                entries[new_key] = (FRESH if prev is not None and prev[0] == FRESH else UPDATE,
                                    raw, None)
            elif prev is None or prev[0] == DELETE:
                entries[new_key] = (PATCH, raw, kinds)
            elif prev[0] == PATCH:
                entries[new_key] = (PATCH, *overlay(prev[1], prev[2], raw, kinds))
            else:
                entries[new_key] = (prev[0], fill(raw, kinds, prev[1]), None)
            return True
        prev = entries.get(old_key)
        if has_u:
            if prev is None or prev[0] == DELETE:
                return False
            if prev[0] == PATCH:
                raw, kinds = overlay(prev[1], prev[2], raw, kinds)
                if "u" in kinds:
                    return False
            else:
                raw = fill(raw, kinds, prev[1])
        if prev is not None and prev[0] == FRESH:
            del entries[old_key]
        else:
            entries[old_key] = (DELETE, old.raw, None)
        entries[new_key] = (FRESH if entries.get(new_key) is None else UPDATE, raw, None)
        return True

    def delete(self, old: TupleData) -> None:
        self.ops[2] += 1
        if self._key is None:
            self._count(old.raw, -1)
            return
        k = self._key(old.raw)
        prev = self.entries.get(k)
        if prev is not None and prev[0] == FRESH:
            del self.entries[k]
        else:
            self.entries[k] = (DELETE, old.raw, None)

    def truncate(self) -> None:
        self.ops[3] += 1
        self.entries.clear()
        self.counts.clear()
        self.truncated = True

    def _count(self, raw: tuple, n: int) -> None:
        c = self.counts.get(raw, 0) + n
        if c:
            self.counts[raw] = c
        else:
            self.counts.pop(raw, None)

    # -- what apply.py writes -------------------------------------------------------------

    def fresh_rows(self) -> list[tuple]:
        """Row images to COPY straight into the table."""
        if self._key is None:
            return [raw for raw, n in self.counts.items() for _ in range(n) if n > 0]
        return [e[1] for e in self.entries.values() if e[0] == FRESH]

    def split(self) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple[int, int, tuple]],
                             dict[str, int]]:
        """A keyed run in one pass, for apply.py: FRESH images, DELETE images, UPDATE images,
        the stage rows of its PATCHes and their patterns (as ``staged`` gives them)."""
        fast = accel.fast
        if fast is not None:
            parts = fast.split(self.entries)  # None when there are PATCHes
            if parts is not None:
                return parts[0], parts[1], parts[2], [], {}
        return self.split_pure()

    def split_pure(self) -> tuple[list[tuple], list[tuple], list[tuple],
                                  list[tuple[int, int, tuple]], dict[str, int]]:
        """``split`` in Python only (the reference)."""
        fresh: list[tuple] = []
        deletes: list[tuple] = []
        updates: list[tuple] = []
        patches: list[tuple[int, int, tuple]] = []
        patterns: dict[str, int] = {}
        for state, raw, kinds in self.entries.values():
            if state == FRESH:
                fresh.append(raw)
            elif state == DELETE:
                deletes.append(raw)
            elif state == UPDATE:
                updates.append(raw)
            else:
                code = patterns.get(kinds)
                if code is None:
                    code = patterns[kinds] = 10 + len(patterns)
                patches.append((code, 0, raw))
        return fresh, deletes, updates, patches, patterns

    def staged(self) -> tuple[list[tuple[int, int, tuple]], dict[str, int]]:
        """(op, n, image) rows for the stage table, and each PATCH pattern's op code.

        Keyed: op UPDATE / DELETE, or 10 + the pattern's index for a PATCH (the pattern is
        the kinds string; its 'u' columns are left alone). Multiset: op DELETE with n = how
        many equal rows to remove.
        """
        if self._key is None:
            return [(DELETE, -n, raw) for raw, n in self.counts.items() if n < 0], {}
        rows, patterns = [], {}
        for state, raw, kinds in self.entries.values():
            if state == PATCH:
                code = patterns.get(kinds)
                if code is None:
                    code = patterns[kinds] = 10 + len(patterns)
                rows.append((code, 0, raw))
            elif state != FRESH:
                rows.append((state, 0, raw))
        return rows, patterns

    def clear(self) -> None:
        self.entries.clear()
        self.counts.clear()
        self.truncated = False


# The compiled netting (decoder._speedups.net, chosen with the rest of the hot path by
# decoder.accel): insert, delete and the plain update (no unchanged-TOAST or text column)
# done in C on this class's own slots, by the same rules as the methods above, which stay
# the reference and do everything else (apply.apply_change calls them when net() declines).
# Registered whenever it is built, so that accel.select can switch at any time.
_compiled = accel.compiled()
if _compiled is not None:
    _compiled.setup_batch(TableBatch, ("entries", "counts", "ops", "key_pos"), FRESH, UPDATE,
                          DELETE)


def encode_array(elem_oid: int, values) -> bytes:
    """A one-dimensional array in binary wire format from raw binary values (None = NULL):
    the keys of a run's deletes become one ``= ANY($1)`` parameter, no stage COPY.
    (decoder.copyfmt's, compiled where decoder._speedups is built.)"""
    return accel.binary_array(elem_oid, values)


def encode(rows, extra: bool = False) -> bytes:
    """A complete COPY BINARY stream of ``rows``: images, or (op, n, image) when ``extra``
    (two leading int4 columns, the stage table's op and n). (decoder.copyfmt's, compiled
    where decoder._speedups is built.)"""
    return accel.copy_rows(rows, extra)
