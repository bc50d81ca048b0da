"""The gateway's settings, layered like every service's (flag > env > file > default)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
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
    #: command that starts a driver service found not running ({service}: its name),
    #: e.g. "systemctl start virtmesh@{service}.service"; empty: no activation
    activation: str = ""
    #: seconds an activation may take until the service reports SERVING
    activation_timeout: float = 60.0

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
    "activation": "command that starts a driver service that is not running, {service} "
                  "replaced by its name (empty: off)",
    "activation_timeout": "seconds an activated service has to report SERVING",
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
    if not 0 < config.activation_timeout <= 600:
        raise common.ConfigError("activation_timeout: must be more than 0 and at most 600")
    try:
        shlex.split(config.activation)
    except ValueError as error:
        raise common.ConfigError(f"activation: {error}") from None
    return dataclasses.replace(config, state_dir=config.state_dir.absolute())
