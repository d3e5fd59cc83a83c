"""The stream's decisions without a server (replica.stream.flow): what is acknowledged and when
(DESIGN.md invariants 1 and 5)."""

from datetime import UTC, datetime

from replica.stream.flow import FlowControl

T = datetime(2024, 1, 1, tzinfo=UTC)


def test_flush_is_the_last_target_commit_never_a_received_position():
    f = FlowControl(applied_lsn=100)
    f.begin(0.0)
    f.wal(500)
    assert f.flush_lsn() == 100  # a transaction is being received
    f.commit(end_lsn=200, commit_time=T, rows=3)
    assert f.flush_lsn() == 100  # complete, but not yet committed on the target
    written, flushed, applied = f.feedback(1.0)
    assert (written, flushed, applied) == (500, 100, 100)
    f.handed()
    f.commit_done(True)
    assert f.flush_lsn() == 200 and f.applied_lsn == 200


def test_idle_slot_confirms_the_keepalive_position_only_with_nothing_in_flight():
    f = FlowControl(applied_lsn=100)
    f.keepalive(wal_end=900, reply_requested=False)
    assert f.flush_lsn() == 900  # nothing in flight: WAL up to 900 holds nothing for us
    f.begin(0.0)
    assert f.flush_lsn() == 100
    f.commit(end_lsn=950, commit_time=T, rows=1)
    f.keepalive(wal_end=1000, reply_requested=False)
    assert f.flush_lsn() == 100  # the transaction is not on the target yet
    f.handed()
    f.commit_done(True)
    assert f.flush_lsn() == 1000


def test_a_rolled_back_batch_acknowledges_nothing_new():
    f = FlowControl(applied_lsn=100)
    f.begin(0.0)
    f.commit(end_lsn=300, commit_time=T, rows=1)
    f.rolled_back()
    assert f.applied_lsn == 100 and f.flush_lsn() == 100


def test_replies_when_asked_every_interval_and_soon_after_progress():
    f = FlowControl(applied_lsn=0, status_interval=10, min_gap=0.25)
    f.feedback(0.0)
    assert not f.feedback_due(1.0)
    f.keepalive(wal_end=0, reply_requested=True)
    assert f.feedback_due(1.0)
    f.feedback(1.0)
    assert not f.feedback_due(5.0) and f.feedback_due(11.0)
    f.feedback(11.0)
    f.begin(11.0)
    f.commit(50, T, 1)
    f.handed()
    f.commit_done(True)
    assert not f.feedback_due(11.1) and f.feedback_due(11.3)  # flush moved; min gap passed


def test_batches_commit_at_boundaries_when_full_old_or_idle():
    f = FlowControl(applied_lsn=0, batch_max_rows=10, batch_max_seconds=0.5)
    assert not f.batch_due(0.0, idle=True)  # nothing in hand
    f.begin(0.0)
    f.commit(10, T, rows=4)
    assert not f.batch_due(0.1)
    assert f.batch_due(0.1, idle=True)  # the socket is empty: commit now, keep lag low
    f.begin(0.2)
    assert not f.batch_due(5.0, idle=True)  # never inside a source transaction
    f.commit(20, T, rows=6)
    assert f.batch_due(0.2)  # 10 rows
    f.handed()
    f.commit_done(True)
    f.begin(1.0)
    f.commit(30, T, rows=1)
    assert not f.batch_due(1.2) and f.batch_due(1.6)  # 0.5 s old


def test_wait_is_bounded_by_what_falls_due():
    f = FlowControl(applied_lsn=0, status_interval=10, batch_max_seconds=0.5)
    f.feedback(0.0)
    assert f.wait_seconds(0.0) == 1.0  # never block longer than a second (stop requests)
    f.begin(0.0)
    f.commit(10, T, rows=1)
    assert f.wait_seconds(0.2) <= 0.3 + 1e-9


def test_silence_pings_at_half_the_timeout_then_declares_the_source_dead():
    """Issue 10: a half-open connection looks like a quiet source; ask, then give up."""
    from replica.stream.flow import DEAD, PING, on_silence

    assert on_silence(10, 60, pinged=False) is None
    assert on_silence(30, 60, pinged=False) == PING
    assert on_silence(45, 60, pinged=True) is None  # asked once; wait for the answer
    assert on_silence(60, 60, pinged=True) == DEAD
    assert on_silence(61, 60, pinged=False) == DEAD
