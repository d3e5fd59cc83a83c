"""The flush position with the COMMIT in the writer's thread (replica.stream.flow, issue 14):
a batch handed over is in flight until its outcome is taken - never acknowledged before it
committed, never after it failed - and the idle-slot rule counts it (DESIGN.md 1 and 5)."""

from datetime import UTC, datetime

import pytest

from replica.stream.flow import FlowControl

T1 = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
T2 = datetime(2024, 1, 1, 0, 0, 2, tzinfo=UTC)


def _batch(f: FlowControl, end_lsn: int, rows: int = 1, t: datetime = T1) -> None:
    f.begin(0.0)
    f.commit(end_lsn=end_lsn, commit_time=t, rows=rows)


def test_a_handed_batch_moves_the_flush_only_when_its_commit_is_reported():
    f = FlowControl(applied_lsn=100)
    _batch(f, 200, rows=3)
    f.handed()
    assert f.committing and f.pending_txns == 0
    _batch(f, 300)  # the stream decodes the next batch meanwhile
    assert f.flush_lsn() == 100
    assert f.feedback(1.0)[1:] == (100, 100)
    assert f.commit_done(True) == (1, 3, T1)
    assert f.applied_lsn == 200 and not f.committing
    assert f.flush_lsn() == 200  # the next batch is still in the open transaction


def test_a_failed_commit_acknowledges_nothing_of_it_nor_of_the_batch_after_it():
    f = FlowControl(applied_lsn=100)
    _batch(f, 200)
    f.handed()
    _batch(f, 300)
    f.keepalive(wal_end=900, reply_requested=False)
    assert f.commit_done(False) == (1, 1, T1)
    f.rolled_back()  # the stream throws the next batch away with it
    assert f.applied_lsn == 100
    # the keepalive came while both were in flight: it lies past what was thrown away, and
    # a stop's final feedback must not confirm it
    assert f.feedback(2.0)[1:] == (100, 100)


def test_the_idle_slot_rule_counts_a_commit_in_flight():
    f = FlowControl(applied_lsn=100)
    _batch(f, 200)
    f.handed()
    f.keepalive(wal_end=900, reply_requested=True)  # nothing else in hand: still in flight
    assert f.flush_lsn() == 100
    f.commit_done(True)
    assert f.flush_lsn() == 900


def test_a_rollback_with_the_outcome_not_taken_counts_it_as_failed():
    f = FlowControl(applied_lsn=100)
    _batch(f, 200)
    f.handed()
    f.rolled_back()
    assert f.applied_lsn == 100 and not f.committing


def test_one_commit_in_flight_at_a_time():
    f = FlowControl(applied_lsn=100)
    _batch(f, 200)
    f.handed()
    _batch(f, 300, t=T2)
    with pytest.raises(RuntimeError):
        f.handed()
    f.commit_done(True)
    f.handed()
    assert f.commit_done(True) == (1, 1, T2) and f.applied_lsn == 300


def test_the_socket_wait_is_short_while_a_commit_is_in_flight():
    f = FlowControl(applied_lsn=0, status_interval=10)
    f.feedback(0.0)
    _batch(f, 10)
    f.handed()
    assert f.wait_seconds(0.0) <= f.commit_poll
    f.commit_done(True)
    f.feedback(0.0)
    assert f.wait_seconds(0.0) == 1.0
