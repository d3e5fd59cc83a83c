"""Exactly once under SIGKILL (DESIGN.md invariant 1): a real `pgml-replica run` process is
killed at random moments while a random workload runs, restarted each time, and at the end
every table on the target equals the source row for row - no change lost, none doubled."""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.replica.conftest import same, wait_for
from tests.replica.workload import TABLES, Workload


def _equivalence(source_db, replica_db, sidecars, tmp_path, *, kills: int, steps: int,
                 seed: int) -> None:
    rng = random.Random(seed)
    with source_db.connect() as setup_conn:
        Workload(setup_conn, seed).setup()
    wl_conn = source_db.connect()
    wl = Workload(wl_conn, seed + 1)
    wl.next_id = 10_000
    log = tmp_path / "sidecar.log"
    sc = sidecars("process", "--source", source_db.dsn, "--target", replica_db.dsn,
                  "--batch-max-seconds", "0.2", "--decoding-work-mem", "64kB", log=log)
    done = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(steps):
                wl.step()
                time.sleep(rng.random() * 0.002)
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    for _ in range(kills):  # the first kill may land in the initial copy
        time.sleep(rng.uniform(0.3, 2.5))
        assert sc.alive(), log.read_text()[-3000:]
        sc.kill()
        time.sleep(rng.uniform(0, 0.5))
        sc.start()
    assert done.wait(300), "the workload did not finish"
    worker.join(10)
    assert not failure, failure
    wl_conn.close()
    assert wl.changes > 500
    wait_for(lambda: same(source_db, replica_db, TABLES) or not sc.alive(), 180,
             "the target to equal the source")
    assert sc.alive(), log.read_text()[-3000:]
    assert same(source_db, replica_db, TABLES)
    assert sc.terminate() == 0, log.read_text()[-3000:]
    # the slot was told exactly what the target holds (or, idle, the WAL end past it)
    (progress_lsn,) = replica_db.execute("SELECT end_lsn FROM pgml_replica.progress")[0]
    assert source_db.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM "
                             "pg_replication_slots", (progress_lsn,)) == [(True,)]


def test_exactly_once_with_kill_9(source_db, replica_db, sidecars, tmp_path):
    _equivalence(source_db, replica_db, sidecars, tmp_path, kills=2, steps=500, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_exactly_once_with_kill_9_long(source_db, replica_db, sidecars, tmp_path, seed):
    _equivalence(source_db, replica_db, sidecars, tmp_path, kills=8, steps=4000, seed=seed)
