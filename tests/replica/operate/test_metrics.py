"""What /metrics says before anything happened: the version, and every labelled counter at 0
(so `increase()` alerts see the first error of a kind), read from a real server's scrape."""

from __future__ import annotations

import urllib.request
from importlib.metadata import version

from prometheus_client.parser import text_string_to_metric_families

from replica import errors, metrics
from tests.replica.operate.helpers import streaming_state


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_build_info_carries_the_installed_version(serve):
    metrics.set_build_info(slot="s1", publication="p1")
    samples = _scrape(serve(streaming_state()).url)
    info = [labels for (name, labels) in samples if name == "pgml_replica_build_info"]
    assert info == [(("publication", "p1"), ("slot", "s1"),
                     ("version", version("pgml-replica")))]


def test_every_error_kind_and_peer_is_exported_before_the_first_error(serve):
    kinds = set()
    todo = [errors.ReplicaError]
    while todo:
        cls = todo.pop()
        kinds.add(cls.kind)
        todo.extend(cls.__subclasses__())
    assert {"transient", "config", "rejected", "resnapshot", "apply"} <= kinds
    samples = _scrape(serve(streaming_state()).url)
    exported = {dict(labels)["kind"] for (name, labels) in samples
                if name == "pgml_replica_errors_total"}
    assert kinds <= exported  # (other tests of this process may have counted more kinds)
    peers = {dict(labels)["peer"] for (name, labels) in samples
             if name == "pgml_replica_reconnects_total"}
    assert peers == {"source", "target"}
    # a counter never seen before exists, at its value (0 unless this process counted some)
    before = samples[("pgml_replica_errors_total", (("kind", "writeback"),))]
    metrics.ERRORS.labels("writeback").inc()
    after = _scrape(serve(streaming_state()).url)[
        ("pgml_replica_errors_total", (("kind", "writeback"),))]
    assert after == before + 1
