"""The Helm chart, rendered and linted offline with Helm's own Go SDK (helm-python-sdk), every
manifest validated against the Kubernetes 1.37 schemas (kubernetes-validate, strict): the
sidecar's Deployment, its Secret, Service and monitoring objects, and the chart as a
self-contained directory."""

from __future__ import annotations

import json
import re
import shutil

import helm_python as helm
import pytest
import yaml

from tests.k8s.chart import CHART, EXISTING, ROOT, env_of, notes, only, render, render_files
from tests.replica.operate.helpers import sidecar_env_names
from tests.replica.operate.metric_names import exposed

SECRET = "Sup3r$ecret-Pa55w0rd"
# The chart ships copies of these deploy/ files (a chart copied alone must render).
SHIPPED_COPIES = {"files/rules.yml": "deploy/prometheus/rules.yml",
                  "files/grafana-dashboard.json": "deploy/grafana/dashboards/pgml-replica.json"}


@pytest.fixture(scope="module", autouse=True)
def quiet_helm():
    helm.disable_logging()


# The value sets every chart-wide check runs over: what users install.
VALUE_SETS = {
    "defaults": EXISTING,
    "monitoring": {**EXISTING, "serviceMonitor": {"enabled": True},
                   "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True},
                   "mlReplica": {"enabled": True}},
    "inline-dsns": {"connection": {"source": "host=s", "target": "host=t"}},
    "gpu": {**EXISTING, "mlReplica": {"enabled": True, "gpu": {"enabled": True,
                                                               "runtimeClassName": "nvidia"}}},
    "network-policy": {**EXISTING, "mlReplica": {"enabled": True},
                       "networkPolicy": {"enabled": True, "fdwCIDRs": ["10.0.16.0/20"]},
                       "podDisruptionBudget": {"enabled": True}},
    "cnpg": {**EXISTING, "serviceMonitor": {"enabled": True},
             "networkPolicy": {"enabled": True},
             "mlReplica": {"enabled": True, "gpu": {"enabled": True},
                           "readReplicas": {"cnpg": {"enabled": True, "instances": 3}}}},
    "irsa": {**EXISTING, "serviceAccount": {"annotations": {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/pgml-replica"}}},
}


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_lint_is_clean(values):
    report = helm.lint(CHART, values, strict=True, kube_version="v1.37.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_every_value_set_renders_valid_hardened_objects(values):
    """Each manifest, the test hook included, validates against Kubernetes 1.37 (render does
    it); every pod the chart makes runs as non-root without privilege escalation."""
    m = render(values, hooks=True)
    pods = [d["spec"]["template"]["spec"] for d in m.values()
            if d["kind"] in ("Deployment", "StatefulSet")] + \
        [d["spec"] for d in m.values() if d["kind"] == "Pod"]
    assert pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for doc in m.values():
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pgml-replica"


def test_default_install_with_an_existing_secret():
    m = render(EXISTING)
    assert {k for k, _ in m} == {"Deployment", "Service", "ServiceAccount"}
    deploy = only(m, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["serviceAccountName"] == only(m, "ServiceAccount")["metadata"]["name"]
    assert {v["mountPath"] for v in container["volumeMounts"]} == {"/tmp"}

    env = env_of(deploy)
    assert {n for n in env if n.startswith("PGML_REPLICA_")} <= sidecar_env_names()
    assert env["PGML_REPLICA_MAX_LAG_SECONDS"]["value"] == "30"
    for name in ("PGML_REPLICA_SOURCE", "PGML_REPLICA_TARGET"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "pgml-dsn"
    assert env["PGML_REPLICA_SOURCE"]["valueFrom"]["secretKeyRef"]["key"] == "source-dsn"
    assert env["PGML_REPLICA_TARGET"]["valueFrom"]["secretKeyRef"]["key"] == "target-dsn"
    assert env["PGML_REPLICA_SCHEMA"]["value"] == "public"
    assert "PGML_REPLICA_TABLES" not in env
    assert env["PGML_REPLICA_SLOT"]["value"] == env["PGML_REPLICA_PUBLICATION"]["value"] \
        == "pgml_replica"
    assert env["PGML_REPLICA_HTTP_HOST"]["value"] == "0.0.0.0"
    port = int(env["PGML_REPLICA_HTTP_PORT"]["value"])
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]

    service = only(m, "Service")
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_without_dsns_the_install_fails_saying_what_to_set():
    with pytest.raises(helm.HelmError, match="connection.existingSecret"):
        render({})
    with pytest.raises(helm.HelmError, match="connection.existingSecret"):
        render({"connection": {"source": "host=s"}})  # no target and no ML replica


def test_inline_dsns_go_to_a_chart_secret_never_the_deployment():
    source = f"host=db.example dbname=app user=r password={SECRET}"
    m = render({"connection": {"source": source, "target": "host=ml password=x2"}})
    secret = only(m, "Secret")
    assert secret["stringData"] == {"source-dsn": source, "target-dsn": "host=ml password=x2"}
    deploy = only(m, "Deployment")
    assert SECRET not in json.dumps(deploy)
    env = env_of(deploy)
    assert env["PGML_REPLICA_SOURCE"]["valueFrom"]["secretKeyRef"]["name"] == \
        secret["metadata"]["name"]
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/dsn"]) == 64  # a changed DSN rolls the pod
    assert SECRET not in annotations["checksum/dsn"]


def test_default_values_hold_no_password():
    with helm.Chart.load(CHART) as chart:
        values = chart.values
    assert values["connection"]["source"] == values["connection"]["target"] == ""
    assert values["connection"]["existingSecret"] == ""


def test_tables_and_names_reach_the_environment():
    m = render({**EXISTING, "replication": {"tables": ["public.orders", "sales.customers"],
                                            "slot": "ml_slot", "publication": "ml_pub",
                                            "extraEnv": [{"name": "PGML_REPLICA_X",
                                                          "value": "1"}]},
                "http": {"port": 9100}})
    env = env_of(only(m, "Deployment"))
    assert env["PGML_REPLICA_TABLES"]["value"] == "public.orders,sales.customers"
    assert "PGML_REPLICA_SCHEMA" not in env
    assert env["PGML_REPLICA_SLOT"]["value"] == "ml_slot"
    assert env["PGML_REPLICA_PUBLICATION"]["value"] == "ml_pub"
    assert env["PGML_REPLICA_HTTP_PORT"]["value"] == "9100"
    assert env["PGML_REPLICA_X"]["value"] == "1"


def test_service_monitor_and_prometheus_rule():
    m = render({**EXISTING, "serviceMonitor": {"enabled": True,
                                               "labels": {"release": "kube-prom"}},
                "prometheusRule": {"enabled": True}})
    monitor = only(m, "ServiceMonitor")
    service = only(m, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    # job label = the Service's app.kubernetes.io/name, which PgmlReplicaDown matches
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "pgml-replica"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["data"]

    rule = only(m, "PrometheusRule")
    # one source of truth: the chart ships deploy/prometheus/rules.yml unchanged
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    assert "pgml_replica_lag_seconds" in exposed()


def test_grafana_dashboard_configmap_is_the_deploy_dashboard():
    m = render({**EXISTING, "grafanaDashboard": {"enabled": True}})
    [cm] = [d for (k, _), d in m.items() if k == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["pgml-replica.json"])
    assert shipped == json.loads(
        (ROOT / "deploy/grafana/dashboards/pgml-replica.json").read_text())


def test_ml_replica_statefulset_with_a_volume_and_a_generated_password():
    m = render({**EXISTING, "mlReplica": {"enabled": True,
                                          "persistence": {"size": "50Gi",
                                                          "storageClass": "gp3"}}})
    sts = only(m, "StatefulSet")
    ml_secret = next(d for (k, n), d in m.items() if k == "Secret")
    ml_service = next(d for (k, n), d in m.items()
                      if k == "Service" and d["spec"].get("clusterIP") == "None")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == ml_service["metadata"]["name"]
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "gp3"
    [pg] = sts["spec"]["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": "/var/lib/postgresql"} in pg["volumeMounts"]  # 18
    assert pg["securityContext"]["readOnlyRootFilesystem"] is True
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    pg_env = {e["name"]: e for e in pg["env"]}
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == \
        ml_secret["metadata"]["name"]
    assert len(ml_secret["data"]["postgres-password"]) > 20
    assert ml_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    # the sidecar targets it; the password reaches the DSN only inside the pod
    env = env_of(only(m, "Deployment"))
    target = env["PGML_REPLICA_TARGET"]["value"]
    assert f"host={ml_service['metadata']['name']} " in target
    assert "password=$(PGML_ML_PASSWORD)" in target
    assert list(env).index("PGML_ML_PASSWORD") < list(env).index("PGML_REPLICA_TARGET")
    assert env["PGML_ML_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == \
        ml_secret["metadata"]["name"]
    assert env["PGML_REPLICA_SOURCE"]["valueFrom"]["secretKeyRef"]["name"] == "pgml-dsn"


@pytest.mark.parametrize(("major", "mount", "pgdata"), [
    (None, "/var/lib/postgresql", "/var/lib/postgresql/18/docker"),  # the image's default
    (18, "/var/lib/postgresql", "/var/lib/postgresql/18/docker"),
    (19, "/var/lib/postgresql", "/var/lib/postgresql/19/docker"),
    (17, "/var/lib/postgresql/data", "/var/lib/postgresql/data/pgdata"),
    (15, "/var/lib/postgresql/data", "/var/lib/postgresql/data/pgdata"),
])
def test_ml_replica_data_follows_the_images_layout_of_its_major(major, mount, pgdata):
    """The official postgres images keep PGDATA at /var/lib/postgresql/data up to 17 and at
    /var/lib/postgresql/<major>/docker from 18 (volume one level up): the chart mounts the
    volume and sets PGDATA by mlReplica.postgresMajor, which must match the Dockerfile's."""
    ml = {"enabled": True} | ({} if major is None else {"postgresMajor": major})
    [pg] = only(render({**EXISTING, "mlReplica": ml}),
                "StatefulSet")["spec"]["template"]["spec"]["containers"]
    [data] = [m for m in pg["volumeMounts"] if m["name"] == "data"]
    assert data["mountPath"] == mount
    assert {e["name"]: e.get("value") for e in pg["env"]}["PGDATA"] == pgdata
    assert pgdata.startswith(mount + "/")  # a subdirectory: initdb never meets lost+found
    if major is None:  # the chart's default is the image's default major
        dockerfile = (ROOT / "deploy/Dockerfile.ml-replica").read_text()
        assert re.search(r"^ARG PG_MAJOR=(\d+)$", dockerfile, re.M).group(1) == \
            pgdata.split("/")[-2]


def test_ml_replica_with_its_own_secret_and_only_a_source_dsn():
    m = render({"connection": {"source": "host=s"},
                "mlReplica": {"enabled": True, "existingSecret": "ml-pw"}})
    secrets = [d for (k, _), d in m.items() if k == "Secret"]
    assert [s["stringData"] for s in secrets] == [{"source-dsn": "host=s"}]
    env = env_of(only(m, "Deployment"))
    assert env["PGML_ML_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "ml-pw"


def test_notes_tell_how_to_watch_lag():
    text = notes(EXISTING)
    assert "port-forward svc/pgml-pgml-replica 8000:8000" in text
    assert "/status" in text and "pgml_replica_(lag|slot)_" in text
    assert "lost" in text


def test_chart_metadata():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "pgml-replica"
    pyproject_version = next(line.split('"')[1] for line in
                             (ROOT / "pyproject.toml").read_text().splitlines()
                             if line.startswith("version"))
    assert meta["appVersion"] == pyproject_version


def test_no_symbolic_link_in_the_chart():
    links = [p.relative_to(CHART) for p in CHART.rglob("*") if p.is_symlink()]
    assert links == [], "a chart copied or packaged alone loses what these point at"


@pytest.mark.parametrize("copy", sorted(SHIPPED_COPIES))
def test_shipped_copies_equal_their_deploy_sources(copy):
    source = SHIPPED_COPIES[copy]
    assert (CHART / copy).read_bytes() == (ROOT / source).read_bytes(), \
        f"{copy} drifted from {source}: cp {source} k8s/pgml-replica/{copy}"


def test_a_copy_of_the_chart_directory_alone_renders(tmp_path):
    alone = tmp_path / "pgml-replica"
    shutil.copytree(CHART, alone, symlinks=True)  # a link out of the chart would dangle here
    values = {**EXISTING, "prometheusRule": {"enabled": True},
              "grafanaDashboard": {"enabled": True},
              "mlReplica": {"enabled": True, "existingSecret": "ml-pw"}}  # no random password
    copied = render(values, chart=alone)
    assert copied == render(values)
    rule = only(copied, "PrometheusRule")
    assert rule["spec"]["groups"], "files/rules.yml was empty in the copy"
    with helm.Chart.load(alone) as chart:
        packaged = chart.save(tmp_path)
    with helm.Chart.load_archive(open(packaged, "rb").read()) as chart:
        files = chart.render(values, name="pgml", namespace="data", is_install=True)
    assert set(files) == set(render_files(values))
