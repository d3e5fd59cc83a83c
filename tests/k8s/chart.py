"""Render the Helm chart offline with Helm's own Go engine (helm-python-sdk) and validate every
manifest against the Kubernetes schemas (kubernetes-validate, strict). Shared by the chart tests
so that each value set is rendered, schema-checked and validated the same way a `helm install`
would see it."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "pgml-replica"
K8S_VERSION = "1.37"
EXISTING = {"connection": {"existingSecret": "pgml-dsn"}}
ML = {**EXISTING, "mlReplica": {"enabled": True}}
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]  # default tag

# Custom resources that kubernetes-validate has no schema for: their tests check them by hand.
# Prometheus Operator (ServiceMonitor, PrometheusRule) and CloudNativePG (Cluster).
CRD_GROUPS = {"monitoring.coreos.com/v1", "postgresql.cnpg.io/v1"}


def render_files(values: dict | None = None, chart: Path = CHART,
                 namespace: str = "data") -> dict[str, str]:
    """{template path: text} of a fresh install named "pgml"."""
    with helm.Chart.load(chart) as loaded:
        return loaded.render(values, name="pgml", namespace=namespace, is_install=True)


def render(values: dict | None = None, namespace: str = "data", chart: Path = CHART,
           hooks: bool = False) -> dict[tuple[str, str], dict]:
    """{(kind, name): manifest} of a fresh install, each validated against Kubernetes. Test
    hooks (templates/tests/) are left out unless `hooks`: `helm install` does not create them."""
    out = {}
    for path, text in render_files(values, chart, namespace).items():
        if path.endswith("NOTES.txt") or ("/templates/tests/" in path and not hooks):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            validate(doc)
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{key} rendered twice"
            out[key] = doc
    return out


def validate(doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        # CRDs have no schema in kubernetes-validate; only these groups are expected
        assert doc["apiVersion"] in CRD_GROUPS, doc["kind"]


def notes(values: dict) -> str:
    return next(text for path, text in render_files(values).items()
                if path.endswith("NOTES.txt"))


def only(manifests, kind):
    [doc] = [d for (k, _), d in manifests.items() if k == kind]
    return doc


def of_kind(manifests, kind) -> list[dict]:
    return [d for (k, _), d in manifests.items() if k == kind]


def env_of(deployment) -> dict[str, dict]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def ml_pod(manifests) -> dict:
    return only(manifests, "StatefulSet")["spec"]["template"]["spec"]
