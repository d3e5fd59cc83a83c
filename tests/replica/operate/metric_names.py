"""The metric names and labels the sidecar exposes, derived from replica.metrics' registry,
and the pgml_replica_* selectors a PromQL expression uses - so rules and dashboards are
checked against the real interface, never a copied list."""

from __future__ import annotations

import re

from prometheus_client.metrics import MetricWrapperBase

from replica import metrics

SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"), "info": ("_info",),
            "summary": ("", "_sum", "_count", "_created")}


# Labels Prometheus adds to every scraped series (the target's), so selectors may match on them
TARGET_LABELS = {"job", "instance"}


def exposed() -> dict[str, set[str]]:
    """{sample name: label names} for every metric declared in replica.metrics."""
    out: dict[str, set[str]] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        labels = set(obj._labelnames)  # prometheus-client keeps them only there
        for family in obj.describe():
            for suffix in SUFFIXES[family.type]:
                out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


_SELECTOR = re.compile(r"(?<![\w:])(pgml_replica_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched on) for each pgml_replica_* selector in ``expr``."""
    return [(name, {m[0] for m in _MATCHER.findall(body or "")})
            for name, body in _SELECTOR.findall(expr)]


def grouping_labels(expr: str) -> set[str]:
    """Label names used in by()/without()/on()/ignoring() clauses."""
    return {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")
            if label.strip()}


def check_expr(expr: str, names: dict[str, set[str]]) -> list[str]:
    """Problems with ``expr`` against the exposed names: unknown metrics, unknown labels."""
    problems = []
    used = selectors(expr)
    labels: set[str] = set()
    for name, matched in used:
        if name not in names:
            problems.append(f"{name} is not exported by replica.metrics")
            continue
        labels |= names[name]
        for label in matched - names[name] - TARGET_LABELS:
            problems.append(f"{name} has no label {label!r}")
    if used:
        for label in grouping_labels(expr) - labels:
            problems.append(f"no metric in {expr!r} has label {label!r}")
    return problems
