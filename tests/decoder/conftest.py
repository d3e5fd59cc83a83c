"""Fixtures for the decoder tests: text and binary mode, a captured real stream."""

import pytest


@pytest.fixture(params=[False, True], ids=["text", "binary"])
def binary(request) -> bool:
    """Run the test for pgoutput's text values and again with ``binary 'true'``."""
    return request.param
