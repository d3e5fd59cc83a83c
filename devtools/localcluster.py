"""Throw-away PostgreSQL clusters on loopback ports, for the demo and the test suite.

Why this exists: the demo must run on one laptop with one command and the test suite needs
two real servers (a logical-replication source and a PL/Python ML replica). Both start
servers the same way, so the logic lives here once.

Postgres refuses to run as root. When this process is root, every server command runs as the
``postgres`` OS user and the cluster directory is handed to it.

A cluster runs Debian's PostgreSQL 15 by default; ``make_cluster(..., version=17)`` (or an
explicit ``bin_dir``) starts another major from devtools.pgversions' cache - those builds
serve as replication *sources* only (no PL/Python).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path(os.environ.get("PGML_REPLICA_PG_BIN", "/usr/lib/postgresql/15/bin"))

# A logical-replication source: what RDS's parameter group gives with
# rds.logical_replication=1, plus prepared transactions for the two-phase tests.
SOURCE_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "40",
    "max_wal_senders": "40",
    "max_prepared_transactions": "20",
    "max_connections": "200",
    "wal_sender_timeout": "60s",
}

# The ML replica. postgres_fdw and plpython3u need no preload; it also takes
# subscriptions in the benchmark against native logical replication.
REPLICA_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_logical_replication_workers": "10",
    "max_worker_processes": "20",
    "max_connections": "200",
}

# Throw-away clusters: durability of the server itself is not under test (the sidecar is
# killed, never the servers), so skip fsync. Commit ordering and visibility are unchanged.
THROWAWAY_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "256MB",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d %u '",
}


class ClusterError(RuntimeError):
    """A local cluster could not be created, started or stopped."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run servers as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as exc:  # pragma: no cover - depends on the host
        raise ClusterError(
            "running as root, but there is no 'postgres' OS user to start PostgreSQL as; "
            "install the postgresql-15 package (it creates one) or run as a normal user"
        ) from exc
    return pw.pw_uid, pw.pw_gid


def _server_env(bin_dir: Path = PG_BIN, lib_dir: Path | None = None) -> dict[str, str]:
    """A clean environment for the server processes.

    Why: PL/Python's embedded interpreter finds its prefix by looking for ``python3`` on
    PATH, so a server started from inside an activated virtual environment would silently
    import that environment, whatever pgml's python_path says. Servers get a system PATH and
    nothing else from the caller (no PYTHONPATH, no VIRTUAL_ENV). A relocatable build
    (``lib_dir``) also gets its own libraries first on LD_LIBRARY_PATH: its ICU and OpenSSL
    are not the host's.
    """
    env = {"PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = str(lib_dir)
    return env


def _run(cmd: list[str], *, owner: tuple[int, int] | None, check: bool = True,
         timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    kwargs: dict = {"env": env or _server_env()}
    if owner is not None:
        kwargs.update(user=owner[0], group=owner[1], extra_groups=[])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(cmd[:2])} failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass
class LocalCluster:
    """One initdb'd data directory and the server running on it."""

    name: str
    root: Path
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    user: str = "postgres"
    bin_dir: Path = PG_BIN
    lib_dir: Path | None = None  # a relocatable build's libraries (LD_LIBRARY_PATH)
    major: int | None = None  # what the server says, once started

    def _pg(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        """Run one of this build's server programs as the server's OS user."""
        return _run([str(self.bin_dir / cmd[0]), *cmd[1:]], owner=_server_user(),
                    env=_server_env(self.bin_dir, self.lib_dir), **kw)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def dsn(self, dbname: str = "postgres", user: str | None = None, **extra: str) -> str:
        parts = {"host": self.host, "port": str(self.port), "dbname": dbname,
                 "user": user or self.user, **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    # -- lifecycle -----------------------------------------------------------------------

    def init(self) -> LocalCluster:
        owner = _server_user()
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if owner is not None:
            for p in (self.root, self.socket_dir):
                os.chown(p, *owner)
        if not self.port:
            self.port = free_port()
        self._pg(["initdb", "-D", str(self.datadir), "-U", self.user,
                  "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        conf = {**THROWAWAY_SETTINGS, **self.settings,
                "listen_addresses": "'127.0.0.1'", "port": str(self.port),
                "unix_socket_directories": f"'{self.socket_dir}'"}
        with open(self.datadir / "postgresql.auto.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        # Roles in the group pw_required must authenticate with a password, so tests can
        # prove secrets are used (and never leaked); everyone else is trusted on loopback.
        (self.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all +pw_required 127.0.0.1/32 scram-sha-256\n"
            "host replication +pw_required 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        return self

    def start(self, timeout: float = 60) -> LocalCluster:
        self._pg(["pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile),
                  "-w", "-t", str(int(timeout)), "start"], timeout=timeout + 10)
        self._wait_ready(timeout)
        with self.connect() as conn:
            self.major = conn.info.server_version // 10000
        return self

    def stop(self, mode: str = "fast") -> None:
        if not self.datadir.exists():
            return
        self._pg(["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop"], check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        proc = self._pg(["pg_ctl", "-D", str(self.datadir), "status"], check=False)
        return proc.returncode == 0

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{self.name} did not accept connections; "
                                       f"see {self.logfile}") from None
                time.sleep(0.1)

    # -- convenience ---------------------------------------------------------------------

    def connect(self, dbname: str = "postgres", autocommit: bool = True, **kw):
        import psycopg

        return psycopg.connect(self.dsn(dbname), autocommit=autocommit, **kw)

    def create_database(self, name: str) -> str:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database and whatever would block that: its slots, subscriptions, sessions."""
        from psycopg import sql

        with self.connect(name) as conn:
            for (sub,) in conn.execute("SELECT subname FROM pg_subscription s JOIN pg_database d"
                                       " ON d.oid = s.subdbid WHERE d.datname = current_database()"
                                       ).fetchall():
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(sub)))
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(
                    sql.Identifier(sub)))
                conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(sub)))
        with self.connect() as conn:
            for _ in range(50):
                conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                             " WHERE database = %s AND active_pid IS NOT NULL", (name,))
                try:
                    conn.execute("SELECT pg_drop_replication_slot(slot_name)"
                                 " FROM pg_replication_slots WHERE database = %s", (name,))
                    break
                except Exception:  # slot still active for a moment after terminate
                    time.sleep(0.1)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def server_build(version: int | None = None, bin_dir: Path | None = None
                 ) -> tuple[Path, Path | None]:
    """(bin_dir, lib_dir) for a major version or an explicit binary directory.

    A ``bin_dir`` whose sibling ``lib/`` holds libpq (a relocatable build) gets that lib dir;
    Debian's layout keeps libraries elsewhere and gets none.
    """
    if bin_dir is not None:
        lib = Path(bin_dir).parent / "lib"
        return Path(bin_dir), lib if (lib / "libpq.so.5").exists() else None
    if version is None:
        return PG_BIN, None
    from devtools.pgversions import locate

    build = locate(int(version))
    if build is None:
        raise ClusterError(f"no PostgreSQL {version} server binaries here: run "
                           f"`python -m devtools.pgversions fetch {version}` (make setup does)")
    return build.bin_dir, build.lib_dir


def make_cluster(name: str, settings: dict[str, str], base: Path | None = None, *,
                 version: int | None = None, bin_dir: Path | None = None) -> LocalCluster:
    """initdb a cluster in a fresh directory that the server's OS user can read, with
    Debian's PostgreSQL 15, another major ``version`` or the binaries in ``bin_dir``."""
    bins, libs = server_build(version, bin_dir)
    root = Path(tempfile.mkdtemp(prefix=f"pgml-replica-{name}-", dir=base))
    os.chmod(root, 0o755)
    return LocalCluster(name=name, root=root, settings=settings, bin_dir=bins,
                        lib_dir=libs).init()


@contextlib.contextmanager
def running_cluster(name: str, settings: dict[str, str], base: Path | None = None, *,
                    version: int | None = None, bin_dir: Path | None = None):
    cluster = make_cluster(name, settings, base, version=version, bin_dir=bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
