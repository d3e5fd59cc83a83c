"""The stream's unit tests run against both implementations of the hot path (the compiled
decoder._speedups and pure Python): the same ``impl`` fixture as tests/decoder. The
end-to-end streaming tests (tests/replica/test_streaming.py) run a sidecar, so they take the
choice from the environment instead: ``PGML_REPLICA_PURE=1`` for the pure path."""

from tests.decoder.conftest import impl  # noqa: F401 - the autouse fixture, shared
