"""The gateway's settings, layered like every service's (flag > env > file > default)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.common import config as common

CLIENT_AUTH = ("require", "optional")


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    state_dir: Path = Path(".virtmesh")
    #: TCP address to listen on; TLS is always on.
    listen: str = "127.0.0.1:16514"
    #: where the driver services' sockets are; empty means <state_dir>/run
    socket_dir: str = ""
    #: PEM files; empty means <state_dir>/pki/{server.crt,server.key,ca.crt}
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    #: client certificates: require (mTLS) or optional
    client_auth: str = "require"
    max_message_bytes: int = 16 * 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "text"
    grace_period: float = 5.0
    #: HOST:PORT of the Prometheus /metrics endpoint; empty: none; port 0: any free port
    metrics_listen: str = ""

    def path(self, value: str, default: str) -> Path:
        return Path(value) if value else self.state_dir / default

    @property
    def socket_path_dir(self) -> Path:
        return self.path(self.socket_dir, "run")

    @property
    def cert_file(self) -> Path:
        return self.path(self.tls_cert, "pki/server.crt")

    @property
    def key_file(self) -> Path:
        return self.path(self.tls_key, "pki/server.key")

    @property
    def ca_file(self) -> Path:
        return self.path(self.tls_ca, "pki/ca.crt")


_HELP = {
    "listen": "host:port to listen on with TLS",
    "socket_dir": "directory of the driver services' sockets (default <state_dir>/run)",
    "client_auth": "require or optional client certificates",
    "tls_cert": "server certificate (default <state_dir>/pki/server.crt)",
    "tls_key": "server key (default <state_dir>/pki/server.key)",
    "tls_ca": "CA that signs client certificates (default <state_dir>/pki/ca.crt)",
}


def load(argv: Sequence[str] | None = None,
         environ: Mapping[str, str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser(prog="virtmesh-gateway")
    common.add_arguments(parser, GatewayConfig, {**common._HELP, **_HELP})
    flags = vars(parser.parse_args(argv))
    values = common.layered(GatewayConfig, "gateway", flags, {},
                            os.environ if environ is None else environ)
    config = GatewayConfig(**values)
    if config.client_auth not in CLIENT_AUTH:
        raise common.ConfigError(f"client_auth: must be one of {', '.join(CLIENT_AUTH)}")
    return dataclasses.replace(config, state_dir=config.state_dir.absolute())
