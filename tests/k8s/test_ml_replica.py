"""The ML replica's Postgres in the chart: the StatefulSet (CPU or GPU, /dev/shm, scheduling)
and its scale-out form, a CloudNativePG Cluster with hot standbys behind CNPG's read-only
Service. Everything rendered with Helm's engine and validated against Kubernetes 1.37; the CNPG
Cluster (a CRD kubernetes-validate has no schema for) is checked by hand below."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.k8s.chart import (
    APP_VERSION,
    CHART,
    EXISTING,
    ML,
    env_of,
    ml_pod,
    notes,
    of_kind,
    only,
    render,
)

GPU = {**EXISTING, "mlReplica": {"enabled": True, "gpu": {"enabled": True}}}
CNPG = {**EXISTING, "mlReplica": {"enabled": True,
                                  "readReplicas": {"cnpg": {"enabled": True, "instances": 3}}}}
# spec fields of postgresql.cnpg.io/v1 Cluster (CloudNativePG 1.2x, api/v1/cluster_types.go)
# that the chart sets; a typo in the template would be silently dropped by a lax apiserver.
CNPG_SPEC_FIELDS = {"instances", "imageCatalogRef", "imagePullPolicy", "imagePullSecrets",
                    "postgresUID", "postgresGID", "enableSuperuserAccess", "superuserSecret",
                    "enablePDB", "bootstrap", "postgresql", "storage",
                    "ephemeralVolumesSizeLimit", "resources", "env", "affinity", "monitoring"}
CNPG_AFFINITY_FIELDS = {"enablePodAntiAffinity", "podAntiAffinityType", "topologyKey",
                        "nodeSelector", "tolerations", "nodeAffinity", "additionalPodAffinity",
                        "additionalPodAntiAffinity"}


@pytest.fixture(scope="module", autouse=True)
def quiet_helm():
    helm.disable_logging()


def postgres(manifests) -> dict:
    [container] = ml_pod(manifests)["containers"]
    return container


@pytest.mark.parametrize("values", [ML, GPU, CNPG, {**CNPG, "mlReplica": {
    **CNPG["mlReplica"], "gpu": {"enabled": True}}}], ids=["cpu", "gpu", "cnpg", "cnpg-gpu"])
def test_lint_is_clean(values):
    report = helm.lint(CHART, values, strict=True, kube_version="v1.37.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_cpu_default_is_the_plain_image_with_no_gpu_and_a_memory_dev_shm():
    m = render(ML)
    pg, pod = postgres(m), ml_pod(m)
    assert pg["image"] == f"pgml-replica/ml-replica:{APP_VERSION}"
    assert not any("gpu" in k for k in pg["resources"].get("limits", {}))
    assert "runtimeClassName" not in pod and "tolerations" not in pod
    assert "nodeSelector" not in pod and "affinity" not in pod
    assert {"name": "shm", "mountPath": "/dev/shm"} in pg["volumeMounts"]
    [shm] = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}


def test_shm_size_is_configurable():
    m = render({**EXISTING, "mlReplica": {"enabled": True, "shm": {"sizeLimit": "4Gi"}}})
    [shm] = [v for v in ml_pod(m)["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["sizeLimit"] == "4Gi"


def test_gpu_switches_the_image_and_asks_for_a_gpu():
    m = render(GPU)
    pg, pod = postgres(m), ml_pod(m)
    assert pg["image"] == f"pgml-replica/ml-replica:{APP_VERSION}-gpu"
    assert pg["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pg["resources"]["limits"]["memory"] == "4Gi"  # the CPU limits stay
    assert pg["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    env = {e["name"]: e.get("value") for e in pg["env"]}
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    # the sidecar's image is not the GPU one
    [sidecar] = only(m, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert sidecar["image"] == f"pgml-replica/sidecar:{APP_VERSION}"


def test_gpu_scheduling_is_configurable():
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "node.kubernetes.io/instance-type", "operator": "In",
             "values": ["g5.xlarge", "g5.2xlarge"]}]}]}}}
    m = render({**EXISTING, "mlReplica": {
        "enabled": True, "image": {"tag": "1.2.3"},
        "nodeSelector": {"pool": "ml"}, "affinity": affinity,
        "tolerations": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}],
        "gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia",
                "resourceName": "amd.com/gpu", "tagSuffix": "-cuda12",
                "nodeSelector": {"nvidia.com/gpu.present": "true"}}}})
    pg, pod = postgres(m), ml_pod(m)
    assert pg["image"] == "pgml-replica/ml-replica:1.2.3-cuda12"
    assert pg["resources"]["limits"]["amd.com/gpu"] == 2
    assert "nvidia.com/gpu" not in pg["resources"]["limits"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"pool": "ml", "nvidia.com/gpu.present": "true"}
    assert pod["affinity"] == affinity
    assert [t["key"] for t in pod["tolerations"]] == ["dedicated", "nvidia.com/gpu"]


def test_scheduling_without_gpu_uses_only_the_ml_replicas_own_settings():
    m = render({**EXISTING, "mlReplica": {"enabled": True, "runtimeClassName": "gvisor",
                                          "gpu": {"runtimeClassName": "nvidia",
                                                  "nodeSelector": {"gpu": "yes"}}}})
    pod = ml_pod(m)
    assert pod["runtimeClassName"] == "gvisor"
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert not any("gpu" in k for k in postgres(m)["resources"]["limits"])


def test_cnpg_renders_a_cluster_instead_of_the_statefulset():
    m = render(CNPG)
    kinds = {k for k, _ in m}
    assert "StatefulSet" not in kinds
    assert not [s for s in of_kind(m, "Service") if s["spec"].get("clusterIP") == "None"]
    cluster = only(m, "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert set(spec) <= CNPG_SPEC_FIELDS, set(spec) - CNPG_SPEC_FIELDS
    assert set(spec["affinity"]) <= CNPG_AFFINITY_FIELDS
    assert spec["instances"] == 3
    # the image through a one-entry ImageCatalog that states its major (CNPG would read the
    # major off an imageName's tag, and the ML image's tag is the chart's version)
    catalog = only(m, "ImageCatalog")
    assert catalog["apiVersion"] == "postgresql.cnpg.io/v1"
    assert catalog["spec"] == {"images": [{"major": 18,
                                          "image": f"pgml-replica/ml-replica:{APP_VERSION}"}]}
    assert spec["imageCatalogRef"] == {"apiGroup": "postgresql.cnpg.io", "kind": "ImageCatalog",
                                       "name": catalog["metadata"]["name"], "major": 18}
    assert spec["postgresUID"] == spec["postgresGID"] == 999
    assert spec["bootstrap"]["initdb"]["database"] == "ml"
    assert spec["storage"]["size"] == "20Gi"
    assert spec["ephemeralVolumesSizeLimit"]["shm"] == "1Gi"
    assert spec["postgresql"]["parameters"]["hot_standby_feedback"] == "on"
    assert spec["enablePDB"] is True
    assert spec["enableSuperuserAccess"] is True

    # the superuser Secret is CNPG's basic-auth shape, and the sidecar reads the same password
    secret = only(m, "Secret")
    assert secret["metadata"]["name"] == spec["superuserSecret"]["name"]
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert set(secret["data"]) == {"username", "password"}
    env = env_of(only(m, "Deployment"))
    assert env["PGML_ML_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "password"}
    # the sidecar writes to CNPG's read-write Service (the primary)
    target = env["PGML_REPLICA_TARGET"]["value"]
    assert f"host={cluster['metadata']['name']}-rw " in target
    assert "password=$(PGML_ML_PASSWORD)" in target
    text = notes(CNPG)
    assert f"{cluster['metadata']['name']}-ro" in text and "CloudNativePG" in text


def test_cnpg_carries_gpu_storage_and_scheduling():
    m = render({**EXISTING, "mlReplica": {
        "enabled": True, "persistence": {"size": "100Gi", "storageClass": "gp3"},
        "postgresMajor": 17, "nodeSelector": {"pool": "ml"},
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "gpu": {"enabled": True}, "shm": {"sizeLimit": "2Gi"},
        "readReplicas": {"cnpg": {"enabled": True, "instances": 2, "enablePDB": False,
                                  "postgresql": {"parameters": {
                                      "hot_standby_feedback": "off",
                                      "max_standby_streaming_delay": "60s"}}}}}})
    spec = only(m, "Cluster")["spec"]
    [image] = only(m, "ImageCatalog")["spec"]["images"]
    assert image["image"].endswith(f":{APP_VERSION}-gpu")
    assert image["major"] == spec["imageCatalogRef"]["major"] == 17
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["affinity"]["nodeSelector"] == {"pool": "ml"}
    assert spec["affinity"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "additionalPodAntiAffinity" in spec["affinity"]
    assert spec["storage"] == {"size": "100Gi", "storageClass": "gp3"}
    assert spec["ephemeralVolumesSizeLimit"]["shm"] == "2Gi"
    assert spec["instances"] == 2 and spec["enablePDB"] is False
    assert spec["postgresql"]["parameters"] == {"hot_standby_feedback": "off",
                                                "max_standby_streaming_delay": "60s"}


def test_cnpg_refuses_a_runtime_class_it_cannot_set():
    with pytest.raises(helm.HelmError, match="runtimeClassName"):
        render({**CNPG, "mlReplica": {**CNPG["mlReplica"], "gpu": {
            "enabled": True, "runtimeClassName": "nvidia"}}})


def test_cnpg_with_a_service_monitor_asks_cnpg_for_a_pod_monitor():
    m = render({**CNPG, "serviceMonitor": {"enabled": True}})
    assert only(m, "Cluster")["spec"]["monitoring"] == {"enablePodMonitor": True}
    assert "monitoring" not in only(render(CNPG), "Cluster")["spec"]
