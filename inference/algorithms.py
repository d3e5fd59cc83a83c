"""The algorithm registry: PostgresML's algorithm names mapped to estimators, as data.

The table follows PostgresML's ``_ALGORITHM_MAP`` (pgml-extension's sklearn bindings): a name
exists for a task only where scikit-learn (or XGBoost / LightGBM) has that estimator, so e.g.
``lasso`` is regression only and ``perceptron`` classification only. Classes are named by
import path and imported on first use, so scoring code that never trains pays no import cost.

Two deliberate differences from PostgresML, both written down in docs/inference.md:
``passive_aggressive`` builds the SGD estimator with PA-I settings (scikit-learn 1.8 deprecated
the PassiveAggressive classes in favour of exactly that; PostgresML's ``C`` is accepted as
``eta0``), and quiet defaults (``verbosity``) are set for XGBoost/LightGBM so nothing is printed
inside a database backend.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.metaestimators import available_if

from inference.errors import InvalidHyperparams, PgmlError, UnknownAlgorithm

TASKS = ("regression", "classification")
UNSUPERVISED = ("clustering", "decomposition")  # PostgresML 2.x; trained by inference.unsupervised
ALL_TASKS = TASKS + UNSUPERVISED

# PostgresML's spellings of its classical tasks; anything else is refused by name.
_TASK_SPELLINGS = {t: t for t in ALL_TASKS}

# Estimators with no ONNX converter: trained, stored and scored natively (runtime 'python'),
# the reason recorded in the model's parity. Checked by tests like the supervised fallbacks.
NATIVE_ONLY = {"Birch", "AffinityPropagation", "MeanShift"}


def native_only(estimator_class_name: str) -> bool:
    return estimator_class_name in NATIVE_ONLY
_ALIASES = {"orthoganl_matching_pursuit": "orthogonal_matching_pursuit"}


@dataclass(frozen=True)
class Spec:
    """How to build one algorithm for one task.

    ``joint`` says how multi-target (``train_joint``) works: ``native`` where the estimator
    fits a 2-D target itself, ``wrap`` where it goes through MultiOutputRegressor.
    ``defaults`` apply only where the user did not set the key; ``renames`` map PostgresML's
    hyperparameter names onto the estimator actually built.
    """

    path: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    joint: str = "wrap"
    renames: Mapping[str, str] = field(default_factory=dict)

    def cls(self) -> type:
        module, _, name = self.path.partition(":")
        return getattr(importlib.import_module(module), name)


_LM = "sklearn.linear_model"
_ENS = "sklearn.ensemble"
_SVM = "sklearn.svm"
_GP = "sklearn.gaussian_process"
_CL = "sklearn.cluster"
_PA_REG = {"loss": "epsilon_insensitive", "penalty": None, "learning_rate": "pa1", "eta0": 1.0}
_PA_CLS = {"loss": "hinge", "penalty": None, "learning_rate": "pa1", "eta0": 1.0}
_XGB_QUIET = {"verbosity": 1}  # warnings only: they surface as Python warnings, which train records
_LGBM_QUIET = {"verbosity": -1}
# CatBoost: silent, and no catboost_info/ directory written into the server's data directory.
_CATBOOST_QUIET = {"verbose": False, "allow_writing_files": False}

REGISTRY: dict[str, dict[str, Spec]] = {
    "linear": {
        "regression": Spec(f"{_LM}:LinearRegression", joint="native"),
        "classification": Spec(f"{_LM}:LogisticRegression"),
    },
    "ridge": {
        "regression": Spec(f"{_LM}:Ridge", joint="native"),
        "classification": Spec(f"{_LM}:RidgeClassifier"),
    },
    "lasso": {"regression": Spec(f"{_LM}:Lasso", joint="native")},
    "elastic_net": {"regression": Spec(f"{_LM}:ElasticNet", joint="native")},
    "least_angle": {"regression": Spec(f"{_LM}:Lars", joint="native")},
    "lasso_least_angle": {"regression": Spec(f"{_LM}:LassoLars", joint="native")},
    "orthogonal_matching_pursuit": {
        "regression": Spec(f"{_LM}:OrthogonalMatchingPursuit", joint="native")
    },
    "bayesian_ridge": {"regression": Spec(f"{_LM}:BayesianRidge")},
    "automatic_relevance_determination": {"regression": Spec(f"{_LM}:ARDRegression")},
    "stochastic_gradient_descent": {
        "regression": Spec(f"{_LM}:SGDRegressor"),
        "classification": Spec(f"{_LM}:SGDClassifier"),
    },
    "perceptron": {"classification": Spec(f"{_LM}:Perceptron")},
    "passive_aggressive": {
        "regression": Spec(f"{_LM}:SGDRegressor", defaults=_PA_REG, renames={"C": "eta0"}),
        "classification": Spec(f"{_LM}:SGDClassifier", defaults=_PA_CLS, renames={"C": "eta0"}),
    },
    "ransac": {"regression": Spec(f"{_LM}:RANSACRegressor", joint="native")},
    "theil_sen": {"regression": Spec(f"{_LM}:TheilSenRegressor")},
    "huber": {"regression": Spec(f"{_LM}:HuberRegressor")},
    "quantile": {"regression": Spec(f"{_LM}:QuantileRegressor")},
    "svm": {"regression": Spec(f"{_SVM}:SVR"), "classification": Spec(f"{_SVM}:SVC")},
    "nu_svm": {"regression": Spec(f"{_SVM}:NuSVR"), "classification": Spec(f"{_SVM}:NuSVC")},
    "linear_svm": {
        "regression": Spec(f"{_SVM}:LinearSVR"),
        "classification": Spec(f"{_SVM}:LinearSVC"),
    },
    "ada_boost": {
        "regression": Spec(f"{_ENS}:AdaBoostRegressor"),
        "classification": Spec(f"{_ENS}:AdaBoostClassifier"),
    },
    "bagging": {
        "regression": Spec(f"{_ENS}:BaggingRegressor"),
        "classification": Spec(f"{_ENS}:BaggingClassifier"),
    },
    "extra_trees": {
        "regression": Spec(f"{_ENS}:ExtraTreesRegressor", joint="native"),
        "classification": Spec(f"{_ENS}:ExtraTreesClassifier"),
    },
    "gradient_boosting_trees": {
        "regression": Spec(f"{_ENS}:GradientBoostingRegressor"),
        "classification": Spec(f"{_ENS}:GradientBoostingClassifier"),
    },
    "random_forest": {
        "regression": Spec(f"{_ENS}:RandomForestRegressor", joint="native"),
        "classification": Spec(f"{_ENS}:RandomForestClassifier"),
    },
    "hist_gradient_boosting": {
        "regression": Spec(f"{_ENS}:HistGradientBoostingRegressor"),
        "classification": Spec(f"{_ENS}:HistGradientBoostingClassifier"),
    },
    "xgboost": {
        "regression": Spec("xgboost:XGBRegressor", defaults=_XGB_QUIET, joint="native"),
        "classification": Spec("xgboost:XGBClassifier", defaults=_XGB_QUIET),
    },
    "xgboost_random_forest": {
        "regression": Spec("xgboost:XGBRFRegressor", defaults=_XGB_QUIET, joint="native"),
        "classification": Spec("xgboost:XGBRFClassifier", defaults=_XGB_QUIET),
    },
    "lightgbm": {
        "regression": Spec("lightgbm:LGBMRegressor", defaults=_LGBM_QUIET),
        "classification": Spec("lightgbm:LGBMClassifier", defaults=_LGBM_QUIET),
    },
    "catboost": {
        "regression": Spec("catboost:CatBoostRegressor", defaults=_CATBOOST_QUIET),
        "classification": Spec("catboost:CatBoostClassifier", defaults=_CATBOOST_QUIET),
    },
    "kernel_ridge": {"regression": Spec("sklearn.kernel_ridge:KernelRidge", joint="native")},
    "gaussian_process": {
        "regression": Spec(f"{_GP}:GaussianProcessRegressor", joint="native"),
        "classification": Spec(f"{_GP}:GaussianProcessClassifier"),
    },
    # clustering and decomposition: PostgresML 2.x's names (its sklearn bindings)
    "kmeans": {"clustering": Spec(f"{_CL}:KMeans")},
    "mini_batch_kmeans": {"clustering": Spec(f"{_CL}:MiniBatchKMeans")},
    "affinity_propagation": {"clustering": Spec(f"{_CL}:AffinityPropagation")},
    "birch": {"clustering": Spec(f"{_CL}:Birch")},
    "mean_shift": {"clustering": Spec(f"{_CL}:MeanShift")},
    "spectral": {"clustering": Spec(f"{_CL}:SpectralClustering")},
    "dbscan": {"clustering": Spec(f"{_CL}:DBSCAN")},
    "optics": {"clustering": Spec(f"{_CL}:OPTICS")},
    "pca": {"decomposition": Spec("sklearn.decomposition:PCA")},
}

# PostgresML's default when a clustering / decomposition train leaves algorithm at 'linear'.
DEFAULT_ALGORITHM = {"clustering": "kmeans", "decomposition": "pca"}


def normalize_task(task: str) -> str:
    """Accept PostgresML's spellings of the supervised tasks; refuse the rest by name."""
    key = (task or "").strip().lower()
    if key not in _TASK_SPELLINGS:
        raise PgmlError(
            f"task {task!r} is not supported; use one of {', '.join(ALL_TASKS)}"
        )
    return _TASK_SPELLINGS[key]


def names(task: str) -> list[str]:
    """The algorithm names valid for ``task``, sorted (aliases are accepted but not listed)."""
    task = normalize_task(task)
    return sorted(name for name, by_task in REGISTRY.items() if task in by_task)


def spec(algorithm: str, task: str) -> Spec:
    """The registry entry for ``algorithm`` and ``task``; UnknownAlgorithm lists the valid names."""
    task = normalize_task(task)
    key = (algorithm or "").strip().lower()
    key = _ALIASES.get(key, key)
    entry = REGISTRY.get(key, {}).get(task)
    if entry is None:
        other = [t for t in ALL_TASKS if t in REGISTRY.get(key, {})]
        why = f" (it exists for {other[0]} only)" if other else ""
        raise UnknownAlgorithm(
            f"algorithm {algorithm!r} is not available for {task}{why}; "
            f"valid names: {', '.join(names(task))}"
        )
    return entry


def canonical_name(algorithm: str) -> str:
    """The registry's spelling of ``algorithm`` (lower case, misspelling alias resolved)."""
    key = (algorithm or "").strip().lower()
    return _ALIASES.get(key, key)


def make_estimator(
    algorithm: str,
    task: str,
    hyperparams: dict,
    *,
    joint: bool = False,
    random_state: int | None = None,
):
    """An unfitted estimator for ``algorithm``/``task`` built with ``hyperparams``.

    ``random_state`` is set only where the estimator takes one and the user did not, so a
    model retrains identically from the same snapshot. ``joint`` builds a multi-target
    regressor: the estimator itself where it fits 2-D targets, else MultiOutputRegressor.
    """
    task = normalize_task(task)
    entry = spec(algorithm, task)
    if joint and task != "regression":
        raise PgmlError("joint (multi-target) training is supported for regression only")
    cls = entry.cls()
    params = _build_params(entry, cls, dict(hyperparams or {}), algorithm)
    if random_state is not None and "random_state" in _init_params(cls):
        params.setdefault("random_state", random_state)
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise InvalidHyperparams(
            f"{canonical_name(algorithm)} ({cls.__name__}) rejected the hyperparameters: {exc}; "
            f"valid names: {', '.join(sorted(_init_params(cls)))}"
        ) from exc
    if joint and entry.joint == "wrap":
        from sklearn.multioutput import MultiOutputRegressor

        estimator = MultiOutputRegressor(estimator)
    return estimator


def _build_params(entry: Spec, cls: type, hyperparams: dict, algorithm: str) -> dict:
    for old, new in entry.renames.items():
        if old in hyperparams and new not in hyperparams:
            hyperparams[new] = hyperparams.pop(old)
    if cls.__module__.startswith("lightgbm"):
        _check_lightgbm_names(cls, hyperparams, algorithm)
    return {**entry.defaults, **hyperparams}


def _init_params(cls: type) -> set[str]:
    if hasattr(cls, "_get_param_names"):
        return set(cls._get_param_names())
    return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}


def _check_lightgbm_names(cls: type, hyperparams: dict, algorithm: str) -> None:
    """LightGBM takes any keyword and only logs unknown ones; check against its own list."""
    from lightgbm.basic import _ConfigAliases

    known = set(_init_params(cls))
    for name, aliases in _ConfigAliases._get_all_param_aliases().items():
        known.add(name)
        known.update(aliases)
    unknown = sorted(set(hyperparams) - known)
    if unknown:
        raise InvalidHyperparams(
            f"{canonical_name(algorithm)} ({cls.__name__}) rejected the hyperparameters: "
            f"LightGBM: Unknown parameter: {', '.join(unknown)}"
        )


class LabelEncodedClassifier(ClassifierMixin, BaseEstimator):
    """A classifier trained on class indexes 0..k-1 that answers in the original labels.

    XGBoost insists on 0..k-1 targets and ONNX label outputs are integers, so every classifier
    is fitted on indexes; this wrapper keeps ``classes_`` (the user's numeric labels) so the
    pickled native model predicts real labels, and the ONNX scorer maps indexes the same way.
    The class path is part of the stored model format (pickles name it).
    """

    def __init__(self, estimator=None, classes=None):
        self.estimator = estimator
        self.classes = classes

    def fit(self, X, y):
        self.classes_ = np.asarray(self.classes)
        self.estimator_ = clone(self.estimator).fit(X, y)
        return self

    @classmethod
    def from_fitted(cls, fitted, classes) -> LabelEncodedClassifier:
        """Wrap an estimator already fitted on indexes (e.g. a search's refit winner)."""
        wrapper = cls(estimator=fitted, classes=list(classes))
        wrapper.classes_ = np.asarray(classes)
        wrapper.estimator_ = fitted
        return wrapper

    def predict(self, X):
        # ravel: CatBoostClassifier answers (n, 1)
        return self.classes_[np.asarray(self.estimator_.predict(X), dtype=np.int64).ravel()]

    @available_if(lambda self: has_proba(self.estimator_))
    def predict_proba(self, X):
        return self.estimator_.predict_proba(X)

    @available_if(lambda self: hasattr(self.estimator_, "decision_function"))
    def decision_function(self, X):
        return self.estimator_.decision_function(X)


def has_proba(estimator) -> bool:
    """Whether a fitted estimator really offers probabilities (SVC without probability=True,
    hinge-loss SGD, ridge and perceptron classifiers do not); scikit-learn hides the method
    with ``available_if`` exactly when it is missing."""
    return hasattr(estimator, "predict_proba")
