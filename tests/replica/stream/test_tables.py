"""The set-based statements a mirrored table is written with, read as SQL (no server)."""

from __future__ import annotations

import pytest

from replica.stream.batch import DELETE, FRESH, UPDATE, Layout
from replica.stream.tables import MOVE_FROM, MOVE_TO, OP, MirroredTable


def _table(key_pos=(0,), names=("id", "a", "b")) -> MirroredTable:
    layout = Layout("Sch.My Table", names, ("int4", "text", "float8"), key_pos)
    return MirroredTable(16400, "Sch", "My Table", layout, sync_lsn=0)


def _sql(t: MirroredTable, what: str, kinds: str | None = None, code: int = UPDATE) -> str:
    s = t.stmt(what, kinds, code)
    return s.as_string(None) if s is not None else None


def test_names_are_quoted_identifiers_everywhere():
    t = _table()
    for what in ("create_stage", "copy_table", "delete", "update",
                 "insert_staged", "multiset_delete"):
        text = _sql(t, what)
        assert '"Sch"."My Table"' in text, what
    assert '"pg_temp"."pgml_replica_stage_16400"' in _sql(t, "copy_stage")


def test_update_and_delete_join_on_the_key_and_pick_their_op_code():
    t = _table()
    update = _sql(t, "update")
    assert 'SET "a" = s."a", "b" = s."b"' in update  # the key column is never SET
    assert f'"{OP}" = {UPDATE}' in update and '"t"."id" = "s"."id"' in update
    assert f'"{OP}" = {DELETE}' in _sql(t, "delete")
    assert f'"{OP}" = {FRESH}' in _sql(t, "insert_staged")


def test_an_unchanged_toast_value_is_left_out_of_the_set_list():
    """Invariant 3: a 'u' (unchanged TOAST) column is never overwritten."""
    t = _table()
    patch = _sql(t, "patch", kinds="ttu", code=7)
    assert '"a" = s."a"' in patch and '"b"' not in patch.split("FROM")[0]
    assert f'"{OP}" = 7' in patch
    assert t.stmt("patch", "tuu", 7) is None  # nothing left to set: no statement


def test_a_key_move_reads_both_images_from_the_stage():
    t = _table()
    move = _sql(t, "move", kinds="ttt")
    assert f"f.\"{OP}\" = {MOVE_FROM}" in move and f"s.\"{OP}\" = {MOVE_TO}" in move
    assert '"t"."id" = "f"."id"' in move


def test_statements_are_cached_per_shape():
    t = _table()
    assert t.stmt("update") is t.stmt("update")
    assert t.stmt("patch", "ttu", 7) is not t.stmt("patch", "tut", 7)


def test_unknown_statement_is_a_programming_error():
    with pytest.raises(ValueError):
        _table().stmt("merge")
