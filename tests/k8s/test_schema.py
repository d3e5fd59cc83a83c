"""values.schema.json: a wrong type, an unknown key or a missing value fails `helm template`,
`helm install` and `helm lint` with a message that names the key - not a pod that crash-loops
later. Each bad value set is checked through the render (what install runs) and lint."""

from __future__ import annotations

import json

import helm_python as helm
import pytest

from tests.k8s.chart import CHART, EXISTING, ML, render

BAD = [  # (values, the key the message must name, what it says)
    ({**EXISTING, "http": {"port": "eighty"}}, "/http/port", "want integer"),
    ({**EXISTING, "http": {"port": 70000}}, "/http/port", "maximum"),
    ({**EXISTING, "replication": {"tables": "public.orders"}}, "/replication/tables",
     "want array"),
    ({**EXISTING, "replication": {"slot": "My-Slot"}}, "/replication/slot", "pattern"),
    ({**EXISTING, "replication": {"maxLagSeconds": 0}}, "/replication/maxLagSeconds", "0"),
    ({**EXISTING, "image": {"repository": None}}, "/image", "missing property 'repository'"),
    ({**EXISTING, "image": {"repository": ""}}, "/image/repository", "minLength"),
    ({**EXISTING, "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": 1}}},
     "/serviceAccount/annotations/eks.amazonaws.com~1role-arn", "want string"),
    ({**EXISTING, "connection": {"existingSecret": "Not_A_Name"}}, "/connection/existingSecret",
     "pattern"),
    ({**ML, "mlReplica": {"enabled": True, "gpu": {"enabled": "yes"}}},
     "/mlReplica/gpu/enabled", "want boolean"),
    ({**ML, "mlReplica": {"enabled": True, "gpu": {"enabled": True, "count": 0}}},
     "/mlReplica/gpu/count", "minimum"),
    ({**ML, "mlReplica": {"enabled": True, "gpu": {"enable": True}}}, "/mlReplica/gpu",
     "'enable' not allowed"),
    ({**ML, "mlReplica": {"enabled": True, "database": "ml db"}}, "/mlReplica/database",
     "pattern"),
    ({**ML, "mlReplica": {"enabled": True, "persistence": {"size": "20 GB"}}},
     "/mlReplica/persistence/size", "pattern"),
    ({**ML, "mlReplica": {"enabled": True, "shm": {"sizeLimit": "lots"}}},
     "/mlReplica/shm/sizeLimit", "pattern"),
    ({**EXISTING, "mlReplica": {"readReplicas": {"cnpg": {"enabled": True}}}},
     "/mlReplica/enabled", "must be true"),
    ({**ML, "mlReplica": {"enabled": True, "readReplicas": {"cnpg": {"enabled": True,
                                                                      "instances": 0}}}},
     "/mlReplica/readReplicas/cnpg/instances", "minimum"),
    ({**EXISTING, "networkPolicy": {"enabled": True, "fdwCIDRs": ["10.0.0.0"]}},
     "/networkPolicy/fdwCIDRs/0", "pattern"),
    ({**EXISTING, "networkPolicy": {"enabled": "true"}}, "/networkPolicy/enabled",
     "want boolean"),
    ({**EXISTING, "podDisruptionBudget": {"enabled": True, "maxUnavailable": "half"}},
     "/podDisruptionBudget/maxUnavailable", "oneOf"),
    ({**EXISTING, "tests": {"timeoutSeconds": -1}}, "/tests/timeoutSeconds", "minimum"),
    ({**EXISTING, "mlReplica": {"enabled": True, "postgresMajor": 14}},
     "/mlReplica/postgresMajor", "minimum"),
    ({**EXISTING, "mlReplicas": {"enabled": True}}, "'mlReplicas' not allowed", "additional"),
]


@pytest.fixture(scope="module", autouse=True)
def quiet_helm():
    helm.disable_logging()


@pytest.mark.parametrize(("values", "key", "says"), BAD, ids=[b[1] for b in BAD])
def test_bad_values_fail_the_render_naming_the_key(values, key, says):
    with pytest.raises(helm.HelmValuesError) as caught:
        render(values)
    message = str(caught.value)
    assert f"at '{key}'" in message or key in message, message
    assert says in message, message
    assert "values don't meet the specifications" in message


@pytest.mark.parametrize(("values", "key", "says"), BAD[:6] + BAD[-6:],
                         ids=[b[1] for b in BAD[:6] + BAD[-6:]])
def test_bad_values_fail_lint(values, key, says):
    report = helm.lint(CHART, values, strict=True, kube_version="v1.37.0")
    assert any(key in e for e in report["errors"]), report["errors"]


def test_the_defaults_and_every_documented_example_pass_the_schema():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)  # values.yaml itself
        chart.validate_schema({"networkPolicy": {"fdwCIDRs": ["10.0.16.0/20", "fd00::/8"]},
                               "podDisruptionBudget": {"maxUnavailable": "50%"},
                               "mlReplica": {"persistence": {"size": "1.5Ti"},
                                             "shm": {"sizeLimit": "512Mi"}}})


def test_the_schema_knows_every_default_key():
    """additionalProperties: false on the chart's own sections catches typos, so every key
    values.yaml sets must be declared (free-form Kubernetes objects are left open)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    with helm.Chart.load(CHART) as chart:
        values = chart.values

    def walk(value, node, path):
        if not isinstance(value, dict) or node.get("additionalProperties") is not False:
            return
        for key, sub in value.items():
            assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
            walk(sub, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")
    assert schema["additionalProperties"] is False


def test_a_missing_dsn_still_fails_with_what_to_set():
    """The one rule the schema cannot say well (a Secret, or both DSNs, or a source DSN with the
    in-cluster ML replica) stays a template `fail` with its own message."""
    with pytest.raises(helm.HelmError, match="connection.existingSecret") as caught:
        render({"mlReplica": {"enabled": False}})
    assert "--set-file" in str(caught.value)
