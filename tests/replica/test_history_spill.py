"""A history spill never waits for a busy target writer, and no version is lost or doubled
by spills that wait: a real TargetWriter on a real replica database, its thread held busy
by a call of our own (as a big mirror run holds it), while the recorder takes 3 x SPILL
changes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import psycopg

from decoder import Insert, Update
from decoder.messages import TupleData
from replica.history import recorder as R
from replica.stream.apply import TargetWriter
from replica.stream.batch import Layout
from replica.stream.tables import MirroredTable
from replica.target import progress

SLOT = "spill_slot"
TW = MirroredTable(7, "public", "t", Layout("public.t", ("id", "v"), ("int8", "text"), (0,)), 0)


def _image(i: int, v: str) -> TupleData:
    return TupleData("bb", (i.to_bytes(8, "big", signed=True), v.encode()))


def test_spill_waits_for_a_busy_writer_without_blocking_the_stream(replica_db):
    conn = psycopg.connect(replica_db.dsn)
    conn.execute("CREATE TABLE public.t (id int8 PRIMARY KEY, v text)")
    progress.ensure(conn)
    progress.start(conn, SLOT, 0, "test")
    conn.commit()
    writer = TargetWriter(conn, SLOT)
    rec = R.Recorder(frozenset({"public.t"}), None).attach(writer)
    release, busy = threading.Event(), threading.Event()

    def hold(_conn) -> None:  # the writer's thread, busy as with a big mirror run
        busy.set()
        release.wait(600)  # until the test lets go (also when it fails)

    n = 3 * R.SPILL
    try:
        writer.submit(None, hold)
        assert busy.wait(30)
        rec.begin(0x10_0000, datetime(2026, 12, 4, 12, 0, tzinfo=UTC))

        def feed() -> None:
            for i in range(n):  # an insert, then an update, of each key
                key = i // 2
                msg = Insert(None, 7, _image(key, "a")) if i % 2 == 0 else \
                    Update(None, 7, None, None, _image(key, "b"))
                rec.change(TW, msg)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        feeder.join(30)
        stuck = feeder.is_alive()
        handed = writer._queue.qsize()  # hold() is running: what waits behind it
        release.set()
        assert not stuck, "the stream blocked on a spill while the writer was busy"
        assert handed == 1  # one spill went; the rest waited for the writer to be free
        writer.commit(0x10_0100, datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
        with psycopg.connect(replica_db.dsn) as c:
            rows = c.execute("SELECT id, v, _pgml_seq, _pgml_op, _pgml_commit_lsn::text"
                             " FROM pgml_history.public__t ORDER BY _pgml_seq").fetchall()
        assert [r[2] for r in rows] == list(range(n))  # every version once, in order
        assert rows[:2] == [(0, "a", 0, "I", "0/100000"), (0, "b", 1, "U", "0/100000")]
        assert {r[3] for r in rows[2::2]} == {"I"} and {r[3] for r in rows[1::2]} == {"U"}
        assert rec.versions == n
    finally:
        release.set()
        writer.close()
