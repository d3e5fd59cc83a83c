"""Test-split metrics, computed with scikit-learn's own functions so they can be checked.

Regression: r2, mean_squared_error, mean_absolute_error, explained_variance (multi-target:
scikit-learn's uniform average over targets). Classification: f1, precision and recall with
``average="weighted"`` and ``zero_division=0``, accuracy, and where probabilities exist
roc_auc (binary: positive-class column; multiclass: one-vs-rest, macro) and log_loss over the
model's classes. A metric that is undefined on the split (one class in the test split, a
label the model never saw) is left out rather than stored as NaN: JSON has no NaN.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

KEY_METRICS = {"regression": ("mean_squared_error", False), "classification": ("f1", True),
               "clustering": ("silhouette", True),
               "decomposition": ("cumulative_explained_variance", True)}


def key_metric(task: str) -> tuple[str, bool]:
    """The deployment metric and whether higher is better (PostgresML's choice)."""
    from inference.algorithms import normalize_task

    return KEY_METRICS[normalize_task(task)]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return _finite({
        "r2": skm.r2_score(y_true, y_pred),
        "mean_squared_error": skm.mean_squared_error(y_true, y_pred),
        "mean_absolute_error": skm.mean_absolute_error(y_true, y_pred),
        "explained_variance": skm.explained_variance_score(y_true, y_pred),
    })


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, classes: np.ndarray
) -> dict[str, float]:
    """Labels are compared as codes: scikit-learn would call labels like 20.5 "continuous",
    and every metric here is unchanged by renaming the classes consistently."""
    labels = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred), classes]))
    y_true = np.searchsorted(labels, y_true)
    y_pred = np.searchsorted(labels, y_pred)
    classes = np.searchsorted(labels, classes)
    out = {
        "f1": skm.f1_score(y_true, y_pred, average="weighted", zero_division=0),
        "precision": skm.precision_score(y_true, y_pred, average="weighted", zero_division=0),
        "recall": skm.recall_score(y_true, y_pred, average="weighted", zero_division=0),
        "accuracy": skm.accuracy_score(y_true, y_pred),
    }
    if proba is not None:
        out.update(_probability_metrics(y_true, proba, classes))
    return _finite(out)


def _probability_metrics(y_true, proba, classes) -> dict[str, float]:
    out: dict[str, float] = {}
    seen = np.isin(y_true, classes)
    if not seen.all():
        return out  # a test label the model never saw: both metrics are undefined
    try:
        if len(classes) == 2:
            out["roc_auc"] = skm.roc_auc_score(y_true, proba[:, 1])
        else:
            out["roc_auc"] = skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)
    except ValueError:
        pass  # one class in the test split
    out["log_loss"] = skm.log_loss(y_true, proba, labels=classes)
    return out


def _finite(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
