"""Shared helpers for the pgml SQL tests: connections that collect notices, reference models.

The reference side computes what pgml should have stored, outside PostgreSQL: the same
scikit-learn dataset in the same row order (pgml.load_dataset inserts it in order), the same
split (``train_test_split(range(n), test_size, random_state=0)``), the same estimator
configuration (the registry's make_estimator) and scikit-learn's own metric functions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import psycopg
from sklearn import datasets
from sklearn import metrics as skm
from sklearn.model_selection import train_test_split

from inference import algorithms


def connect(db, autocommit: bool = True) -> psycopg.Connection:
    """A connection whose server notices are kept in ``conn.notices`` (nothing may reach it)."""
    conn = db.connect(autocommit=autocommit)
    conn.notices = []
    conn.add_notice_handler(lambda diag: conn.notices.append(
        f"{diag.severity}: {diag.message_primary}"))
    return conn


def one(conn: psycopg.Connection, query, params=None):
    return conn.execute(query, params).fetchone()[0]


@dataclass(frozen=True)
class Split:
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def y_column(name: str) -> str:
    """The label column of pgml.<name>: breast_cancer's is PostgresML's ``malignant``."""
    return "malignant" if name == "breast_cancer" else "target"


def table_values(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, label) of pgml.<name> as pgml.load_dataset writes it, in row order: FLOAT4
    values (PostgresML's type), breast_cancer's label malignant = scikit-learn's class 0."""
    bunch = getattr(datasets, f"load_{name}")()
    X = np.asarray(bunch.data, dtype=np.float32).astype(np.float64)
    y = np.asarray(bunch.target, dtype=np.float32).astype(np.float64)
    if name == "breast_cancer":
        y = (bunch.target == 0).astype(np.float64)
    return X, y


@functools.cache
def split(name: str, test_size: float = 0.25) -> Split:
    X, y = table_values(name)
    train, test = train_test_split(np.arange(len(X)), test_size=test_size, random_state=0)
    return Split(X[train], X[test], y[train], y[test])


def reference(name: str, task: str, algorithm: str, hyperparams: dict | None = None):
    """(fitted estimator, metrics) as pgml should compute them for ``algorithm`` on ``name``."""
    s = split(name)
    est = algorithms.make_estimator(algorithm, task, hyperparams or {}, random_state=0)
    est.fit(s.X_train, s.y_train)
    pred = np.ravel(est.predict(s.X_test))  # CatBoostClassifier answers (n, 1)
    if task == "regression":
        return est, {
            "r2": skm.r2_score(s.y_test, pred),
            "mean_squared_error": skm.mean_squared_error(s.y_test, pred),
            "mean_absolute_error": skm.mean_absolute_error(s.y_test, pred),
            "explained_variance": skm.explained_variance_score(s.y_test, pred),
        }
    return est, {
        "f1": skm.f1_score(s.y_test, pred, average="weighted", zero_division=0),
        "precision": skm.precision_score(s.y_test, pred, average="weighted", zero_division=0),
        "recall": skm.recall_score(s.y_test, pred, average="weighted", zero_division=0),
        "accuracy": skm.accuracy_score(s.y_test, pred),
    }


def latest_model(conn: psycopg.Connection, project: str) -> dict:
    row = conn.execute(
        "SELECT m.id, m.algorithm, m.runtime, m.metrics, m.parity, m.hyperparams, m.snapshot_id,"
        " m.search_results, m.preprocess FROM pgml.models m JOIN pgml.projects p"
        " ON p.id = m.project_id WHERE p.name = %s ORDER BY m.id DESC LIMIT 1",
        (project,)).fetchone()
    keys = ("id", "algorithm", "runtime", "metrics", "parity", "hyperparams", "snapshot_id",
            "search_results", "preprocess")
    return dict(zip(keys, row, strict=True))


def counts(conn: psycopg.Connection) -> dict[str, int]:
    """Rows in every pgml table plus the number of snapshot tables: 'nothing half-written'."""
    out = {t: one(conn, f"SELECT count(*) FROM pgml.{t}")  # noqa: S608 - fixed names
           for t in ("projects", "snapshots", "models", "files", "deployments")}
    out["snapshot_tables"] = one(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'pgml'"
                                 " AND tablename LIKE 'snapshot\\_%'")
    return out
