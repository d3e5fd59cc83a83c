"""Text categorical columns and text labels: PostgresML 2.x's ``encode`` as plain numbers.

Why outside the ONNX graph. The scorer feeds one float tensor to every graph (one call per
row, one per batch); string inputs would make every model two-typed. So text becomes numbers
*before* the graph, from a category map stored with the model, and the graph takes the encoded
features (imputation and scaling of those stay inside it, as for any column). A user taking a
model away with ``pgml.export_onnx`` encodes the same way: ``pgml.models.preprocess->'encoding'``
holds the map.

Codes (PostgresML's scheme): NULL is category 0, the snapshot's distinct values are 1..k in
byte order (``COLLATE "C"``; PostgresML numbered them in order of first appearance in its own
shuffled copy, which nobody could rely on). A value the snapshot never had (at predict time)
is NaN, so the column's imputation decides (default ``mode`` for a categorical column).

Per column, ``encode`` (training's preprocess JSON):

=============  ==========================================================================
native         the code itself, one feature (default; trees split on it)
ordinal [...]  the value's position in the user's list (1-based), NULL 0; a value missing
               from the list is an error, as in PostgresML
target         the mean of the (first) label over the training rows of that category; a
               category without training rows is NaN (imputed)
one_hot        one 0/1 feature per category, named ``col=value``; NULL and unknown all 0
=============  ==========================================================================

Labels. A text y column (classification only) trains on its codes; ``pgml.predict`` returns
the code as a number -- PostgresML's ``pgml.predict`` returns REAL, the category's value, for
a text label too -- and ``pgml.predict_label`` returns the class as text.
"""

from __future__ import annotations

import numpy as np

from inference.errors import InvalidData, PgmlError

# Base types encoded as categories (a domain over one of them counts as that type).
TEXT_TYPES = {25: "text", 1043: "character varying", 1042: "character", 19: "name"}
ENCODINGS = ("native", "ordinal", "target", "one_hot")


def encode_option(name: str, options) -> tuple[str, list[str] | None]:
    """(kind, ordinal list) of one column's ``encode`` option (a string or {"ordinal": [...]})."""
    given = (options or {}).get("encode", "native") if isinstance(options, dict) else "native"
    if isinstance(given, dict) and len(given) == 1 and "ordinal" in given:
        values = given["ordinal"]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise PgmlError(f"preprocess encode ordinal for column {name!r} must be a list of "
                            "the column's values in order, e.g. {\"ordinal\": [\"low\", \"high\"]}")
        return "ordinal", values
    if given == "ordinal":
        raise PgmlError(f"preprocess encode ordinal for column {name!r} needs the values in "
                        "order: {\"encode\": {\"ordinal\": [\"low\", \"mid\", \"high\"]}}")
    if given not in ENCODINGS:
        raise PgmlError(f"preprocess encode {given!r} for column {name!r} is not one of "
                        f"{', '.join(ENCODINGS)}")
    return given, None


def fit(columns: list[dict], preprocess: dict, values: dict[str, np.ndarray],
        train_rows: np.ndarray, target: np.ndarray | None):
    """Encode the categorical feature columns of a snapshot for one training.

    ``columns`` is the snapshot's column metadata (``categories`` on text columns), ``values``
    the loaded columns (codes for text columns). Returns (features, values, preprocess,
    encoding): the model's feature names, the values with the encoded features added, the
    preprocess options for those features (``encode`` removed, ``mode`` as the default impute
    of a categorical column) and the encoding to store with the model (None without any text
    column).
    """
    features: list[str] = []
    out_pre = {k: v for k, v in preprocess.items()}
    inputs, any_text = [], False
    for c in columns:
        if c["label"]:
            continue
        name, cats = c["name"], c.get("categories")
        if cats is None:
            if isinstance(preprocess.get(name), dict) and \
                    preprocess[name].get("encode") not in (None, "native"):
                raise PgmlError(f"preprocess encode for column {name!r}: it is not a text "
                                "column; encode applies to text categoricals only")
            if isinstance(preprocess.get(name), dict) and "encode" in preprocess[name]:
                out_pre[name] = {k: v for k, v in preprocess[name].items() if k != "encode"}
            width = c.get("width")
            names = [name] if width is None else [f"{name}[{i + 1}]" for i in range(int(width))]
            features += names
            inputs.append({"name": name, "width": len(names) if width is not None else None})
            continue
        any_text = True
        options = dict(preprocess.get(name) or {})
        kind, order = encode_option(name, options)
        options.pop("encode", None)
        if options.get("impute") == "mean" and kind != "target":
            raise PgmlError(
                f"preprocess impute 'mean' for the text column {name!r}: there is no average "
                "category; use 'mode', or encode it with 'target'")
        codes = values[name]
        table = _table(name, kind, order, cats, codes, train_rows, target)
        entry = {"name": name, "encode": kind, "categories": cats}
        if kind == "one_hot":
            names = [f"{name}={v}" for v in cats]
            for j, n in enumerate(names):
                values[n] = (codes == j + 1).astype(np.float64)
                out_pre.pop(n, None)
            out_pre.pop(name, None)
            entry["features"] = names
            features += names
        else:
            entry["values"] = [None if np.isnan(v) else float(v) for v in table]
            values[name] = _lookup(table, codes)
            options.setdefault("impute", "mode")
            out_pre[name] = options
            features.append(name)
        inputs.append(entry)
    return features, values, out_pre, ({"inputs": inputs} if any_text else None)


def _table(name, kind, order, cats, codes, train_rows, target) -> np.ndarray:
    """The feature value of each code 0..k (NULL first) for a one-feature encoding."""
    if kind == "native":
        return np.arange(len(cats) + 1, dtype=np.float64)
    if kind == "ordinal":
        missing = [v for v in cats if v not in order]
        if missing:
            raise InvalidData(f"column {name!r} has value(s) {', '.join(map(repr, missing[:5]))} "
                              f"not in its ordinal list {order}; list every value in order")
        return np.array([0.0] + [order.index(v) + 1.0 for v in cats])
    if target is None:
        raise PgmlError(f"preprocess encode 'target' for column {name!r} needs a y column")
    train_codes = codes[train_rows].astype(np.int64)
    sums = np.bincount(train_codes, weights=target[train_rows], minlength=len(cats) + 1)
    counts = np.bincount(train_codes, minlength=len(cats) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """table[code], NaN where the code is NaN (a value the snapshot never had)."""
    known = ~np.isnan(codes)
    out = np.full(codes.shape, np.nan)
    out[known] = table[codes[known].astype(np.int64)]
    return out


def apply(encoding: dict, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The stored encoding over loaded columns (text columns as codes of the same snapshot
    categories): the encoded features added to ``values``."""
    for entry in encoding["inputs"]:
        if "encode" not in entry:
            continue
        codes = values[entry["name"]]
        if entry["encode"] == "one_hot":
            for j, n in enumerate(entry["features"]):
                values[n] = (codes == j + 1).astype(np.float64)
        else:
            table = np.array([np.nan if v is None else v for v in entry["values"]])
            values[entry["name"]] = _lookup(table, codes)
    return values


def encode_row(encoding: dict, fields: list) -> list:
    """One row's fields (relation order, text as text) as the model's encoded features."""
    if len(fields) != len(encoding["inputs"]):
        raise InvalidData(f"the row has {len(fields)} fields; the model takes "
                          f"{len(encoding['inputs'])} columns: "
                          + ", ".join(e["name"] for e in encoding["inputs"]))
    out: list = []
    for entry, value in zip(encoding["inputs"], fields, strict=True):
        if "encode" not in entry:
            if isinstance(value, str):
                raise InvalidData(f"column {entry['name']!r} is numeric, got text {value!r}")
            if type(value) is list:
                out += _flat(value)
            else:
                out.append(float(value) if isinstance(value, bool) else value)
            continue
        code = _code(entry["categories"], value)
        if entry["encode"] == "one_hot":
            out += [1.0 if code == j + 1 else 0.0 for j in range(len(entry["categories"]))]
        else:
            out.append(None if code is None else entry["values"][code])
    return out


def _code(categories: list[str], value) -> int | None:
    if value is None:
        return 0
    import bisect

    text = value if isinstance(value, str) else str(value)
    i = bisect.bisect_left(categories, text)  # byte order == the snapshot's COLLATE "C" sort
    return i + 1 if i < len(categories) and categories[i] == text else None


def _flat(nested) -> list:
    out = []
    for item in nested:
        out += _flat(item) if type(item) is list else [item]
    return out


def label(categories: list[str], prediction: float) -> str | None:
    """The class text of a predicted code (pgml.predict_label)."""
    if prediction != prediction or not 1 <= int(prediction) <= len(categories):
        return None
    return categories[int(prediction) - 1]
