"""Fixtures for the pgml SQL tests: replica databases with pgml installed by the real installer.

``pgml_db`` is a fresh database per test. ``shared_pgml_db`` (tests/fix_pg.py) is one database per
test module, for the algorithm matrix, whose tests each use their own project.
"""

from __future__ import annotations

import pytest

from replica.target.pgml_install import install
from tests.fix_pg import Database


@pytest.fixture
def pgml_db(replica_db, plpython_path) -> Database:
    install(replica_db.dsn, python_path=plpython_path)
    return replica_db
