"""Around the pods: PodDisruptionBudgets, NetworkPolicies (the ML replica's Postgres reachable
only from the sidecar, the metrics scraper, the source's postgres_fdw CIDRs and named clients),
the `helm test` hook that asks /readyz - its script run here for real against an HTTP server -
and the ServiceAccount annotations IRSA needs."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

import helm_python as helm
import pytest

from tests.k8s.chart import CHART, EXISTING, ML, of_kind, only, render

CNPG = {**EXISTING, "mlReplica": {"enabled": True, "readReplicas": {"cnpg": {"enabled": True}}}}
POLICY = {"networkPolicy": {"enabled": True, "fdwCIDRs": ["10.0.16.0/20", "10.0.32.0/20"],
                            "postgresClients": [{"namespaceSelector": {"matchLabels": {
                                "kubernetes.io/metadata.name": "apps"}}}],
                            "metrics": {"namespaceSelector": {"matchLabels": {
                                "kubernetes.io/metadata.name": "observability"}},
                                "podSelector": {"matchLabels": {
                                    "app.kubernetes.io/name": "prometheus"}}}}}
ROLE = "arn:aws:iam::123456789012:role/pgml-replica"


@pytest.fixture(scope="module", autouse=True)
def quiet_helm():
    helm.disable_logging()


@pytest.mark.parametrize("values", [
    {**EXISTING, "podDisruptionBudget": {"enabled": True}, **POLICY},
    {**ML, **POLICY, "mlReplica": {"enabled": True, "podDisruptionBudget": {"enabled": True}}},
    {**CNPG, **POLICY},
    {**EXISTING, "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": ROLE}}},
], ids=["sidecar", "statefulset", "cnpg", "irsa"])
def test_lint_is_clean(values):
    report = helm.lint(CHART, values, strict=True, kube_version="v1.37.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# -- PodDisruptionBudgets ------------------------------------------------------------------

def test_no_budget_by_default():
    assert of_kind(render(ML), "PodDisruptionBudget") == []


def test_budgets_select_their_pods():
    m = render({**EXISTING, "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
                "mlReplica": {"enabled": True, "podDisruptionBudget": {"enabled": True}}})
    budgets = {d["metadata"]["name"]: d["spec"] for d in of_kind(m, "PodDisruptionBudget")}
    deploy, sts = only(m, "Deployment"), only(m, "StatefulSet")
    assert budgets[deploy["metadata"]["name"]] == {
        "maxUnavailable": 1, "selector": deploy["spec"]["selector"]}
    assert budgets[sts["metadata"]["name"]] == {
        "maxUnavailable": 0, "selector": sts["spec"]["selector"]}


def test_a_cnpg_cluster_keeps_its_own_budgets():
    m = render({**CNPG, "mlReplica": {**CNPG["mlReplica"],
                                      "podDisruptionBudget": {"enabled": True}}})
    assert of_kind(m, "PodDisruptionBudget") == []
    assert only(m, "Cluster")["spec"]["enablePDB"] is True


# -- NetworkPolicies -----------------------------------------------------------------------

def policies(m) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"] for d in of_kind(m, "NetworkPolicy")}


def test_no_network_policy_by_default():
    assert of_kind(render(ML), "NetworkPolicy") == []


def test_ml_postgres_admits_only_the_sidecar_the_clients_and_the_fdw_cidrs():
    m = render({**ML, **POLICY})
    sts, deploy = only(m, "StatefulSet"), only(m, "Deployment")
    ml = policies(m)[sts["metadata"]["name"]]
    assert ml["podSelector"] == sts["spec"]["selector"]
    assert ml["policyTypes"] == ["Ingress"]
    [rule] = ml["ingress"]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert rule["from"] == [
        {"podSelector": deploy["spec"]["selector"]},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}},
        {"ipBlock": {"cidr": "10.0.16.0/20"}},
        {"ipBlock": {"cidr": "10.0.32.0/20"}},
    ]
    # the sidecar's pods carry the labels the policy admits; the test pod does not reach pg
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= labels.items()


def test_sidecar_http_admits_the_metrics_scraper_and_the_test_pod():
    m = render({**ML, **POLICY}, hooks=True)
    deploy, hook = only(m, "Deployment"), only(m, "Pod")
    sidecar = policies(m)[deploy["metadata"]["name"]]
    assert sidecar["podSelector"] == deploy["spec"]["selector"]
    [rule] = sidecar["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    scraper, test_pod = rule["from"]
    assert scraper == {  # one peer: both selectors must match (pods of those namespaces)
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    assert test_pod["podSelector"]["matchLabels"].items() <= hook["metadata"]["labels"].items()
    # ... and the test pod is not mistaken for a sidecar by the Service or the budget
    assert not deploy["spec"]["selector"]["matchLabels"].items() <= \
        hook["metadata"]["labels"].items()


def test_default_scraper_is_the_monitoring_namespace_and_no_cidr_is_open():
    m = render({**ML, "networkPolicy": {"enabled": True}})
    specs = policies(m)
    sidecar = specs[only(m, "Deployment")["metadata"]["name"]]
    assert sidecar["ingress"][0]["from"][0] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {}}
    [rule] = specs[only(m, "StatefulSet")["metadata"]["name"]]["ingress"]
    assert [p for p in rule["from"] if "ipBlock" in p] == []


def test_without_an_ml_replica_only_the_sidecar_gets_a_policy():
    m = render({**EXISTING, **POLICY})
    assert list(policies(m)) == [only(m, "Deployment")["metadata"]["name"]]


def test_cnpg_instances_reach_each_other_the_operator_and_the_exporter():
    m = render({**CNPG, **POLICY})
    cluster = only(m, "Cluster")["metadata"]["name"]
    ml = policies(m)[cluster]
    own = {"cnpg.io/cluster": cluster}
    assert ml["podSelector"] == {"matchLabels": own}
    by_port = {}
    for rule in ml["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).extend(rule["from"])
    assert {"podSelector": {"matchLabels": own}} in by_port[5432]  # streaming replication
    assert {"ipBlock": {"cidr": "10.0.16.0/20"}} in by_port[5432]
    assert {"podSelector": only(m, "Deployment")["spec"]["selector"]} in by_port[5432]
    assert {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "cnpg-system"}}} in by_port[8000]  # the operator
    assert by_port[9187] == [POLICY["networkPolicy"]["metrics"]]  # CNPG's exporter


# -- helm test -----------------------------------------------------------------------------

def test_hook_is_a_helm_test_pod_that_helm_install_does_not_create():
    assert "Pod" not in {k for k, _ in render(EXISTING)}
    m = render({**EXISTING, "tests": {"timeoutSeconds": 300}}, hooks=True)
    pod = only(m, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    [container] = pod["spec"]["containers"]
    assert container["image"] == only(m, "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    service = only(m, "Service")
    assert env["READYZ_URL"] == (f"http://{service['metadata']['name']}:"
                                 f"{service['spec']['ports'][0]['port']}/readyz")
    assert env["TIMEOUT_SECONDS"] == "300"


class Readyz(http.server.BaseHTTPRequestHandler):
    """/readyz that answers 503 with a reason `not_ready` times, then 200."""

    not_ready = 0
    asked = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).asked += 1
        ready = type(self).asked > type(self).not_ready
        body = b"ok" if ready else b"phase is 'snapshotting', not 'streaming'"
        self.send_response(200 if ready else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def readyz():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Readyz.asked = 0
    yield server
    server.shutdown()
    server.server_close()


def run_hook(server, timeout: str) -> subprocess.CompletedProcess:
    """The hook pod's own command, with its env pointed at `server`."""
    [container] = only(render(EXISTING, hooks=True), "Pod")["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update(READYZ_URL=f"http://127.0.0.1:{server.server_port}/readyz",
               TIMEOUT_SECONDS=timeout, INTERVAL_SECONDS="0.05")
    return subprocess.run([sys.executable, "-I", "-c", *container["args"]],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_hook_waits_through_not_ready_and_passes_on_200(readyz):
    Readyz.not_ready = 2
    done = run_hook(readyz, timeout="30")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("waiting: 503 phase is 'snapshotting'") == 2
    assert "ready: 200 ok" in done.stdout
    assert Readyz.asked == 3


def test_hook_fails_with_the_reason_readyz_gives(readyz):
    Readyz.not_ready = 10**6
    done = run_hook(readyz, timeout="0")
    assert done.returncode == 1
    assert "not ready: 503 phase is 'snapshotting', not 'streaming'" in done.stderr


def test_hook_fails_when_nothing_answers(readyz):
    port = readyz.server_port
    readyz.shutdown()
    readyz.server_close()
    [container] = only(render(EXISTING, hooks=True), "Pod")["spec"]["containers"]
    env = {**os.environ, "READYZ_URL": f"http://127.0.0.1:{port}/readyz",
           "TIMEOUT_SECONDS": "0", "INTERVAL_SECONDS": "0"}
    done = subprocess.run([sys.executable, "-I", "-c", *container["args"]], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "not ready: URLError" in done.stderr


# -- IRSA ----------------------------------------------------------------------------------

def test_irsa_annotation_is_on_the_service_account_the_sidecar_runs_as():
    m = render({**EXISTING, "serviceAccount": {"annotations": {
        "eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/sts-regional-endpoints": "true"}}})
    account = only(m, "ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/sts-regional-endpoints": "true"}
    pod = only(m, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    # EKS's webhook projects its own web-identity token; the API token stays unmounted
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False


def test_irsa_with_a_service_account_made_elsewhere():
    m = render({**EXISTING, "serviceAccount": {"create": False, "name": "pgml-irsa"}})
    assert "ServiceAccount" not in {k for k, _ in m}
    assert only(m, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "pgml-irsa"


def test_no_annotations_by_default():
    assert "annotations" not in only(render(EXISTING), "ServiceAccount")["metadata"]
