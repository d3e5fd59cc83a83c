"""Fixtures for the decoder tests: text and binary mode, a captured real stream."""

import pytest


@pytest.fixture(params=[False, True], ids=["text", "binary"])
def binary(request) -> bool:
    """Run the test for pgoutput's text values and again with ``binary 'true'``."""
    return request.param


@pytest.fixture(params=["python", "c"], autouse=True)
def impl(request):
    """Every decoder test against both implementations of the hot path (psycopg's pattern):
    the pure-Python reference and the compiled decoder._speedups (skipped where it is not
    built). decoder.accel switches every caller at once; the previous choice comes back."""
    from decoder import accel

    before = accel.IMPLEMENTATION
    if request.param == "c" and not accel.available():
        pytest.skip("decoder._speedups is not built (no C compiler at install)")
    accel.select(request.param)
    yield request.param
    accel.select(before)
