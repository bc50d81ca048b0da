"""The gateway's settings, layered like every service's (flag > env > file > default)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.common import config as common

CLIENT_AUTH = ("require", "optional")


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    state_dir: Path = Path(".virtmesh")
    #: TCP address of mutual TLS (a client certificate is required; tokens on top);
    #: "none": off. TLS is always on.
    listen: str = "127.0.0.1:16514"
    #: TCP address of token-only TLS (no client certificate is asked for: every call
    #: needs a bearer token); empty: the host of ``listen`` and the port after its
    #: (127.0.0.1:16515 by default; port 0 stays 0); "none": off
    token_listen: str = ""
    #: where the driver services' sockets are; empty means <state_dir>/run
    socket_dir: str = ""
    #: PEM files; empty means <state_dir>/pki/{server.crt,server.key,ca.crt}
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    #: client certificates on ``listen``: require (mTLS) or optional (gRPC Python then
    #: does not ask for one at all, so callers authenticate with bearer tokens)
    client_auth: str = "require"
    #: who may call (tls_allowed_dn_list, DN groups, token digests); empty means
    #: <state_dir>/gateway/identities.toml; reloaded on change and on SIGHUP
    identities_file: str = ""
    #: roles and grants (TOML, gateway/policy.py); empty means <state_dir>/gateway/policy.toml
    #: when it exists, else only the built-in roles admin, operator and readonly
    policy_file: str = ""
    #: JSON lines of every call that may change something; empty means
    #: <state_dir>/log/audit.jsonl
    audit_log: str = ""
    #: seconds between checks of the identities file and TLS files for changes
    reload_interval: float = 2.0
    #: limits (libvirt's names where libvirt has the setting)
    max_clients: int = 5000
    handshake_timeout: float = 10.0
    max_client_requests: int = 64
    max_streams_per_connection: int = 100
    max_message_bytes: int = 16 * 1024 * 1024
    max_metadata_bytes: int = 16 * 1024
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    keepalive_min_ping_interval: float = 30.0
    keepalive_max_ping_strikes: int = 2
    keepalive_permit_without_calls: bool = False
    max_connection_idle: float = 3600.0
    max_connection_age: float = 86400.0
    max_connection_age_grace: float = 600.0
    #: health Watch streams at once (they need no identity, like Check)
    max_health_watchers: int = 100
    #: audit records per second of calls from callers without a valid identity
    #: (averaged; a burst of ten seconds' worth passes); the rest are counted
    audit_anonymous_rate: float = 10.0
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
    #: seconds each service has to answer its part of a GatewayService call (host
    #: summary, search, list of services); a slower one is reported as failed
    fanout_timeout: float = 5.0
    #: the node this gateway serves, in ListServices and GetHostSummary answers; empty:
    #: the host name (a pod's host name is the pod's: Kubernetes passes spec.nodeName)
    node_name: str = ""
    #: processes serving the listeners together (SO_REUSEPORT; gateway/workers.py);
    #: 0: one per core this process may use (its CPU affinity and cgroup CPU quota)
    workers: int = 0

    def path(self, value: str, default: str) -> Path:
        return Path(value) if value else self.state_dir / default

    @property
    def socket_path_dir(self) -> Path:
        return self.path(self.socket_dir, "run")

    @property
    def mtls_address(self) -> str | None:
        """Where mutual TLS listens; None: off."""
        return None if self.listen == "none" else self.listen

    @property
    def token_address(self) -> str | None:
        """Where token-only TLS listens; None: off."""
        if self.token_listen == "none":
            return None
        if self.token_listen:
            return self.token_listen
        host, _, port = self.listen.rpartition(":")
        return f"{host}:{int(port) + 1 if int(port) else 0}"

    @property
    def cert_file(self) -> Path:
        return self.path(self.tls_cert, "pki/server.crt")

    @property
    def key_file(self) -> Path:
        return self.path(self.tls_key, "pki/server.key")

    @property
    def ca_file(self) -> Path:
        return self.path(self.tls_ca, "pki/ca.crt")

    @property
    def identities_path(self) -> Path:
        return self.path(self.identities_file, "gateway/identities.toml")

    @property
    def policy_path(self) -> Path | None:
        """The policy file; None: the built-in roles only (no file set, none by default)."""
        path = self.path(self.policy_file, "gateway/policy.toml")
        return path if self.policy_file or path.exists() else None

    @property
    def audit_path(self) -> Path:
        return self.path(self.audit_log, "log/audit.jsonl")


_HELP = {
    "listen": "host:port of mutual TLS: a client certificate is required, bearer tokens "
              "on top (none: off)",
    "token_listen": "host:port of token-only TLS: no client certificate is asked for, every "
                    "call needs a bearer token (default: the host of --listen, the port after "
                    "its, i.e. 127.0.0.1:16515; none: off)",
    "socket_dir": "directory of the driver services' sockets (default <state_dir>/run)",
    "client_auth": "require or optional client certificates on --listen (optional: not "
                   "asked for; callers use bearer tokens)",
    "identities_file": "allowed certificate DNs, their groups and token digests (TOML; "
                       "default <state_dir>/gateway/identities.toml)",
    "policy_file": "roles and grants (TOML; default <state_dir>/gateway/policy.toml if it "
                   "exists, else the built-in roles admin, operator, readonly only)",
    "audit_log": "audit log of calls that may change something (JSON lines; default "
                 "<state_dir>/log/audit.jsonl)",
    "reload_interval": "seconds between checks of the identities and TLS files for changes",
    "max_clients": "most client connections at once; more are closed as they arrive",
    "handshake_timeout": "seconds a new connection has to complete its TLS handshake",
    "max_client_requests": "most calls in flight per identity; more get RESOURCE_EXHAUSTED",
    "max_streams_per_connection": "most calls at once on one connection (HTTP/2 streams)",
    "max_message_bytes": "largest request or response message; larger: RESOURCE_EXHAUSTED",
    "max_metadata_bytes": "largest request metadata (headers) of a call",
    "keepalive_time": "seconds between the gateway's keepalive pings to a client",
    "keepalive_timeout": "seconds a client has to answer a keepalive ping",
    "keepalive_min_ping_interval": "shortest interval (s) between client pings allowed",
    "keepalive_max_ping_strikes": "pings too early tolerated before closing the connection",
    "keepalive_permit_without_calls": "allow client pings on connections without calls",
    "max_connection_idle": "seconds a connection without calls stays open",
    "max_connection_age": "seconds before a connection is asked to reconnect",
    "max_connection_age_grace": "seconds calls in flight get after max_connection_age",
    "max_health_watchers": "most grpc.health.v1 Watch streams at once (unauthenticated, "
                           "like Check); more get RESOURCE_EXHAUSTED",
    "audit_anonymous_rate": "audit records per second (10 s bursts) of calls without a valid "
                            "identity; the rest are counted in the next such record",
    "tls_cert": "server certificate (default <state_dir>/pki/server.crt)",
    "tls_key": "server key (default <state_dir>/pki/server.key)",
    "tls_ca": "CA that signs client certificates (default <state_dir>/pki/ca.crt)",
    "activation": "command that starts a driver service that is not running, {service} "
                  "replaced by its name (empty: off)",
    "activation_timeout": "seconds an activated service has to report SERVING",
    "fanout_timeout": "seconds each service has to answer its part of a host summary, "
                      "search or list of services",
    "node_name": "this node's name in ListServices and GetHostSummary (default: the host name)",
    "workers": "gateway processes serving the same ports (SO_REUSEPORT), sharing limits and "
               "the audit log (default 0: one per core it may use, CPU quota included)",
}


_POSITIVE = ("reload_interval", "max_clients", "handshake_timeout", "max_client_requests",
             "max_streams_per_connection", "max_message_bytes", "max_metadata_bytes",
             "keepalive_time", "keepalive_timeout", "keepalive_min_ping_interval",
             "max_connection_idle", "max_connection_age", "max_connection_age_grace",
             "max_health_watchers", "audit_anonymous_rate")


def _check_limits(config: GatewayConfig) -> None:
    """Every limit is a bound: none may be zero, negative or switched off."""
    for name in _POSITIVE:
        if not getattr(config, name) > 0:
            raise common.ConfigError(f"{name}: must be positive")
    if config.keepalive_max_ping_strikes < 0:
        raise common.ConfigError("keepalive_max_ping_strikes: must be 0 or more")
    if config.max_message_bytes >= 2**31 or config.max_metadata_bytes >= 2**31:
        raise common.ConfigError("max_message_bytes, max_metadata_bytes: must be below 2 GiB")


def _port(address: str, what: str) -> int:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise common.ConfigError(f"{what}: expected HOST:PORT or none, not {address!r}")
    return int(port)


def _check_listeners(config: GatewayConfig) -> None:
    """HOST:PORT or none each, not both off, not the same port twice."""
    if config.listen != "none":
        _port(config.listen, "listen")
    elif not config.token_listen:
        raise common.ConfigError("token_listen: give HOST:PORT (or none) when listen is none")
    token = config.token_address
    if token is not None:
        _port(token, "token_listen")
    if config.mtls_address is None and token is None:
        raise common.ConfigError("listen, token_listen: both are none; the gateway would "
                                 "serve nobody")
    if token is not None and token == config.mtls_address and _port(token, "listen"):
        raise common.ConfigError(f"token_listen: the same address as listen ({token})")


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
    _check_limits(config)
    _check_listeners(config)
    if not 0 < config.activation_timeout <= 600:
        raise common.ConfigError("activation_timeout: must be more than 0 and at most 600")
    if not 0 < config.fanout_timeout <= 600:
        raise common.ConfigError("fanout_timeout: must be more than 0 and at most 600")
    try:
        shlex.split(config.activation)
    except ValueError as error:
        raise common.ConfigError(f"activation: {error}") from None
    if config.workers < 0:
        raise common.ConfigError("workers: must be 0 (one per core) or more")
    return dataclasses.replace(config, state_dir=config.state_dir.absolute(),
                               workers=config.workers or cores())


def cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: those it may run on, fewer when its cgroup's CPU
    quota (cgroup v2 ``cpu.max``, a container's CPU limit) allows less."""
    usable = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            usable = min(usable, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to honour
    return usable


def watched_files(config: GatewayConfig) -> tuple[Path | None, ...]:
    """The files the gateway reads again when they change."""
    return (config.identities_path, config.policy_path, config.cert_file, config.key_file,
            config.ca_file)


def file_stamp(path: Path | None) -> int | None:
    """When ``path`` last changed (None: no such file), to reload files on change."""
    try:
        return path.stat().st_mtime_ns if path else None
    except OSError:
        return None
