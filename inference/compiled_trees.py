"""Tree ensembles compiled to C: the per-row scorer of tree models where a C compiler is present.

Why: a ``pgml.predict`` call through onnxruntime spends most of its time in the TreeEnsemble
kernel's per-call machinery, not in the trees (docs/benchmarks.md, "Prediction"). Plain C
called through ctypes with no arguments on a buffer that stays put does the trees and nothing
else; and loading it needs ctypes only -- no numpy, no onnxruntime, no
onnx -- which is what makes a brand-new backend's first call quick (PostgresML #1175).

How, once per trained model (``for_training``, called by pgml.train):

1. The fitted model becomes tree_graph_models.Ensemble -- the one neutral form the tensor graph
   is built from, whose float32 comparisons already decide as the native libraries do.
2. ``c_source`` writes it as C: the preprocessing (impute, then ``(x - offset) * factor`` in
   float32, as the graphs do); the trees as constant arrays walked without branches, eight
   trees in step (``_lockstep``: ``i = LEFT[i] + go_right`` a fixed number of times, NaN to
   the side the library sends it); the sum in double from the base score; then ``post``
   (identity, exp, sigmoid, softmax, proba). The source starts with a comment holding a JSON
   header (task, classes, widths, the parity record) so it describes itself. Measured per
   distinct row against nested ``if``s per split (tl2cgen's form) in one run, load ~10:
   XGBoost 100x depth 6 1.02 vs 1.52 us, random forest 100 deep trees 2.71 vs 8.27 us,
   LightGBM 100 trees 1.20 vs 1.31 us -- mispredicted branches are what a distinct row costs
   -- and arrays build in a fraction of the time.
3. It is compiled (``cc -O2 -shared``) into the cache directory and scored on the same fixed
   sample of the test split as the ONNX graphs; relative differences above RTOL (1e-5, as the
   graphs) or a label off the decision boundary drop it. The source is stored with the model
   (pgml.files ``trees.c``), so any backend -- another replica, a host with a cold cache --
   rebuilds the same library from it.

Loading, and the scorer that answers pgml.predict with it: compiled_scorer.py (which imports
neither numpy nor this module, so a scoring backend stays light).

Not compiled (ONNX scores them): AdaBoost regression (weighted median), models whose preprocess
has an ``impute: error`` column, joint models' single-row call (their batches are fine), and
anything Ensemble cannot express (categorical splits, dart).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from inference.compiled_scorer import (
    FORMAT,
    Build,
    body_sha256,
    build,
    compiler,
    header,
    load,
    start_build,
)
from inference.errors import NotExportable
from inference.parity import TREE_RTOL, tree_parity

SOURCE_FILE = "trees.c"  # the model's file in pgml.files
RTOL = TREE_RTOL  # as tree_graph's: relative to max(1, |native|)
# Above this many nodes (all trees) the model is not compiled (ONNX scores it): the source
# would be tens of megabytes.
MAX_NODES = 500_000
GROUP = 8  # trees walked together by _lockstep (the STEP macros below name eight)
POSTS = ("identity", "exp", "sigmoid", "softmax", "proba")


# -- C source ------------------------------------------------------------------------------


def c_source(pipeline, *, task: str, n_features: int, classes: list | None,
             parity_record: dict | None = None, ens=None) -> str:
    """The C source of a fitted tree pipeline; NotExportable when it has no compiled form.

    ``ens``: the pipeline's Ensemble where the caller has it already (pgml.train builds it
    once for this and the tensor graph)."""
    from inference.tree_graph import unwrap
    from inference.tree_graph_models import ensemble_of

    spec, final = unwrap(pipeline)
    n_classes = None if task != "classification" else len(classes)
    if ens is None:
        ens = ensemble_of(final, n_features, n_classes)
    if ens.post not in POSTS:
        raise NotExportable(f"{type(final).__name__} ({ens.post} of the trees) is not compiled")
    if n_classes is not None and ens.post == "identity":
        raise NotExportable(f"{type(final).__name__} gives no class scores")
    prep = None
    if spec is not None:
        from inference.preprocess import arrays

        fill, offset, factor, errors = arrays(spec)
        if len(errors):
            raise NotExportable("a preprocess column with impute 'error' is checked by the graph")
        prep = (fill.astype(np.float32), offset.astype(np.float32), factor.astype(np.float32))
    n_out = ens.n_outputs if n_classes is None else n_classes
    head = {"format": FORMAT, "task": task, "n_features": n_features, "n_outputs": n_out,
              "classes": classes, "post": ens.post, "trees": len(ens.trees),
              "max_depth": ens.max_depth(), "parity": parity_record}
    nodes = sum(len(t.left) for t in ens.trees)
    if nodes > MAX_NODES:
        raise NotExportable(f"{nodes} tree nodes: above {MAX_NODES}, compiling takes too long")
    w = _Writer()
    w.line("#include <math.h>\n#include <stdint.h>\n#include <string.h>")
    w.line(f"#define NF {n_features}\n#define K {ens.n_outputs}\n#define NOUT {n_out}")
    w.line("float pgml_input[NF];")
    w.line("int32_t pgml_n_features(void) { return NF; }")
    w.line("int32_t pgml_n_outputs(void) { return NOUT; }")
    _lockstep(w, ens)
    w.line("static void raw_sum(const float *in, double *r) {")
    if prep is None:
        w.line("  const float *x = in;")
    else:
        fill, offset, factor = prep
        w.line(f"  static const float FILL[NF] = {{{_floats(fill)}}};")
        w.line(f"  static const float OFF[NF] = {{{_floats(offset)}}};")
        w.line(f"  static const float FAC[NF] = {{{_floats(factor)}}};")
        w.line("  float x[NF];")
        w.line("  for (int j = 0; j < NF; j++) { float v = in[j]; if (isnan(v)) v = FILL[j];"
               " v = v - OFF[j]; x[j] = v * FAC[j]; }")
    for k in range(ens.n_outputs):
        w.line(f"  r[{k}] = {_double(ens.base[k])};")
    w.line("  walk(x, r);")
    if ens.post_scale != 1.0:
        w.line(f"  for (int k = 0; k < K; k++) r[k] *= {_double(ens.post_scale)};")
    w.line("}")
    _finish(w, ens.post, task)
    body = w.text()
    head["body_sha256"] = body_sha256("\n" + body)
    return "/* " + json.dumps(head).replace("*/", "* /") + " */\n" + body


class _Writer:
    def __init__(self):
        self.parts: list[str] = []

    def line(self, s: str) -> None:
        self.parts.append(s)

    def text(self) -> str:
        return "\n".join(self.parts) + "\n"


def _floats(values) -> str:
    return ", ".join(_float(v) for v in values)


def _float(v) -> str:
    v = np.float32(v)
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return f"{float(v).hex()}f"  # exact: a hex float literal is the float32 value itself


def _double(v) -> str:
    v = float(v)
    if v != v:
        return "NAN"
    if v in (float("inf"), float("-inf")):
        return "INFINITY" if v > 0 else "-INFINITY"
    return v.hex()


def _lockstep(w: _Writer, ens) -> None:
    """All trees as constant arrays, walked without branches, eight at a time.

    Each tree takes a fixed number of steps ``i = LEFT[i] + go_right`` (children stored as
    adjacent pairs; a leaf is its own left child with threshold +inf, so extra steps stay on
    it): a distinct row's path costs no mispredicted branch, and eight independent chains per
    step keep the CPU's pipeline full. Trees are ordered by depth so a group of eight walks
    about as deep as its members need (its deepest one's depth)."""
    K = ens.n_outputs
    trees = sorted(ens.trees, key=lambda t: t.depth())
    feat, thr, left, mright, val, roots = [], [], [], [], [], []
    for t in trees:
        base = len(feat)
        roots.append(base)
        order, new = [0], {0: 0}
        k = 0
        while k < len(order):  # breadth first, children appended as a pair
            i = order[k]
            if t.left[i] >= 0:
                for child in (int(t.left[i]), int(t.right[i])):
                    new[child] = len(order)
                    order.append(child)
            k += 1
        for i in order:
            leaf = t.left[i] < 0
            feat.append(0 if leaf else int(t.feature[i]))
            thr.append("INFINITY" if leaf else _float(t.threshold[i]))
            left.append(base + (new[i] if leaf else new[int(t.left[i])]))
            mright.append(0 if leaf else int(not t.missing_left[i]))
            val += [_double(t.value[i, k]) if leaf else "0" for k in range(K)]
    depths = [t.depth() for t in trees]
    groups = [max(depths[g:g + GROUP]) for g in range(0, len(trees) - GROUP + 1, GROUP)]
    w.line(f"#define T {len(roots)}\n#define G {GROUP}\n#define NG {len(groups)}")
    w.line(f"static const int32_t ROOT[T] = {{{', '.join(map(str, roots))}}};")
    w.line(f"static const int32_t DEPTH[T] = {{{', '.join(map(str, depths))}}};")
    w.line(f"static const int32_t GDEPTH[NG + 1] = {{{', '.join(map(str, groups + [0]))}}};")
    w.line(f"static const int32_t FEAT[] = {{{', '.join(map(str, feat))}}};")
    w.line(f"static const float THR[] = {{{', '.join(thr)}}};")
    w.line(f"static const int32_t LEFT[] = {{{', '.join(map(str, left))}}};")
    w.line(f"static const unsigned char MRIGHT[] = {{{', '.join(map(str, mright))}}};")
    w.line(f"static const double VAL[] = {{{', '.join(val)}}};")
    w.line("#define STEP(i) { float v = x[FEAT[i]]; "
           "i = LEFT[i] + ((v > THR[i]) | (MRIGHT[i] & (v != v))); }")
    w.line("static void walk(const float *x, double *r) {\n  int t = 0;\n"
           "  for (int g = 0; g < NG; g++, t += G) {\n"
           "    int32_t i0 = ROOT[t], i1 = ROOT[t+1], i2 = ROOT[t+2], i3 = ROOT[t+3],"
           " i4 = ROOT[t+4], i5 = ROOT[t+5], i6 = ROOT[t+6], i7 = ROOT[t+7];\n"
           "    for (int d = 0; d < GDEPTH[g]; d++) { STEP(i0) STEP(i1) STEP(i2) STEP(i3)"
           " STEP(i4) STEP(i5) STEP(i6) STEP(i7) }\n"
           "    int32_t ix[G] = {i0, i1, i2, i3, i4, i5, i6, i7};\n"
           "    for (int j = 0; j < G; j++) for (int k = 0; k < K; k++)"
           " r[k] += VAL[(int64_t) ix[j] * K + k];\n  }\n"
           "  for (; t < T; t++) {\n    int32_t i = ROOT[t];\n"
           "    for (int d = 0; d < DEPTH[t]; d++) STEP(i)\n"
           "    for (int k = 0; k < K; k++) r[k] += VAL[(int64_t) i * K + k];\n  }\n}")


def _finish(w: _Writer, post: str, task: str) -> None:
    """``finish``: raw sums -> outputs (regression values or class probabilities) + label."""
    w.line("static int64_t finish(double *r, double *out) {")
    if task != "classification":
        expr = {"identity": "r[k]", "exp": "exp(r[k])", "sigmoid": "1.0 / (1.0 + exp(-r[k]))"}
        w.line(f"  for (int k = 0; k < K; k++) out[k] = {expr[post]};\n  return 0;\n}}")
    elif post == "sigmoid":  # binary: one score; label by its sign, as the graphs do
        w.line("  double p = 1.0 / (1.0 + exp(-r[0]));\n  out[0] = 1.0 - p; out[1] = p;\n"
               "  return r[0] > 0.0 ? 1 : 0;\n}")
    else:  # softmax or proba: label = first maximum of the scores
        w.line("  int64_t best = 0;\n  for (int k = 1; k < K; k++) if (r[k] > r[best]) best = k;")
        if post == "softmax":
            w.line("  double s = 0.0;\n  for (int k = 0; k < K; k++) { out[k] = exp(r[k] - r[best]);"
                   " s += out[k]; }\n  for (int k = 0; k < K; k++) out[k] /= s;")
        else:
            w.line("  for (int k = 0; k < K; k++) out[k] = r[k];")
        w.line("  return best;\n}")
    # pgml_one: the row in pgml_input -> the prediction (class index for classification)
    w.line("double pgml_one(void) {\n  double r[K], out[NOUT];\n  raw_sum(pgml_input, r);\n"
           "  int64_t label = finish(r, out);")
    w.line("  return (double) label;\n}" if task == "classification" else "  return out[0];\n}")
    w.line("void pgml_rows(const float *X, int64_t n, double *out, int64_t *labels) {\n"
           "  double r[K];\n  for (int64_t i = 0; i < n; i++) {\n"
           "    raw_sum(X + i * NF, r);\n    int64_t label = finish(r, out + i * NOUT);\n"
           "    if (labels) labels[i] = label;\n  }\n}")


# -- training ------------------------------------------------------------------------------


@dataclass
class Pending:
    """A fitted model's compiled form on its way: the Ensemble (the tensor graph uses it too),
    the C source and its compile already running, or the reason there is none."""

    ensemble: object | None
    source: str | None
    build: Build | None
    reason: str | None

    def cancel(self) -> None:
        if self.build is not None:
            self.build.cancel()


def start(pipeline, *, task: str, classes: list | None, n_features: int) -> Pending:
    """Generate the C source of a freshly fitted pipeline and start compiling it.

    Called by training.train right after the fit, so the compiler (a subprocess, on another
    core) runs while the test split is scored and the ONNX graphs are made; ``checked`` then
    waits for it. The caller cancels it when the model is not served (see for_training).
    """
    from inference.tree_graph import unwrap
    from inference.tree_graph_models import ensemble_of

    _, final = unwrap(pipeline)
    n_classes = None if task != "classification" else len(classes)
    try:
        ens, reason = ensemble_of(final, n_features, n_classes), None
    except NotExportable as exc:
        ens, reason = None, str(exc)
    if compiler() is None:
        return Pending(ens, None, None, "no C compiler on this host")
    if ens is None:
        return Pending(None, None, None, reason)
    try:
        source = c_source(pipeline, task=task, n_features=n_features, classes=classes, ens=ens)
    except NotExportable as exc:
        return Pending(ens, None, None, str(exc))
    return Pending(ens, source, start_build(source), None)


def checked(pipeline, X: np.ndarray, *, task: str, classes: list | None, n_features: int,
            model_id: int, pending: Pending | None = None,
            native: tuple | None = None) -> tuple[str | None, dict]:
    """(source or None, parity record): generated, compiled, scored on ``X`` and compared.

    ``pending``: what ``start`` began for this pipeline (else it is done here, in the
    foreground); ``native``: the native model's (labels or values, probabilities or None)
    on ``X`` as float32, where the caller has them already."""
    if pending is None:
        pending = start(pipeline, task=task, classes=classes, n_features=n_features)
    if pending.source is None:
        return None, {"ok": False, "reason": pending.reason}
    source = pending.source
    if pending.build is not None:
        pending.build.finish(model_id)  # the library is in the cache (or None: load says)
    trees = load(source, model_id)
    if trees is None:
        return None, {"ok": False, "reason": "the C compiler failed or the cache is unusable"}
    X = np.asarray(X, dtype=np.float32)
    out, labels = trees.rows(X)
    if native is None:
        native = native_on(pipeline, X, task)
    if task == "classification":
        native_labels, native_proba = native
        ours = np.asarray(classes, dtype=np.float64)[labels]
        record = tree_parity(native_proba, out, ours != native_labels, native_proba)
    else:
        record = tree_parity(np.asarray(native[0]).reshape(len(X), -1), out)
    if not record["ok"]:
        record["reason"] = "compiled trees differ from the native model"
        return None, record
    final = with_parity(source, record)
    build(final, model_id)  # into this host's cache now: the first predict finds it
    return final, record


def native_on(pipeline, X: np.ndarray, task: str) -> tuple:
    """The native model's (labels or values, probabilities or None) on ``X`` rounded to
    float32 -- what a scorer built from its trees sees -- for the parity checks."""
    X64 = np.asarray(X, dtype=np.float32).astype(np.float64)
    values = np.asarray(pipeline.predict(X64), dtype=np.float64)
    if task != "classification":
        return values, None
    return values, np.asarray(pipeline.predict_proba(X64), dtype=np.float64)


def with_parity(source: str, record: dict) -> str:
    """``source`` with the parity record in its header (as c_source(parity_record=) writes
    it; the body, hence the library, is unchanged)."""
    head, body = source.split("\n", 1)
    found = header(head)
    found["parity"] = record
    return "/* " + json.dumps(found).replace("*/", "* /") + " */\n" + body


def for_training(result, task: str, feature_names: list[str], X_test: np.ndarray,
                 random_state: int, model_id: int,
                 native: tuple | None = None) -> tuple[bytes | None, dict]:
    """The C source pgml.train stores beside the graphs (served tree models), and its record.

    ``result.compiled``: the Pending training.train started (its compile has run beside the
    ONNX export); ``native``: the native answers on the parity sample (parity.sample_rows)."""
    from inference import parity

    pending = getattr(result, "compiled", None)
    if result.runtime != "onnx":
        if pending is not None:
            pending.cancel()
        return None, {"ok": False, "reason": "the model is not served from ONNX"}
    rows = parity.sample_rows(len(X_test), random_state)
    X = X_test if rows is None else X_test[rows]
    try:
        source, record = checked(result.estimator, X, task=task, classes=result.classes,
                                 n_features=len(feature_names), model_id=model_id,
                                 pending=pending, native=native)
    finally:
        if pending is not None:
            pending.cancel()
    return (None if source is None else source.encode()), record
