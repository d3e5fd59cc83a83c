"""Fixtures for the pgml SQL tests: replica databases with pgml installed by the real installer.

``pgml_db`` is a fresh database per test. ``shared_pgml_db`` is one database per test module,
for the algorithm matrix, whose tests each use their own project and never change shared rows.
"""

from __future__ import annotations

import itertools
import os

import pytest

from replica.target.pgml_install import install
from tests.fix_pg import Database

_counter = itertools.count()


@pytest.fixture
def pgml_db(replica_db, plpython_path) -> Database:
    install(replica_db.dsn, python_path=plpython_path)
    return replica_db


@pytest.fixture(scope="module")
def shared_pgml_db(pg_replica, plpython_path):
    name = f"mlshared_{os.getpid()}_{next(_counter)}"
    pg_replica.create_database(name)
    db = Database(pg_replica, name)
    install(db.dsn, python_path=plpython_path)
    yield db
    if pg_replica.is_running():
        pg_replica.drop_database(name)
