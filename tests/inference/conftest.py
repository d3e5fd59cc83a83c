"""Shared data for the inference tests: scikit-learn's bundled datasets, split once per session.

The splits are fixed (``train_test_split(..., test_size=0.25, random_state=0)``) so every test
compares against scikit-learn on exactly the rows the library saw.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
from sklearn import datasets
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits


@dataclass(frozen=True)
class Split:
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]


@functools.cache
def split(name: str) -> Split:
    loader = getattr(datasets, f"load_{name}")
    bunch = loader()
    X, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.float64)
    names = [str(n).replace(" ", "_") for n in bunch.feature_names]
    if name == "linnerud":  # 20 rows: a fixed 15/5 split keeps every target's spread in train
        return Split(X[:15], X[15:], y[:15], y[15:], names)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    return Split(X_train, X_test, y_train, y_test, names)


@pytest.fixture(scope="session", autouse=True)
def _one_openmp_thread():
    """HistGradientBoosting, XGBoost and LightGBM use OpenMP; on a shared 2-core machine their
    spinning workers fight other test processes and the suite slows several-fold. One thread
    changes nothing these tests check (train and reference run under the same limit)."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="session")
def diabetes() -> Split:
    return split("diabetes")


@pytest.fixture(scope="session")
def iris() -> Split:
    return split("iris")


@pytest.fixture(scope="session")
def breast_cancer() -> Split:
    return split("breast_cancer")


@pytest.fixture(scope="session")
def linnerud() -> Split:
    return split("linnerud")
