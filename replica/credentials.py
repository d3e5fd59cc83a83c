"""Where each connection's password comes from - asked again at every connect and reconnect.

Why ask every time: a password that can change must not be remembered. Kubernetes rotates a
mounted Secret in place, a secret store hands out a new password after a rotation, and an RDS
IAM token expires 15 minutes after it was made: a sidecar that reconnects with the password
it started with fails at its first reconnect after that. So ``replica.connect`` and the
replication connection ask ``password(peer, params)`` before each connection attempt, and
nothing here caches a secret (the IAM signer caches the AWS client, never a token).

Providers, one per peer (source, target), chosen by the settings (``install_from``):
- none: the DSN's password, PGPASSWORD or ~/.pgpass - libpq's own rules (``password``
  returns None and the DSN goes out unchanged);
- ``--<peer>-password-file``: the file's content, re-read at each connect;
- ``--<peer>-password-command``: the command's standard output (run by /bin/sh with a
  timeout; neither its output nor its standard error is ever logged or quoted);
- ``--source-iam REGION``: an RDS IAM authentication token for the DSN's user (host and port
  from the DSN unless ``--source-iam-host``/``--source-iam-port`` say otherwise), signed
  locally by botocore with whatever AWS credentials the process has (IRSA on Kubernetes).

Every value returned is handed to ``replica.connect.resolve_password``, which registers it
with ``replica.secrets`` so it is masked wherever it might show up (errors, /status).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replica.errors import ConfigError, TransientError

COMMAND_TIMEOUT = 30.0
PEERS = ("source", "target")

#: a provider: the DSN's parsed parameters -> the password to send (None: libpq decides)
Provider = Callable[[dict[str, Any]], str | None]


class PasswordFile:
    """The password is the file's content (one trailing newline removed), read each time."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def __call__(self, params: dict[str, Any]) -> str:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {self.path} "
                              f"({type(exc).__name__})") from None
        password = text.removesuffix("\n").removesuffix("\r")
        if not password:
            raise ConfigError(f"the password file {self.path} is empty")
        return password

    def __repr__(self) -> str:
        return f"PasswordFile({str(self.path)!r})"


class PasswordCommand:
    """The password is what the command prints (one trailing newline removed).

    A failure says only the exit status: the command's stderr may echo the secret (or a token
    to a secret store), so it is dropped. A failure is transient (the secret store may be
    briefly away): the runner retries with backoff."""

    def __init__(self, command: str, timeout: float = COMMAND_TIMEOUT) -> None:
        self.command, self.timeout = command, timeout

    def __call__(self, params: dict[str, Any]) -> str:
        try:
            done = subprocess.run(["/bin/sh", "-c", self.command], capture_output=True,  # noqa: S603
                                  timeout=self.timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise TransientError(f"the password command did not finish within "
                                 f"{self.timeout:g} s") from None
        except OSError as exc:
            raise ConfigError(f"cannot run the password command ({type(exc).__name__})"
                              ) from None
        if done.returncode != 0:
            raise TransientError(f"the password command exited with status {done.returncode}"
                                 " (its output is not shown: it may hold a secret)")
        password = done.stdout.decode("utf-8", "replace").removesuffix("\n")
        password = password.removesuffix("\r")
        if not password:
            raise ConfigError("the password command printed nothing")
        return password

    def __repr__(self) -> str:  # the command line may embed a token: never shown
        return "PasswordCommand(<command>)"


class IamToken:
    """An RDS IAM authentication token per connection (valid 15 minutes, so never reused).

    The token is a presigned URL made locally by botocore's RDS signer
    (``generate_db_auth_token``) from the process's AWS credentials - environment, web identity
    (IRSA), instance profile - nothing is sent to AWS to make it. ``boto3`` comes with the
    ``aws`` extra (``pip install 'pgml-replica[aws]'``)."""

    def __init__(self, region: str, host: str | None = None, port: int | None = None) -> None:
        self.region, self.host, self.port = region, host, port
        self.calls = 0
        self._client = None
        self._lock = threading.Lock()

    def _rds(self):
        with self._lock:
            if self._client is None:
                try:
                    import boto3
                except ImportError:
                    raise ConfigError("--source-iam needs boto3: pip install "
                                      "'pgml-replica[aws]'") from None
                self._client = boto3.session.Session().client("rds", region_name=self.region)
            return self._client

    def __call__(self, params: dict[str, Any]) -> str:
        host = self.host or params.get("host") or params.get("hostaddr")
        user = params.get("user")
        if not host or not user:
            raise ConfigError("IAM authentication needs the instance's host and the database "
                              "user: put host= and user= in the DSN (or --source-iam-host)")
        port = int(self.port or params.get("port") or 5432)
        try:
            from botocore.exceptions import BotoCoreError

            token = self._rds().generate_db_auth_token(DBHostname=host, Port=port,
                                                       DBUsername=user, Region=self.region)
        except BotoCoreError as exc:  # no credentials found, ...: the class says which
            raise ConfigError(f"cannot make an RDS IAM token ({type(exc).__name__}): give "
                              "the process AWS credentials (IRSA, instance profile, "
                              "environment)") from None
        self.calls += 1
        return token

    def __repr__(self) -> str:
        return f"IamToken(region={self.region!r}, host={self.host!r}, port={self.port!r})"


_providers: dict[str, Provider] = {}


def install(peer: str, provider: Provider | None) -> None:
    """Use ``provider`` for every later connection to ``peer`` (None: libpq's own rules)."""
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {PEERS}, not {peer!r}")
    if provider is None:
        _providers.pop(peer, None)
    else:
        _providers[peer] = provider


def provider(peer: str) -> Provider | None:
    return _providers.get(peer)


def providers_from(settings: Any) -> dict[str, Provider | None]:
    """The providers a Settings object asks for (read by attribute name, so this module needs
    nothing of replica.config); more than one for a peer is a ConfigError."""
    out: dict[str, Provider | None] = {}
    for peer in PEERS:
        chosen: list[Provider] = []
        if path := getattr(settings, f"{peer}_password_file", None):
            chosen.append(PasswordFile(path))
        if command := getattr(settings, f"{peer}_password_command", None):
            chosen.append(PasswordCommand(command))
        if region := getattr(settings, f"{peer}_iam", None):
            chosen.append(IamToken(region, getattr(settings, f"{peer}_iam_host", None),
                                   getattr(settings, f"{peer}_iam_port", None)))
        if len(chosen) > 1:
            raise ConfigError(f"choose one way to get the {peer}'s password: a password file, "
                              "a password command or IAM")
        out[peer] = chosen[0] if chosen else None
    return out


def install_from(settings: Any) -> None:
    """Install the providers ``settings`` asks for (and drop those it no longer asks for)."""
    for peer, chosen in providers_from(settings).items():
        install(peer, chosen)


def password(peer: str, params: dict[str, Any]) -> str | None:
    """The password for the next connection to ``peer``; None leaves it to libpq (DSN,
    PGPASSWORD, .pgpass)."""
    chosen = _providers.get(peer)
    return None if chosen is None else chosen(params)
