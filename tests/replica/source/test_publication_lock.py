"""The stream's publication poll and a published table locked by an open transaction.

From PostgreSQL 16 ``pg_publication_tables`` waits for a lock on every published table: an
open TRUNCATE or ALTER held the poll past its statement bound and the sidecar reconnected
(seen as a flaky tests/faults/test_truncate.py on 17). The poll now gives up on the lock at
once and asks again at the next poll."""

from __future__ import annotations

import pytest

from replica.source.publication import publication_tables, publication_tables_unless_locked


@pytest.mark.source_versions
def test_a_locked_published_table_does_not_stall_the_poll(source_db):
    source_db.execute("CREATE TABLE locked (id int PRIMARY KEY);"
                      " CREATE PUBLICATION lockpub FOR TABLE locked")
    with source_db.connect() as poller:
        poller.execute("SET statement_timeout = '20s'")  # a wait for the lock fails, not hangs
        assert publication_tables_unless_locked(poller, "lockpub") == \
            publication_tables(poller, "lockpub") == {("public", "locked"): (["id"], None)}
        with source_db.connect(autocommit=False) as holder:
            holder.execute("TRUNCATE locked")  # ACCESS EXCLUSIVE until it ends
            found = publication_tables_unless_locked(poller, "lockpub", lock_timeout_ms=100)
            holder.rollback()
        if source_db.cluster.major >= 16:
            assert found is None  # gave up on the lock instead of waiting for it
        else:
            assert found == {("public", "locked"): (["id"], None)}  # 15 does not wait
        assert publication_tables_unless_locked(poller, "lockpub") is not None  # next poll
