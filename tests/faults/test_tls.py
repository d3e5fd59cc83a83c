"""TLS: sslmode=verify-full against a cluster with its own CA works (how RDS users pass its
CA bundle); a wrong CA or a wrong host name stops with a message that says which."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from devtools.localcluster import running_cluster

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


def _ca(d: Path, name: str) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", d / f"{name}.key",
                    "-out", d / f"{name}.crt"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_cluster():
    d = Path(tempfile.mkdtemp(prefix="pgml-replica-tls-"))  # the server's user reads it
    os.chmod(d, 0o755)
    _ca(d, "ca")
    _ca(d, "otherca")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-keyout", d / "server.key", "-out", d / "server.csr"], check=True,
                   capture_output=True)
    (d / "ext").write_text("subjectAltName=DNS:localhost\n")
    subprocess.run(["openssl", "x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.crt",
                    "-CAkey", d / "ca.key", "-CAcreateserial", "-days", "2", "-extfile",
                    d / "ext", "-out", d / "server.crt"], check=True, capture_output=True)
    pg = pwd.getpwnam("postgres")
    for f in ("server.key", "server.crt"):
        os.chown(d / f, pg.pw_uid, pg.pw_gid) if os.geteuid() == 0 else None
        os.chmod(d / f, 0o600)
    settings = {"ssl": "on", "ssl_cert_file": f"'{d / 'server.crt'}'",
                "ssl_key_file": f"'{d / 'server.key'}'"}
    try:
        with running_cluster("tls", settings) as cluster:
            yield cluster, d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_verify_full_with_the_clusters_ca(tls_cluster):
    from replica.connect import connect

    cluster, d = tls_cluster
    dsn = f"{cluster.dsn()} host=localhost sslmode=verify-full sslrootcert={d / 'ca.crt'}"
    with connect(dsn, "source", "tls test") as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone()[0] is True


@pytest.mark.parametrize("wrong", ["ca", "host"])
def test_a_wrong_ca_or_host_name_says_so(tls_cluster, wrong):
    from replica.connect import connect
    from replica.errors import ConnectionRejected

    cluster, d = tls_cluster
    ca = d / ("otherca.crt" if wrong == "ca" else "ca.crt")
    host = "localhost" if wrong == "ca" else "127.0.0.1"
    dsn = f"{cluster.dsn()} host={host} sslmode=verify-full sslrootcert={ca}"
    with pytest.raises(ConnectionRejected) as info:  # exit 7: stop, do not retry
        connect(dsn, "source", "tls test").close()
    said = str(info.value)
    assert ("certificate verify failed" in said) if wrong == "ca" else \
        ('does not match host name "127.0.0.1"' in said), said
