"""A first run that fails leaves nothing behind on the source, and a copy reports itself
truthfully while it runs: real sidecars (replica.operate.runner in a thread) between the
test clusters, failing for real (the target refuses rows of the initial copy)."""

from __future__ import annotations

import threading
import time

from replica.errors import ApplyError
from replica.operate.api import status_body
from tests.replica.conftest import wait_for


def _source_objects(source_db, slot: str) -> tuple[list, list]:
    pubs = source_db.execute("SELECT pubname FROM pg_publication ORDER BY 1")
    slots = source_db.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s",
                              (slot,))
    return [p for p, in pubs], [s for s, in slots]


def _failing_target(source_db, replica_db) -> None:
    """37 rows on the source; a target table whose CHECK refuses one of them (the copy keeps
    an existing target table's constraints), so the initial copy fails for good."""
    source_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    source_db.execute("INSERT INTO public.items SELECT g, 'n' || g FROM generate_series(1, 37) g")
    replica_db.execute("CREATE TABLE public.items (id int PRIMARY KEY,"
                       " name text CHECK (name <> 'n17'))")


def _fails(sc, timeout: float = 60) -> BaseException:
    sc.thread.join(timeout)
    assert not sc.thread.is_alive(), "the sidecar did not stop"
    return sc.error


def test_a_failed_first_run_drops_the_publication_and_slot_it_created(source_db, replica_db,
                                                                      sidecars):
    _failing_target(source_db, replica_db)
    slot = f"first_{source_db.name}"
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, slot=slot,
                  publication="first_pub")
    err = _fails(sc)
    assert isinstance(err, ApplyError), err
    assert "n17" in str(err) or "check" in str(err).lower()
    assert sc.state.phase == "failed"
    # nothing on the source: no publication, no slot retaining WAL
    assert _source_objects(source_db, slot) == ([], [])
    # and the target has no progress for the slot
    assert replica_db.execute("SELECT count(*) FROM pgml_replica.progress WHERE slot = %s",
                              (slot,)) == [(0,)]


def test_a_failed_first_run_keeps_a_publication_it_did_not_create(source_db, replica_db,
                                                                   sidecars):
    _failing_target(source_db, replica_db)
    source_db.execute("CREATE PUBLICATION dba_pub FOR TABLE public.items")
    slot = f"first_{source_db.name}"
    err = _fails(sidecars(source=source_db.dsn, target=replica_db.dsn, slot=slot,
                          publication="dba_pub"))
    assert isinstance(err, ApplyError), err
    # the DBA's publication stays; the slot this run made is gone
    assert _source_objects(source_db, slot) == (["dba_pub"], [])


def test_a_run_that_made_progress_keeps_its_publication(source_db, replica_db, sidecars):
    """After the first copy reached the target, a later failure is no first run: the
    publication and the slot stay for the next start."""
    source_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    source_db.execute("INSERT INTO public.items VALUES (1, 'a')")
    slot = f"first_{source_db.name}"
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, slot=slot,
                  publication="kept_pub").wait_streaming()
    sc.stop()
    replica_db.execute("ALTER TABLE public.items ADD CONSTRAINT no_b CHECK (name <> 'b')")
    source_db.execute("INSERT INTO public.items VALUES (2, 'b')")
    err = _fails(sidecars(source=source_db.dsn, target=replica_db.dsn, slot=slot,
                          publication="kept_pub"))
    assert isinstance(err, ApplyError), err
    assert _source_objects(source_db, slot) == (["kept_pub"], [slot])


def test_status_during_the_copy(source_db, replica_db, sidecars):
    """A copy whose statistics are stale (5,000 rows analysed, 150,000 there): /status says
    "copying" with both sides connected, a rate, and a total never below the rows copied;
    once done the total is the exact count."""
    source_db.execute("CREATE TABLE public.big (id int PRIMARY KEY, pad text)"
                      " WITH (autovacuum_enabled = off)")
    source_db.execute("INSERT INTO public.big SELECT g, repeat('x', 200)"
                      " FROM generate_series(1, 5000) g")
    source_db.execute("ANALYZE public.big")
    source_db.execute("INSERT INTO public.big SELECT g, repeat('x', 200)"
                      " FROM generate_series(5001, 150000) g")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, slot=f"copy_{source_db.name}",
                  publication="copy_pub", snapshot_workers=1, snapshot_chunk_pages=64)
    seen: list[dict] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.append(status_body(sc.state, 30.0))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        sc.wait_streaming(120)
    finally:
        done.set()
        sampler.join(10)
    copying = [b for b in seen if b["phase"] == "copying" and b["snapshot"].get("public.big")]
    assert copying, f"never saw the copy ({len(seen)} samples)"
    for body in seen:
        for name, t in body["snapshot"].items():
            assert t["total"] >= t["rows"], (name, t)
        if body["copy"]:
            assert body["copy"]["total"] >= body["copy"]["rows"]
    assert all(b["source_connected"] and b["target_connected"] for b in copying)
    moving = [b for b in copying if b["copy"]["rows"] > 0]
    assert moving, "no sample while rows were arriving"
    assert all(b["copy"]["rows_per_second"] > 0 for b in moving)
    assert any(b["copy"]["total_is_estimate"] for b in moving)
    assert any(b["copy"]["eta_seconds"] is not None for b in moving
               if not b["copy"]["done"])
    final = status_body(sc.state, 30.0)
    big = final["snapshot"]["public.big"]
    assert big == {**big, "rows": 150_000, "total": 150_000, "total_is_estimate": False,
                   "done": True}
    assert final["copy"]["eta_seconds"] == 0.0
    wait_for(lambda: replica_db.execute("SELECT count(*) FROM public.big") == [(150_000,)], 30)
