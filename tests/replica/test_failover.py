"""A failover slot survives a failover (PostgreSQL 17+): the sidecar resumes on the promoted
standby from its progress row, with nothing copied again and nothing lost.

The standby is made without pg_basebackup (the cached 17+ builds ship only initdb, pg_ctl and
postgres): a physical slot reserves WAL, the data directory is copied between
pg_backup_start and pg_backup_stop, and the backup label is written into the copy - the
low-level base backup of PostgreSQL's documentation. The standby runs as the docs/sidecar.md
"Failover" section says: sync_replication_slots, hot_standby_feedback, primary_slot_name and
a dbname in primary_conninfo; the primary names the standby's slot in
synchronized_standby_slots."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from devtools.localcluster import (
    SOURCE_SETTINGS,
    LocalCluster,
    _server_user,
    free_port,
    make_cluster,
)
from replica.source.preflight import preflight
from tests.fix_pg import Database, _base_dir
from tests.replica.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.source_versions(min=17)]


def _one(cluster: LocalCluster, query: str):
    with cluster.connect() as conn:
        return conn.execute(query).fetchone()[0]


def _standby_of(primary: LocalCluster) -> LocalCluster:
    """A hot standby of ``primary`` streaming through the physical slot ``standby1``."""
    root = Path(tempfile.mkdtemp(prefix="pgml-replica-standby-", dir=_base_dir()))
    os.chmod(root, 0o755)
    standby = LocalCluster(name="standby", root=root, port=free_port(),
                           settings=primary.settings, bin_dir=primary.bin_dir,
                           lib_dir=primary.lib_dir)
    with primary.connect() as conn:
        conn.execute("SELECT pg_create_physical_replication_slot('standby1', true)")
        conn.execute("SELECT pg_backup_start('standby', true)")
        shutil.copytree(primary.datadir, standby.datadir, symlinks=True,
                        ignore=shutil.ignore_patterns("postmaster.pid", "postmaster.opts"))
        label = conn.execute("SELECT labelfile FROM pg_backup_stop(false)").fetchone()[0]
    for sub in ("pg_replslot",):  # the primary's slots are not the standby's
        for entry in (standby.datadir / sub).iterdir():
            shutil.rmtree(entry)
    (standby.datadir / "backup_label").write_text(label)
    (standby.datadir / "standby.signal").write_text("")
    standby.socket_dir.mkdir()
    with open(standby.datadir / "postgresql.auto.conf", "a") as f:
        f.write(f"port = {standby.port}\n"
                f"unix_socket_directories = '{standby.socket_dir}'\n"
                f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres"
                " dbname=postgres'\n"
                "primary_slot_name = 'standby1'\n"
                "hot_standby_feedback = on\n"
                "sync_replication_slots = on\n")
    owner = _server_user()
    if owner is not None:
        for dirpath, _dirnames, filenames in os.walk(root):
            os.chown(dirpath, *owner)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), *owner, follow_symlinks=False)
    return standby.start()


@pytest.fixture
def primary(source_version):
    cluster = make_cluster(f"primary{source_version}", SOURCE_SETTINGS, _base_dir(),
                           version=source_version)
    cluster.start()
    yield cluster
    cluster.destroy()


def test_failover_slot_follows_a_promoted_standby(primary, replica_db, sidecars):
    primary.create_database("app")
    source = Database(primary, "app")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    source.execute("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 1000) g")
    standby = _standby_of(primary)
    try:
        wait_for(lambda: _one(primary, "SELECT active FROM pg_replication_slots"
                              " WHERE slot_name = 'standby1'"), 30, "the standby to stream")
        with primary.connect() as conn:
            conn.execute("ALTER SYSTEM SET synchronized_standby_slots = 'standby1'")
            conn.execute("SELECT pg_reload_conf()")
        with source.connect() as conn:  # the primary shows nothing missing now
            wait_for(lambda: _one(primary, "SELECT xmin IS NOT NULL FROM pg_replication_slots"
                                  " WHERE slot_name = 'standby1'"), 30, "hot_standby_feedback")
            told = preflight(conn, publication="pgml_replica", slot="pgml_replica",
                             tables=[("public", "t")], failover_slot=True)
        assert [w.split(" - ")[0] for w in told] == ["cannot be checked from the primary"]
        sc = sidecars(source=source.dsn, target=replica_db.dsn,
                      failover_slot=True).wait_streaming()
        source.execute("INSERT INTO t SELECT g, 'streamed' FROM generate_series(1001, 2000) g")
        sc.wait_same(source, replica_db, ["public.t"], 60)
        applied = sc.state.applied_lsn

        def synced() -> bool:  # the standby's copy, persistent and caught up
            with standby.connect() as conn:
                row = conn.execute(
                    "SELECT synced AND NOT temporary AND failover, confirmed_flush_lsn"
                    " - '0/0'::pg_lsn FROM pg_replication_slots"
                    " WHERE slot_name = 'pgml_replica'").fetchone()
            return row is not None and row[0] and row[1] >= applied
        wait_for(synced, 90, "the standby to sync the failover slot", every=0.5)
        sc.stop()
        source.execute("UPDATE t SET v = 'while down' WHERE id <= 10")  # not seen yet
        end = source.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0]
        wait_for(lambda: _one(standby, "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn")
                 >= end, 30, "the standby to replay the last change")
        primary.stop("immediate")  # the failover
        with standby.connect() as conn:
            conn.execute("SELECT pg_promote(true, 60)")
        promoted = Database(standby, "app")
        again = sidecars(source=promoted.dsn, target=replica_db.dsn,
                         failover_slot=True).wait_streaming()
        assert again.error is None and not again.state.snapshot  # resumed, nothing copied
        promoted.execute("INSERT INTO t VALUES (5000, 'after the failover')")
        again.wait_same(promoted, replica_db, ["public.t"], 60)
        assert replica_db.execute("SELECT count(*) FILTER (WHERE v = 'while down'),"
                                  " count(*) FROM t") == [(10, 2001)]
        again.stop()
    finally:
        standby.destroy()
