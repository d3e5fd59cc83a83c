"""Which pgoutput protocol and options a session asks for, decided from the server's version.

Why by version and not by trial: START_REPLICATION with a ``proto_version`` or option the
walsender does not know fails the whole command, and there is no "highest you have" request -
a subscriber must know what to ask for (PostgreSQL's own subscriber decides by the
publisher's version, as here). What each version brings:

============  ===============  ===============================================================
source        asked for        why
============  ===============  ===============================================================
16+           4, 'parallel'    Stream Abort carries the abort LSN and time; the walsender
                               streams large transactions as before (apply stays serial here)
14-15         2, 'on'          large transactions streamed before their commit
<= 13         1                no streaming: a transaction arrives after its commit
============  ===============  ===============================================================

``--protocol N`` forces a version (3 streams like 2 - two-phase decoding is not asked for);
a version the server lacks is refused here, before the command, with what to change.
``origin`` (16+) is sent only when the user set it.
"""

from __future__ import annotations

from dataclasses import dataclass

from replica.errors import ConfigError

#: the first server major that speaks each protocol version (pgoutput's own table)
PROTOCOL_SINCE = {1: 10, 2: 14, 3: 15, 4: 16}
ORIGIN_SINCE = 16


@dataclass(frozen=True, slots=True)
class Negotiated:
    protocol: int
    #: pgoutput options besides proto_version and publication_names (streaming, origin, ...)
    options: dict[str, str]

    def describe(self) -> str:
        extra = ", ".join(f"{k} '{v}'" for k, v in self.options.items())
        return f"protocol {self.protocol}" + (f" ({extra})" if extra else "")


def negotiate(server_version: int, protocol: int | str = "auto",
              origin: str | None = None) -> Negotiated:
    """``server_version`` as libpq reports it (170004 for 17.4)."""
    major = server_version // 10000
    if protocol == "auto":
        version = 4 if major >= 16 else 2 if major >= 14 else 1
    else:
        version = int(protocol)
        if major < PROTOCOL_SINCE[version]:
            raise ConfigError(f"--protocol {version} needs a PostgreSQL "
                              f"{PROTOCOL_SINCE[version]}+ source, this one is {major}: use "
                              "--protocol auto")
    options = {"binary": "true"}
    if version >= 2:
        options["streaming"] = "parallel" if version >= 4 else "on"
    if origin is not None:
        if major < ORIGIN_SINCE:
            raise ConfigError(f"--origin needs a PostgreSQL {ORIGIN_SINCE}+ source, this one "
                              f"is {major} (it publishes every change anyway): leave it unset")
        options["origin"] = origin
    return Negotiated(version, options)
