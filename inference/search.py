"""Hyperparameter search: grid or random over ``search_params``, scored by the key metric.

scikit-learn's GridSearchCV / RandomizedSearchCV do the work; this module only turns
PostgresML's arguments into theirs and the results into JSON. The scoring is the task's key
metric as scikit-learn spells it (``neg_mean_squared_error``: higher is better, so the stored
``mean_test_score`` values are negated MSEs; ``f1_weighted``). The search runs on the already
preprocessed training split; the winner is refitted on all of it (``refit=True``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inference.errors import InvalidData, PgmlError

SEARCHES = ("grid", "random")
SCORING = {"regression": "neg_mean_squared_error", "classification": "f1_weighted"}
DEFAULT_CV = 5
DEFAULT_N_ITER = 10
_ARGS = {"cv", "n_iter"}


def run_search(
    estimator,
    X: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    search: str,
    search_params: dict,
    search_args: dict | None,
    random_state: int,
) -> tuple[Any, dict, dict]:
    """(refitted best estimator, best params, JSON-serialisable results)."""
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    kind = (search or "").strip().lower()
    if kind not in SEARCHES:
        raise PgmlError(f"search {search!r} is not supported; use one of {', '.join(SEARCHES)}")
    grid = _param_grid(estimator, search_params)
    args = dict(search_args or {})
    unknown = sorted(set(args) - _ARGS)
    if unknown:
        raise PgmlError(
            f"search_args has unknown key(s) {', '.join(unknown)}; supported: {', '.join(sorted(_ARGS))}"
        )
    cv = _positive_int(args.get("cv", DEFAULT_CV), "cv")
    if cv < 2:
        raise PgmlError("search_args cv must be at least 2")
    if len(y) < cv:
        raise InvalidData(f"the training split has {len(y)} rows, fewer than cv={cv} folds")
    common = {"scoring": SCORING[task], "cv": cv, "refit": True, "error_score": "raise", "n_jobs": None}
    if kind == "grid":
        searcher = GridSearchCV(estimator, grid, **common)
    else:
        n_iter = _positive_int(args.get("n_iter", DEFAULT_N_ITER), "n_iter")
        searcher = RandomizedSearchCV(
            estimator, grid, n_iter=n_iter, random_state=random_state, **common
        )
    searcher.fit(X, y)
    best = {k: _plain(v) for k, v in searcher.best_params_.items()}
    return searcher.best_estimator_, _strip_prefix(best), _results(searcher)


def _param_grid(estimator, search_params: dict) -> dict[str, list]:
    if not isinstance(search_params, dict) or not search_params:
        raise PgmlError(
            'search needs search_params: a JSON object of {"hyperparameter": [values, ...]}'
        )
    prefix = "estimator__" if _is_multioutput(estimator) else ""
    grid = {}
    for name, values in search_params.items():
        if not isinstance(values, list) or not values:
            raise PgmlError(
                f"search_params {name!r} must be a non-empty JSON array of candidate values"
            )
        grid[prefix + name] = values
    valid = estimator.get_params()
    unknown = sorted(k for k in grid if k not in valid and not _accepts_kwargs(estimator))
    if unknown:
        from inference.errors import InvalidHyperparams

        names = sorted(k.removeprefix(prefix) for k in valid if "__" not in k.removeprefix(prefix))
        raise InvalidHyperparams(
            f"search_params name(s) {', '.join(k.removeprefix(prefix) for k in unknown)} are not "
            f"hyperparameters of {type(estimator).__name__}; valid names: {', '.join(names)}"
        )
    return grid


def _is_multioutput(estimator) -> bool:
    from sklearn.multioutput import MultiOutputRegressor

    return isinstance(estimator, MultiOutputRegressor)


def _accepts_kwargs(estimator) -> bool:
    """XGBoost/LightGBM take arbitrary booster parameters; they validate them at fit."""
    return type(estimator).__module__.split(".")[0] in {"xgboost", "lightgbm"}


def _strip_prefix(params: dict) -> dict:
    return {k.removeprefix("estimator__"): v for k, v in params.items()}


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < 1:
        raise PgmlError(f"search_args {name} must be a positive integer, got {value!r}")
    return int(value)


def _results(searcher) -> dict:
    cv = searcher.cv_results_
    out = {
        "params": [_strip_prefix({k: _plain(v) for k, v in p.items()}) for p in cv["params"]],
        "best_index": int(searcher.best_index_),
        "best_score": _plain(searcher.best_score_),
        "scoring": searcher.scoring,
        "cv": searcher.n_splits_,
        "refit_time": float(searcher.refit_time_),
    }
    for key in ("mean_test_score", "std_test_score", "rank_test_score", "mean_fit_time",
                "std_fit_time", "mean_score_time"):
        out[key] = [_plain(v) for v in cv[key]]
    return out


def _plain(value):
    """numpy scalars and arrays to JSON types; NaN (a failed fold) to None."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
