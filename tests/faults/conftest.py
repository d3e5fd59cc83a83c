"""Fault tests: the sidecar's own helpers (tests/replica/conftest.py) and the TCP proxy."""

from __future__ import annotations

from tests.replica.conftest import sidecars  # noqa: F401  (the fixture, re-exported)
