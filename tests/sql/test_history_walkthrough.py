"""docs/history.md's walkthrough, small: the point-in-time training set has no leakage (every
row equals the simulated business's state at its label's event time) and the naive one, built
from today's tables, does. Starts its own source, replica and sidecar (with --history)."""

from __future__ import annotations

import pytest

from benchmarks.history_walkthrough import run


@pytest.mark.slow
def test_point_in_time_has_no_leakage_and_the_naive_set_has():
    out = run(customers=300, epochs=8, seed=3, verbose=False)
    assert out["labels"] > 100 and 0 < out["positives"] < out["labels"]
    assert out["leaks"]["honest_train"] == 0
    assert out["leaks"]["honest_test"] == 0
    assert out["leaks"]["naive_train"] > out["train"] // 4  # most customers changed since
    for model in ("naive", "pit"):
        assert 0.0 <= out[model]["honest_accuracy"] <= 1.0
