"""deploy/: Prometheus config and alert rules (checked and unit-tested with the real promtool),
the Grafana dashboard, the compose file and the Dockerfiles. No Docker engine here, so what
can be checked without building is checked: every metric and label the rules and panels use
is exported by replica.metrics, every file the compose file and the Dockerfiles name exists,
the secrets the compose file mounts are the ones deploy/make-secrets.sh writes."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from tests.replica.operate.helpers import sidecar_env_names
from tests.replica.operate.metric_names import check_expr, exposed

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "pgml-replica.json"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`): the rules "
                             "are still checked against the metric names, not by Prometheus")


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


# -- Prometheus ---------------------------------------------------------------------------

def test_rules_use_only_exported_metrics_and_labels():
    names = exposed()
    problems = {}
    for rule in rules():
        found = check_expr(rule["expr"], names)
        labels = set().union(*(names.get(m, set()) for m in
                               re.findall(r"pgml_replica_\w+", rule["expr"])))
        for text in rule.get("annotations", {}).values():
            for label in set(re.findall(r"\$labels\.(\w+)", text)) - labels - {"instance",
                                                                                  "job"}:
                found.append(f"annotation uses $labels.{label}, which the expr does not have")
        if found:
            problems[rule["alert"]] = found
    assert not problems


def test_rules_cover_what_operators_must_hear_about():
    exprs = " ".join(r["expr"] for r in rules())
    for needle in ("pgml_replica_lag_seconds", "pgml_replica_lag_bytes",
                   'pgml_replica_slot_wal_status{status="lost"}',
                   'pgml_replica_slot_wal_status{status="unreserved"}',
                   "pgml_replica_connected", "up{", "pgml_replica_slot_retained_wal_bytes",
                   "pgml_replica_errors_total"):
        assert needle in exprs, needle
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in rules())
    assert all(r["annotations"]["summary"] and r["annotations"]["description"] for r in rules())


@needs_promtool
def test_promtool_accepts_config_and_rules():
    for args in (["check", "rules", str(RULES)],
                 ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")]):
        proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_compose_sidecar():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load(COMPOSE.read_text())
    [job] = config["scrape_configs"]
    assert re.fullmatch(r".*pgml-replica.*", job["job_name"])  # PgmlReplicaDown's matcher
    [target] = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    sidecar = compose["services"][host]
    assert sidecar["environment"]["PGML_REPLICA_HTTP_PORT"] == port
    assert sidecar["environment"]["PGML_REPLICA_HTTP_HOST"] == "0.0.0.0"
    assert config["rule_files"] == ["rules.yml"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in mounts


SERIES = 'job="pgml-replica", instance="sidecar:8000"'


def _alert(name, labels, summary=None):
    rule = next(r for r in rules() if r["alert"] == name)
    annotations = dict(rule["annotations"])
    for key, value in annotations.items():  # render the $labels templates the test can know
        annotations[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], value)
    if summary is not None:
        annotations["summary"] = summary
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}


# (alertname, input series, eval time, expected alerts): each alert fires when it should,
# and not before its `for` has passed.
ALERT_CASES = [
    ("PgmlReplicaLagHigh", [(f"pgml_replica_lag_seconds{{{SERIES}}}", "5 5 5 90x20")], "6m", []),
    ("PgmlReplicaLagHigh", [(f"pgml_replica_lag_seconds{{{SERIES}}}", "5 5 5 90x20")], "9m",
     [("PgmlReplicaLagHigh", {"job": "pgml-replica", "instance": "sidecar:8000"},
       "pgml-replica is 1m 30s behind the source")]),
    ("PgmlReplicaLagCritical", [(f"pgml_replica_lag_seconds{{{SERIES}}}", "1200x20")], "12m",
     [("PgmlReplicaLagCritical", {"job": "pgml-replica", "instance": "sidecar:8000"},
       "pgml-replica is 20m 0s behind the source")]),
    ("PgmlReplicaLagBytesHigh", [(f"pgml_replica_lag_bytes{{{SERIES}}}", "2147483648x15")],
     "11m", [("PgmlReplicaLagBytesHigh", {"job": "pgml-replica", "instance": "sidecar:8000"},
              "pgml-replica has 2GiB of received WAL not applied")]),
    ("PgmlReplicaSlotLost",
     [(f'pgml_replica_slot_wal_status{{status="lost", {SERIES}}}', "0 0 1x5")], "3m",
     [("PgmlReplicaSlotLost", {"status": "lost", "job": "pgml-replica",
                               "instance": "sidecar:8000"}, None)]),
    ("PgmlReplicaSlotUnreserved",
     [(f'pgml_replica_slot_wal_status{{status="unreserved", {SERIES}}}', "0 1x5")], "3m",
     [("PgmlReplicaSlotUnreserved", {"status": "unreserved", "job": "pgml-replica",
                                     "instance": "sidecar:8000"}, None)]),
    ("PgmlReplicaWalRetainedHigh",
     [(f"pgml_replica_slot_retained_wal_bytes{{{SERIES}}}", "6442450944x15")], "12m",
     [("PgmlReplicaWalRetainedHigh", {"job": "pgml-replica", "instance": "sidecar:8000"},
       "the slot holds 6GiB of WAL on the source")]),
    ("PgmlReplicaDisconnected",
     [(f'pgml_replica_connected{{peer="source", {SERIES}}}', "1 0x10"),
      (f'pgml_replica_connected{{peer="target", {SERIES}}}', "1x10")], "4m",
     [("PgmlReplicaDisconnected", {"peer": "source", "job": "pgml-replica",
                                   "instance": "sidecar:8000"}, None)]),
    ("PgmlReplicaDown", [(f"up{{{SERIES}}}", "1 0x5")], "4m",
     [("PgmlReplicaDown", {"job": "pgml-replica", "instance": "sidecar:8000"},
       "pgml-replica sidecar sidecar:8000 is down")]),
    ("PgmlReplicaErrors",
     [(f'pgml_replica_errors_total{{kind="SourceConnectionLost", {SERIES}}}', "0 0 1 1 1")],
     "3m", [("PgmlReplicaErrors", {"kind": "SourceConnectionLost", "job": "pgml-replica",
                                   "instance": "sidecar:8000"}, None)]),
    ("PgmlReplicaReconnecting",
     [(f'pgml_replica_reconnects_total{{peer="target", {SERIES}}}', "0+1x20")], "16m",
     [("PgmlReplicaReconnecting", {"peer": "target", "job": "pgml-replica",
                                   "instance": "sidecar:8000"}, None)]),
    # the first error of a kind: the series exists at 0 from the start (replica.metrics), so
    # increase() sees 0 -> 1
    ("PgmlReplicaErrors",
     [(f'pgml_replica_errors_total{{kind="rejected", {SERIES}}}', "0 0 0 1 1 1")], "5m",
     [("PgmlReplicaErrors", {"kind": "rejected", "job": "pgml-replica",
                             "instance": "sidecar:8000"}, None)]),
    # scraped, then gone (a ServiceMonitor that stopped matching): nothing before 10 minutes
    ("PgmlReplicaMetricsAbsent",
     [(f"pgml_replica_build_info{{version=\"1\", {SERIES}}}", "1 1 _x30")], "8m", []),
    ("PgmlReplicaMetricsAbsent",
     [(f"pgml_replica_build_info{{version=\"1\", {SERIES}}}", "1 1 _x30")], "20m",
     [("PgmlReplicaMetricsAbsent", {}, None)]),
    ("PgmlReplicaMetricsAbsent",
     [(f"pgml_replica_build_info{{version=\"1\", {SERIES}}}", "1x30")], "20m", []),
]


@needs_promtool
def test_alerts_fire_as_documented(tmp_path):
    tests = []
    for alertname, series, at, expected in ALERT_CASES:
        tests.append({
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [{"eval_time": at, "alertname": alertname,
                                 "exp_alerts": [_alert(n, labels, summary)
                                                for n, labels, summary in expected]}],
        })
    spec = tmp_path / "rules_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m",
                                    "tests": tests}, sort_keys=False))
    proc = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {case[0] for case in ALERT_CASES}
    assert tested == {r["alert"] for r in rules()}, "every alert has a case"


def test_every_alert_has_a_runbook_entry():
    """runbook_url names a heading of docs/operations.md's Runbooks section (GitHub's anchor:
    the heading in lower case), one per alert, and the chart ships the same rules."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    runbooks = doc.split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    headings = {h.strip().lower(): body for h, body in
                re.findall(r"^### (.+)\n((?:(?!^### ).*\n?)*)", runbooks, re.M)}
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/operations.md#{rule['alert'].lower()}", url
        body = headings.get(rule["alert"].lower())
        assert body and len(body.split()) > 20, f"no runbook entry for {rule['alert']}"
    assert set(headings) == {r["alert"].lower() for r in rules()}
    assert (ROOT / "k8s/pgml-replica/files/rules.yml").read_bytes() == RULES.read_bytes()


def test_absent_metrics_alert_and_first_error_are_covered():
    exprs = {r["alert"]: r["expr"] for r in rules()}
    assert any(e.startswith("absent(pgml_replica_build_info") for e in exprs.values())
    assert "increase(pgml_replica_errors_total" in exprs["PgmlReplicaErrors"]


# -- Grafana ------------------------------------------------------------------------------

def test_dashboard_queries_use_only_exported_metrics():
    names = exposed()
    dash = json.loads(DASHBOARD.read_text())
    problems, used = {}, set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used |= set(re.findall(r"pgml_replica_\w+", target["expr"]))
            if found := check_expr(target["expr"], names):
                problems[panel["title"]] = found
    assert not problems
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for needle in ("pgml_replica_lag_seconds", "pgml_replica_lag_bytes",
                   "pgml_replica_slot_retained_wal_bytes", "pgml_replica_slot_wal_status",
                   "pgml_replica_rows_applied_total", "pgml_replica_snapshot_progress_ratio",
                   "pgml_replica_errors_total", "pgml_replica_connected"):
        assert needle in used, needle
    [var] = dash["templating"]["list"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"


def test_dashboard_panels_do_not_overlap():
    cells = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_grafana_provisioning_matches_compose():
    compose = yaml.safe_load(COMPOSE.read_text())
    grafana = compose["services"]["grafana"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/pgml-replica.yml")
                              .read_text())["providers"][0]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/" + DASHBOARD.name
    [ds] = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
                          .read_text())["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"].split("//")[1].split(":")[0] in compose["services"]


# -- compose ------------------------------------------------------------------------------

def make_secrets(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DEPLOY / "make-secrets.sh"), str(directory)],
                          capture_output=True, text=True, timeout=60, check=True)


def test_compose_mounts_each_postgres_volume_where_its_major_keeps_pgdata():
    """The official postgres images: PGDATA /var/lib/postgresql/data up to 17,
    /var/lib/postgresql/<major>/docker from 18 with the volume one level up (the 18
    entrypoint refuses a volume at the old place). The ML replica's major is the
    Dockerfile's PG_MAJOR, as in the chart's mlReplica.postgresMajor."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    dockerfile = (DEPLOY / "Dockerfile.ml-replica").read_text()
    ml_major = int(re.search(r"^ARG PG_MAJOR=(\d+)$", dockerfile, re.M).group(1))
    majors = {"ml-replica": ml_major,
              "source": int(re.fullmatch(r"postgres:(\d+)(-\w+)?",
                                         services["source"]["image"]).group(1))}
    for name, major in majors.items():
        mounts = dict(v.split(":")[:2] for v in services[name]["volumes"])
        data = [dst for src, dst in mounts.items() if src.endswith("-data")]
        assert data == ["/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"], \
            (name, major, mounts)


def test_compose_references_exist_and_agree():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"source", "ml-replica", "sidecar", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        else:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", svc["image"]), f"{name}: pin a tag"
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src}"
            else:
                assert src in compose["volumes"], f"{name}: volume {src} not declared"
        for secret in svc.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: secret {secret} not declared"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
    source_cmd = " ".join(services["source"]["command"])
    assert "wal_level=logical" in source_cmd
    env = services["sidecar"]["environment"]
    assert set(env) <= sidecar_env_names()
    for key in ("PGML_REPLICA_SOURCE_FILE", "PGML_REPLICA_TARGET_FILE"):
        assert env[key].removeprefix("/run/secrets/") in services["sidecar"]["secrets"]
    # no password sits in the compose file itself: only paths to secret files
    for name, svc in services.items():
        for key, value in svc.get("environment", {}).items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), f"{name}: {key}"
            assert "password=" not in str(value).lower(), f"{name}: {key}"


def test_make_secrets_writes_every_compose_secret_and_consistent_dsns(tmp_path):
    compose = yaml.safe_load(COMPOSE.read_text())
    out = tmp_path / "secrets"
    make_secrets(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name, spec in compose["secrets"].items():
        path = out / Path(spec["file"]).name
        assert path.is_file() and path.read_text().strip(), name
        assert spec["file"] == f"./secrets/{path.name}"
    services = compose["services"]
    source = conninfo_to_dict((out / "source_dsn").read_text().strip())
    target = conninfo_to_dict((out / "target_dsn").read_text().strip())
    assert source["host"] == "source" and target["host"] == "ml-replica"
    assert source["dbname"] == services["source"]["environment"]["POSTGRES_DB"]
    assert target["dbname"] == services["ml-replica"]["environment"]["POSTGRES_DB"]
    assert source["password"] == (out / "replicator_password").read_text().strip()
    assert target["password"] == (out / "ml_postgres_password").read_text().strip()
    assert source["user"] in (DEPLOY / "source-init/10-replication-role.sh").read_text()
    # a second run keeps what exists (rotating would lock the running databases out)
    before = {p.name: p.read_text() for p in out.iterdir()}
    make_secrets(out)
    assert before == {p.name: p.read_text() for p in out.iterdir()}
    assert (DEPLOY / "secrets" / ".gitignore").read_text().splitlines()[1] == "*"


def test_sidecar_entrypoint_reads_dsns_from_files(tmp_path):
    """The entry point hands PGML_REPLICA_*_FILE contents to `pgml-replica` as
    PGML_REPLICA_*; a probe program in its place prints what it received."""
    probe = tmp_path / "bin" / "pgml-replica"
    probe.parent.mkdir()
    probe.write_text("#!/bin/sh\necho \"args=$*\"\nenv | grep '^PGML_REPLICA_' | sort\n")
    probe.chmod(0o755)
    dsn = tmp_path / "source_dsn"
    dsn.write_text("host=source dbname=app user=u password=p w\n")
    env = {"PATH": f"{probe.parent}:/usr/bin:/bin", "PGML_REPLICA_SOURCE_FILE": str(dsn),
           "PGML_REPLICA_TARGET": "host=t"}
    proc = subprocess.run(["sh", str(DEPLOY / "sidecar-entrypoint.sh"), "run", "--slot", "s"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "args=run --slot s"
    assert "PGML_REPLICA_SOURCE=host=source dbname=app user=u password=p w" in lines
    assert "PGML_REPLICA_TARGET=host=t" in lines
    assert not any(line.startswith("PGML_REPLICA_SOURCE_FILE") for line in lines)

    env["PGML_REPLICA_SOURCE_FILE"] = str(tmp_path / "missing")
    proc = subprocess.run(["sh", str(DEPLOY / "sidecar-entrypoint.sh"), "run"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "not a readable file" in proc.stderr


def test_shell_scripts_parse_and_are_executable():
    scripts = [DEPLOY / "sidecar-entrypoint.sh", DEPLOY / "make-secrets.sh",
               DEPLOY / "install-sidecar.sh", DEPLOY / "install-ml-replica.sh",
               DEPLOY / "ml-replica/10-pgml-install.sh",
               DEPLOY / "source-init/10-replication-role.sh"]
    for script in scripts:
        shell = "sh" if script.name == "sidecar-entrypoint.sh" else "bash"
        proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
        assert os.access(script, os.X_OK), f"{script} is not executable"


# -- Dockerfiles --------------------------------------------------------------------------

def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def copy_sources(dockerfile: Path) -> list[str]:
    out = []
    for op, args in instructions(dockerfile):
        if op in ("COPY", "ADD"):
            words = [w for w in args.split() if not w.startswith("--")]
            out += words[:-1]
    return out


@pytest.mark.parametrize("name", ["Dockerfile.sidecar", "Dockerfile.ml-replica"])
def test_dockerfile_copies_exist_and_pass_the_dockerignore(name):
    dockerfile = DEPLOY / name
    ignore = [line for line in (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the context is the repository root: send only what is copied"
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    sources = copy_sources(dockerfile)
    assert sources
    for src in sources:
        matches = list(ROOT.glob(src))
        if src.startswith("README"):
            continue  # optional by design: the glob may match nothing
        assert matches, f"{name}: COPY {src} does not exist"
        assert any(fnmatch.fnmatch(src.rstrip("/"), a) or src.rstrip("/").startswith(a + "/")
                   or src.rstrip("/") == a for a in allowed), f"{src} is excluded by dockerignore"
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    for package in (p.rstrip("*") for p in find["include"]):
        assert package in sources, f"{name}: the image must copy the {package} package"


def test_sidecar_image_is_non_root_with_healthcheck_and_entrypoint():
    ins = instructions(DEPLOY / "Dockerfile.sidecar")
    ops = dict(ins)  # the last of each
    assert ops["FROM"].startswith("python:3.11-slim")
    assert re.fullmatch(r"\d+:\d+", ops["USER"]) and not ops["USER"].startswith("0:")
    assert "/healthz" in ops["HEALTHCHECK"]
    assert json.loads(ops["ENTRYPOINT"]) == ["pgml-replica-entrypoint"]
    assert json.loads(ops["CMD"]) == ["run"]
    assert "deploy/sidecar-entrypoint.sh /usr/local/bin/pgml-replica-entrypoint" in " ".join(
        a for o, a in ins if o == "COPY")
    assert "PGML_REPLICA_HTTP_HOST=0.0.0.0" in " ".join(a for o, a in ins if o == "ENV")


def test_ml_replica_image_has_plpython_and_installs_pgml():
    ins = instructions(DEPLOY / "Dockerfile.ml-replica")
    # The image's RUN calls deploy/install-ml-replica.sh: what it installs is in there.
    text = " ".join(a for _, a in ins) + (DEPLOY / "install-ml-replica.sh").read_text()
    # the ML replica's server: the newest major with PL/Python packaged for bookworm (PGDG)
    assert ins[0] == ("ARG", "PG_MAJOR=18") and ins[1] == ("FROM", "postgres:${PG_MAJOR}-bookworm")
    # PL/Python for that same major (the official image exports PG_MAJOR to the RUN steps)
    assert "postgresql-plpython3-${PG_MAJOR:-15}" in text and "python3-venv" in text
    assert "chmod -R a+rX" in text  # readable by postgres
    hook = (DEPLOY / "ml-replica/10-pgml-install.sh").read_text()
    assert "pgml-replica\" install" in hook and "--python-path" in hook and "--target" in hook
    assert "PGML_VENV" in dict(ins)["ENV"]
    assert "/docker-entrypoint-initdb.d/" in " ".join(a for o, a in ins if o == "COPY")


def test_the_installed_package_ships_the_dashboard():
    """A non-editable install (the Docker images, `pip install .`) carries only the package
    data pyproject declares: the dashboard's files must be among it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config.get("package-data", {}).get("replica", [])
    # wherever the dashboard lives inside replica/ (it moves with the subpackages)
    files = [p.relative_to(ROOT / "replica").as_posix()
             for d in (ROOT / "replica").glob("**/dashboard") if d.is_dir()
             for p in d.iterdir()]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missing, (f"pyproject.toml [tool.setuptools.package-data] needs "
                         f"replica = [\"dashboard/*\"]; not shipped: {missing}")


def test_operations_doc_lists_every_metric_and_alert():
    doc = (ROOT / "docs" / "operations.md").read_text()
    families = {re.sub(r"_(total|bucket|sum|count|created|info)$", "", n) for n in exposed()}
    missing = [f for f in sorted(families) if f not in doc]
    assert not missing, f"docs/operations.md does not mention {missing}"
    assert [r["alert"] for r in rules() if f"`{r['alert']}`" not in doc] == []


def test_compose_source_init_makes_a_role_that_can_replicate(tmp_path):
    """deploy/source-init runs as the postgres image runs it (POSTGRES_USER/DB set, psql on
    the fresh server), here on a throw-away cluster; the role it makes then does what the
    sidecar needs: log in with its password, create the publication, create a slot."""
    from devtools.localcluster import SOURCE_SETTINGS, running_cluster

    password = tmp_path / "replicator_password"
    password.write_text("demo-Pa55\n")
    with running_cluster("ops-compose-source", SOURCE_SETTINGS) as cluster:
        cluster.create_database("app")
        env = {**os.environ, "POSTGRES_USER": "postgres", "POSTGRES_DB": "app",
               "PGHOST": cluster.host, "PGPORT": str(cluster.port),
               "REPLICATOR_PASSWORD_FILE": str(password)}
        proc = subprocess.run(["bash", str(DEPLOY / "source-init/10-replication-role.sh")],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        with cluster.connect("app") as conn:
            conn.execute("CREATE ROLE pw_required NOLOGIN")
            conn.execute("GRANT pw_required TO pgml_replica")  # the harness's scram rule
        with psycopg.connect(cluster.dsn("app", user="pgml_replica", password="demo-Pa55"),
                             autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM public.demo_events").fetchone()[0] == 1000
            conn.execute("CREATE PUBLICATION pgml_replica FOR TABLE public.demo_events")
            conn.execute("SELECT pg_create_logical_replication_slot('ops_demo', 'pgoutput')")
            conn.execute("SELECT pg_drop_replication_slot('ops_demo')")


def test_ml_replica_init_hook_installs_pgml(replica_db):
    """deploy/ml-replica/10-pgml-install.sh as the image's entrypoint runs it, with this
    checkout's environment standing in for the image's venv, against a real PL/Python
    server: afterwards pgml is installed and its Python path is the venv's site-packages."""
    venv = Path(os.environ.get("VIRTUAL_ENV") or Path(sys.executable).parent.parent)
    cluster = replica_db.cluster
    env = {**os.environ, "PGML_VENV": str(venv), "POSTGRES_DB": replica_db.name,
           "POSTGRES_USER": cluster.user, "PGHOST": cluster.host, "PGPORT": str(cluster.port)}
    proc = subprocess.run(["bash", str(DEPLOY / "ml-replica/10-pgml-install.sh")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installed" in proc.stdout
    [(paths,)] = replica_db.execute(
        "SELECT value FROM pgml.settings WHERE name = 'python_path'")
    # Resolved: in a private checkout .venv is a symbolic link, and the hook hands PL/Python
    # the real path (postgres cannot pass through the private directory).
    site = subprocess.run([str(venv / "bin/python"), "-c",
                           "import os, sysconfig;"
                           " print(os.path.realpath(sysconfig.get_paths()['purelib']))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert site in (paths if isinstance(paths, list) else json.loads(paths))
