"""Which of a snapshot's rows train and which test: PostgresML's test_size and test_sampling.

Why its own module: the split is a rule over row positions (and, stratified, the labels),
with no SQL; relations.py reads the rows it is applied to. Rebuildable outside the database:
'random' is scikit-learn's train_test_split over range(n) with the snapshot's random_state.
"""

from __future__ import annotations

import math

import numpy as np

from inference.errors import InvalidData, PgmlError

SAMPLINGS = ("random", "first", "last", "stratified")


def test_fraction(test_size: float) -> float:
    """test_size arrives as float4 (0.2 -> 0.2000000030); use the decimal the user wrote."""
    fraction = float(f"{float(test_size):.7g}")
    if not 0 < fraction < 1:
        raise InvalidData(f"test_size must be between 0 and 1 (exclusive), got {fraction:g}")
    return fraction


def check_sampling(test_sampling: str) -> str:
    sampling = (test_sampling or "").strip().lower()
    if sampling not in SAMPLINGS:
        raise PgmlError(f"test_sampling {test_sampling!r} is not one of {', '.join(SAMPLINGS)}")
    return sampling


def split(n: int, test_size: float, sampling: str, random_state: int,
          labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train row indexes, test row indexes) of an n-row snapshot.

    The test split has ceil(test_size * n) rows, as scikit-learn's train_test_split. 'random'
    is exactly ``train_test_split(range(n), test_size, random_state, shuffle=True)``, so the
    same split can be rebuilt outside the database; 'stratified' is the same call with
    ``stratify=labels`` (classification; where a class has fewer than 2 rows, or there are more
    classes than test rows, it is the plain random split); 'first' tests on the first rows of the
    snapshot, 'last' on the last ones.
    """
    fraction = test_fraction(test_size)
    n_test = math.ceil(fraction * n)
    n_train = n - n_test
    if n == 0:
        raise InvalidData("the relation is empty; there is nothing to train on")
    if n_train < 2 or n_test < 1:
        raise InvalidData(
            f"the relation has {n} row(s): test_size {fraction:g} leaves {n_train} for training "
            f"and {n_test} for testing; at least 2 and 1 are needed -- add rows or change test_size"
        )
    rows = np.arange(n)
    if sampling == "first":
        return rows[n_test:], rows[:n_test]
    if sampling == "last":
        return rows[:n_train], rows[n_train:]
    from sklearn.model_selection import train_test_split

    stratify = labels if sampling == "stratified" else None
    if stratify is not None:
        _, counts = np.unique(stratify, return_counts=True)
        if counts.min() < 2 or len(counts) > n_test or len(counts) > n_train:
            stratify = None  # too few rows per class to stratify: a plain random split
    train, test = train_test_split(rows, test_size=fraction, random_state=random_state,
                                   shuffle=True, stratify=stratify)
    return train, test
