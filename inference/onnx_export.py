"""Export a fitted Pipeline (preprocessing + estimator) to one ONNX graph.

skl2onnx converts the scikit-learn estimators; onnxmltools' XGBoost and LightGBM converters, and
CatBoost's own exporter, are registered with skl2onnx so a Pipeline holding them converts in one
piece; the Preprocessor
(inference.preprocess) gets a converter here that writes its fitted numbers as constants:
``Where(IsNaN(x), fill, x)`` then ``(x - offset) * factor`` — standard ONNX operators, so the
same graph works on any execution provider.

The graph has one input, ``features``: float32 [None, n_features], NaN for NULL. Classifiers are
exported with ``zipmap=False`` so probabilities come out as a tensor, and are fitted on class
indexes, so the label output is an index; the original class values, the task and which columns
refuse NULL travel in the model's metadata (``pgml.*`` properties) for the scorer.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from inference.errors import NotExportable

INPUT_NAME = "features"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@functools.cache
def register_converters() -> None:
    """Teach skl2onnx about the Preprocessor, XGBoost and LightGBM (once per process)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    from inference.preprocess import Preprocessor

    update_registered_converter(
        Preprocessor, "PgmlPreprocessor", _preprocessor_shape, _convert_preprocessor
    )
    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        import xgboost as xgb
    except ImportError:  # pragma: no cover - xgboost is a project dependency
        pass
    else:
        for cls in (xgb.XGBRegressor, xgb.XGBRFRegressor):
            update_registered_converter(
                cls, f"XGBoost{cls.__name__}", _xgboost_regressor_shape,
                _convert_xgboost_regressor,
            )
        for cls in (xgb.XGBClassifier, xgb.XGBRFClassifier):
            update_registered_converter(
                cls, f"XGBoost{cls.__name__}", calculate_linear_classifier_output_shapes,
                _convert_xgboost_classifier, options=classifier_options,
            )
    try:
        import catboost
    except ImportError:  # catboost is optional (the ml extra)
        pass
    else:
        update_registered_converter(
            catboost.CatBoostRegressor, "CatBoostCatBoostRegressor",
            calculate_linear_regressor_output_shapes, _convert_catboost)
        update_registered_converter(
            catboost.CatBoostClassifier, "CatBoostCatBoostClassifier",
            calculate_linear_classifier_output_shapes, _convert_catboost,
            options=classifier_options)
        from skl2onnx._supported_operators import sklearn_classifier_list

        if catboost.CatBoostClassifier not in sklearn_classifier_list:  # label + probabilities
            sklearn_classifier_list.append(catboost.CatBoostClassifier)
    try:
        import lightgbm as lgb
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    except ImportError:  # pragma: no cover - lightgbm is a project dependency
        pass
    else:
        update_registered_converter(
            lgb.LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
            convert_lightgbm, options={"split": None},
        )
        update_registered_converter(
            lgb.LGBMClassifier, "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes, convert_lightgbm,
            options=classifier_options,
        )


def export(
    pipeline,
    *,
    task: str,
    n_features: int,
    classes: list | None,
    has_proba: bool,
    error_columns: list[int],
    feature_names: list[str],
) -> bytes:
    """The ONNX bytes for ``pipeline``; NotExportable with the converter's reason otherwise."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    register_converters()
    final = pipeline.steps[-1][1]
    from sklearn.base import is_classifier

    # (clustering by nearest training row exports a KNeighborsClassifier: same options)
    options = _options(final) if task == "classification" or is_classifier(final) else None
    try:
        model = to_onnx(
            pipeline,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset=TARGET_OPSET,
            options=options,
        )
    except Exception as exc:  # skl2onnx raises many kinds; every one means "cannot export"
        raise NotExportable(f"{type(final).__name__} cannot be exported to ONNX: {_reason(exc)}") from exc
    from inference.onnx_graph import fold_imputation_into_trees

    folded = fold_imputation_into_trees(model)
    model.producer_name = "pgml-replica"
    return stamp(model, task=task, classes=classes, has_proba=has_proba,
                 error_columns=error_columns, feature_names=feature_names,
                 **{"pgml.imputation": "folded into trees" if folded else "graph"})


def stamp(model, *, task: str, classes, has_proba: bool, error_columns, feature_names,
          **extra: str) -> bytes:
    """Write the ``pgml.*`` metadata every graph carries - the scorer reads its task, classes
    and columns from the graph itself, whichever exporter made it - and serialize."""
    props = {
        "pgml.task": task,
        **extra,
        "pgml.classes": json.dumps(None if classes is None else [float(c) for c in classes]),
        "pgml.has_proba": "true" if has_proba else "false",
        "pgml.error_columns": json.dumps([int(j) for j in error_columns]),
        "pgml.feature_names": json.dumps(list(feature_names)),
    }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def _options(final) -> dict | None:
    """Probabilities as a tensor (``zipmap=False``) wherever the converter has the option.

    Converters without the option (LinearSVC) still get an entry: skl2onnx's Pipeline parser
    otherwise injects ``zipmap=True`` for a final classifier and the conversion fails.
    """
    from skl2onnx import get_model_alias
    from skl2onnx.common._registration import get_converter

    try:
        allowed = get_converter(get_model_alias(type(final))).get_allowed_options() or {}
    except Exception:  # no converter: to_onnx will say so with its own message
        return None
    return {id(final): {"zipmap": False} if "zipmap" in allowed else {"nocl": False}}


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _convert_xgboost_classifier(scope, operator, container) -> None:
    """onnxmltools' converter, with each tree's class taken from XGBoost's own ``tree_info``.

    onnxmltools assigns tree ``t`` to class ``t % n_classes``, which holds for boosting (one tree
    per class per round) but not for XGBRFClassifier, whose ``num_parallel_tree`` trees per class
    are stored together; the multiclass random forest then scores the wrong classes.
    """
    _convert_xgboost_with_tree_info(
        scope, operator, container, "TreeEnsembleClassifier", "class_treeids", "class_ids"
    )


def _convert_xgboost_regressor(scope, operator, container) -> None:
    """onnxmltools' converter, with each tree's target taken from ``tree_info``: onnxmltools
    sends every tree to target 0, which breaks multi-target (joint) regression."""
    _convert_xgboost_with_tree_info(
        scope, operator, container, "TreeEnsembleRegressor", "target_treeids", "target_ids"
    )


def _xgboost_regressor_shape(operator) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    n_rows = operator.inputs[0].get_first_dimension()
    n_targets = max(1, len(set(_tree_info(operator.raw_operator))))
    operator.outputs[0].type = FloatTensorType([n_rows, n_targets])


def _tree_info(model) -> list[int]:
    """XGBoost's tree -> output table: the shape calculator and the converter both need it,
    and parsing a 100-tree model's JSON takes ~0.15-0.3 s, so it is parsed once per fitted
    booster (tree_graph_models.xgboost_json, shared with the tensor graph and compiled trees)."""
    from inference.tree_graph_models import xgboost_json

    raw = xgboost_json(model.get_booster())
    return raw["learner"]["gradient_booster"]["model"].get("tree_info", [])


def _convert_xgboost_with_tree_info(scope, operator, container, op_type, tree_key, out_key):
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

    first = len(container.nodes)
    convert_xgboost(scope, operator, container)
    tree_info = _tree_info(operator.raw_operator)
    if len(set(tree_info)) < 2:
        return  # one output (regression, binary classification): every tree counts for it
    for node in container.nodes[first:]:
        if node.op_type != op_type:
            continue
        attrs = {a.name: a for a in node.attribute}
        tree_ids = list(attrs[tree_key].ints)
        del attrs[out_key].ints[:]
        attrs[out_key].ints.extend(int(tree_info[t]) for t in tree_ids)


def _convert_catboost(scope, operator, container) -> None:
    """CatBoost's own ONNX export (``save_model(format="onnx")``'s graph): one TreeEnsemble
    node, copied into the pipeline's graph. Its ZipMap, if any, is dropped: classifiers here
    give probabilities as a tensor, the node's second output."""
    from catboost.utils import convert_to_onnx_object
    from onnx.helper import get_attribute_value

    graph = convert_to_onnx_object(operator.raw_operator)
    opsets = {d.domain: d.version for d in graph.opset_import}
    trees = [n for n in graph.graph.node if n.op_type.startswith("TreeEnsemble")]
    others = [n.op_type for n in graph.graph.node if n.op_type not in ("ZipMap",)]
    if len(trees) != 1 or len(others) != 1 or len(graph.graph.initializer):
        raise NotExportable(f"CatBoost exported an unexpected graph: {', '.join(others)}")
    node = trees[0]
    outputs = [v.full_name for v in operator.outputs][:len(node.output)]
    container.add_node(node.op_type, [operator.inputs[0].full_name], outputs,
                       op_domain=node.domain, op_version=opsets.get(node.domain),
                       name=scope.get_unique_operator_name("CatBoost"),
                       **{a.name: get_attribute_value(a) for a in node.attribute})


def _preprocessor_shape(operator) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    n_rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([n_rows, len(operator.raw_operator.spec["columns"])])


def _convert_preprocessor(scope, operator, container) -> None:
    from onnx import TensorProto

    def const(name: str, values: np.ndarray) -> str:
        unique = scope.get_unique_variable_name(name)
        container.add_initializer(
            unique, TensorProto.FLOAT, [len(values)], values.astype(np.float32).tolist()
        )
        return unique

    def node(op: str, inputs: list[str], name: str, output: str | None = None) -> str:
        output = output or scope.get_unique_variable_name(name)
        container.add_node(op, inputs, [output], name=scope.get_unique_operator_name(op))
        return output

    preprocessing_nodes(operator.raw_operator.spec, operator.inputs[0].full_name,
                        operator.outputs[0].full_name, const, node)


def preprocessing_nodes(spec: dict, x: str, out: str | None, const, node) -> str:
    """The Preprocessor as graph nodes - NaN filled per column, then ``(x - offset) * factor``
    unless that is the identity - added through the caller's graph API (``const(name,
    values)`` and ``node(op, inputs, name, output)`` each return the name they made); the
    last node writes ``out`` (or a name of its own when None). Returns that name. One chain for
    the skl2onnx converter above and for ensemble_export's hand-written graph."""
    from inference.preprocess import arrays

    fill, offset, factor, _ = arrays(spec)
    isnan = node("IsNaN", [x], "pgml_isnan")
    scaled = not (np.all(offset == 0) and np.all(factor == 1))
    filled = node("Where", [isnan, const("pgml_fill", fill), x], "pgml_filled",
                  None if scaled else out)
    if not scaled:
        return filled
    shifted = node("Sub", [filled, const("pgml_offset", offset)], "pgml_shifted")
    return node("Mul", [shifted, const("pgml_factor", factor)], "pgml_scaled", out)


def ensemble_export(ens, *, spec: dict | None, task: str, n_features: int,
                    error_columns: list[int], feature_names: list[str]) -> bytes:
    """The default graph of a tree regressor written from its Ensemble (tree_graph_models):
    the preprocessing as the Preprocessor's converter writes it, then one
    TreeEnsembleRegressor with the Ensemble's float32 thresholds in BRANCH_LEQ mode (they
    already decide as the native library does) and NaN sent where the library sends it.

    Why: onnxmltools' XGBoost converter walks the booster's text dump node by node in Python
    (0.08-0.09 s of the 0.15 s export + parity step of a 100-tree, depth-6 model, issue 12);
    pgml.train has the Ensemble already (compiled_trees.start), and its arrays become the
    node attributes in a few vectorized steps. The graph is checked like any other (parity.py).
    NotExportable where the Ensemble is not a plain sum (classification, AdaBoost's median).
    """
    from onnx import TensorProto, helper

    from inference.onnx_graph import fold_imputation_into_trees

    if task != "regression" or ens.post != "identity" or ens.post_scale != 1.0 \
            or ens.weights is not None:
        raise NotExportable("only a plain sum of regression trees is written from its Ensemble")
    k = ens.n_outputs
    parts: dict[str, list] = {name: [] for name in (
        "tree", "node", "feature", "mode", "value", "true", "false", "missing",
        "t_tree", "t_node", "t_id", "t_weight")}
    for t, tree in enumerate(ens.trees):
        m = len(tree.left)
        leaf = tree.left < 0
        ids = np.arange(m, dtype=np.int64)
        parts["tree"].append(np.full(m, t, dtype=np.int64))
        parts["node"].append(ids)
        parts["feature"].append(np.where(leaf, 0, tree.feature))
        parts["mode"].append(leaf)
        parts["value"].append(np.where(leaf, 0.0, tree.threshold).astype(np.float32))
        parts["true"].append(np.where(leaf, 0, tree.left))
        parts["false"].append(np.where(leaf, 0, tree.right))
        parts["missing"].append((~leaf & tree.missing_left).astype(np.int64))
        leaves = ids[leaf]
        parts["t_tree"].append(np.full(len(leaves) * k, t, dtype=np.int64))
        parts["t_node"].append(np.repeat(leaves, k))
        parts["t_id"].append(np.tile(np.arange(k, dtype=np.int64), len(leaves)))
        parts["t_weight"].append(np.asarray(tree.value, dtype=np.float64)[leaf].reshape(-1))
    a = {name: np.concatenate(p) for name, p in parts.items()}
    nodes, inits, x = [], [], INPUT_NAME
    if spec is not None:
        def const(name: str, values) -> str:
            inits.append(helper.make_tensor(name, TensorProto.FLOAT, [n_features],
                                            np.asarray(values, dtype=np.float32).tolist()))
            return name

        def node(op: str, inputs: list[str], name: str, output: str | None = None) -> str:
            nodes.append(helper.make_node(op, inputs, [output or name]))
            return output or name

        x = preprocessing_nodes(spec, x, None, const, node)
    modes = np.where(a["mode"], b"LEAF", b"BRANCH_LEQ").tolist()
    nodes.append(helper.make_node(
        "TreeEnsembleRegressor", [x], ["variable"], domain="ai.onnx.ml", name="pgml_trees",
        n_targets=k, aggregate_function="SUM", post_transform="NONE",
        base_values=np.asarray(ens.base, dtype=np.float32).tolist(),
        nodes_treeids=a["tree"].tolist(), nodes_nodeids=a["node"].tolist(),
        nodes_featureids=a["feature"].tolist(), nodes_modes=modes,
        nodes_values=a["value"].tolist(), nodes_truenodeids=a["true"].tolist(),
        nodes_falsenodeids=a["false"].tolist(),
        nodes_missing_value_tracks_true=a["missing"].tolist(),
        target_treeids=a["t_tree"].tolist(), target_nodeids=a["t_node"].tolist(),
        target_ids=a["t_id"].tolist(), target_weights=a["t_weight"].astype(np.float32).tolist()))
    graph = helper.make_graph(
        nodes, "pgml_trees",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, k])], inits)
    model = helper.make_model(graph, producer_name="pgml-replica", opset_imports=[
        helper.make_opsetid(domain, version) for domain, version in TARGET_OPSET.items()])
    model.ir_version = min(model.ir_version, 9)
    folded = fold_imputation_into_trees(model)
    return stamp(model, task=task, classes=None, has_proba=False, error_columns=error_columns,
                 feature_names=feature_names,
                 **{"pgml.imputation": "folded into trees" if folded else "graph",
                    "pgml.exporter": "ensemble"})
