"""Service configuration: flag > ``VIRTMESH_*`` environment > config file > default.

Every service accepts the same flags; a driver only supplies its name and default
libvirt URI. The config file is TOML: top-level keys apply to every service and a
``[services.<name>]`` table overrides them for one service.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_PREFIX = "VIRTMESH_"
GUESTS_ON_EXIT = ("keep", "shutdown", "destroy")


@dataclasses.dataclass(frozen=True)
class Config:
    """The effective configuration of one service process."""

    service: str
    state_dir: Path = Path(".virtmesh")
    #: libvirt URI; ``{state_dir}`` is replaced by the absolute state directory.
    uri: str = ""
    #: UNIX socket path; empty means ``<state_dir>/run/<service>.sock``.
    socket: str = ""
    socket_mode: int = 0o660
    #: read-only UNIX socket, like libvirt's -sock-ro: only calls whose permissions are
    #: all read-only; empty means ``<name>-ro.sock`` beside the main socket, "none": off
    socket_ro: str = ""
    socket_ro_mode: int = 0o666
    log_level: str = "INFO"
    log_format: str = "text"
    max_workers: int = 32
    max_message_bytes: int = 16 * 1024 * 1024
    #: open Watch streams; each is a coroutine with a bounded queue (no thread)
    max_event_watchers: int = 4096
    #: the latest events each service keeps for watchers that resume after a
    #: reconnect (services/common/events.py); about 0.3 KiB each
    event_window: int = 4096
    #: console, channel and graphics sessions open at once (each holds a thread)
    max_sessions: int = 32
    #: libvirt keepalive for remote URIs: probe interval (s) and missed probes allowed.
    keepalive_interval: int = 5
    keepalive_count: int = 5
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0
    #: seconds in-flight calls get to finish on SIGTERM.
    grace_period: float = 5.0
    #: what the compute service does with running guests when it exits:
    #: keep (default; a restart picks them up again), shutdown (ACPI, then
    #: destroy after shutdown_timeout), destroy.
    guests_on_exit: str = "keep"
    shutdown_timeout: float = 30.0
    #: HOST:PORT of the Prometheus /metrics endpoint; empty: none; port 0: any free port
    metrics_listen: str = ""
    #: seconds a /metrics scrape may spend collecting guest statistics
    scrape_budget: float = 2.0
    #: exit (cleanly, as on SIGTERM) after this many seconds without calls, unless the
    #: service is busy (compute: guests running); 0: never. Health probes do not count.
    idle_timeout: float = 0.0
    #: compute on embedded QEMU: the shared QEMU capability cache its root is seeded
    #: from (services/common/qemu_caps.py); empty: the user's cache; "none": off
    caps_cache: str = ""
    #: compute: whether SuspendNode may suspend the host; off: a call would stop every
    #: guest and the service until the real-time clock wakes the host
    allow_node_suspend: bool = False

    @property
    def socket_path(self) -> Path:
        if self.socket:
            return Path(self.socket)
        return self.state_dir / "run" / f"{self.service}.sock"

    @property
    def socket_ro_path(self) -> Path | None:
        if self.socket_ro == "none":
            return None
        if self.socket_ro:
            return Path(self.socket_ro)
        main = self.socket_path
        return main.with_name(f"{main.stem}-ro{main.suffix}")

    @property
    def libvirt_uri(self) -> str:
        return self.uri.replace("{state_dir}", str(self.state_dir))


_HELP = {
    "state_dir": "directory for sockets, the embedded driver root, PKI and logs",
    "uri": "libvirt connection URI ({state_dir} is expanded)",
    "socket": "UNIX socket to listen on (default <state_dir>/run/<service>.sock)",
    "socket_mode": "permissions of the socket file, octal",
    "socket_ro": "read-only UNIX socket (default <name>-ro.sock beside the socket; none: off)",
    "socket_ro_mode": "permissions of the read-only socket file, octal",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text or json",
    "guests_on_exit": "compute: keep, shutdown or destroy running guests on exit",
    "metrics_listen": "HOST:PORT of the Prometheus /metrics endpoint (empty: none, port 0: any)",
    "scrape_budget": "seconds a /metrics scrape may spend collecting guest statistics",
    "caps_cache": "compute: shared QEMU capability cache directory (default "
                  "~/.cache/virtmesh/qemu-capabilities; none: off)",
    "allow_node_suspend": "compute: let SuspendNode suspend the host (true/false; off by "
                          "default: it stops every guest and the service)",
    "idle_timeout": "exit after this many seconds without calls (health probes do not "
                    "count) unless busy, e.g. compute with running guests; 0: never",
}


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


def _settings(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "service"}


def _convert(field: dataclasses.Field[Any], value: Any) -> Any:
    name, field_type = field.name, field.type
    try:
        if isinstance(value, bool) and field_type in ("int", "float"):
            raise TypeError("a boolean is not a number")
        if field_type == "Path":
            return Path(value).absolute()
        if field_type == "int":
            return int(value, 8) if name.endswith("_mode") and isinstance(value, str) \
                else int(value)
        if field_type == "float":
            return float(value)
        if field_type == "bool":
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError("expected true or false")
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return value
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: invalid value {value!r}: {error}") from None


def add_arguments(parser: argparse.ArgumentParser, cls: type = Config,
                  help_texts: Mapping[str, str] = _HELP) -> None:
    """The flags of every setting of ``cls``, all defaulting to "not given"."""
    parser.add_argument("--config", help="TOML config file (env VIRTMESH_CONFIG)")
    for name in _settings(cls):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                            help=help_texts.get(name))


def _file_values(path: str | None, section: str, cls: type) -> dict[str, Any]:
    """Top-level keys (shared by every process; others' keys are skipped) then our table."""
    if not path:
        return {}
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {path}: {error}") from None
    ours = _settings(cls)
    values = {k: v for k, v in data.items() if k in ours}
    own_table = data.get("services", {}).get(section, {})
    unknown = set(own_table) - set(ours)
    if unknown:
        raise ConfigError(f"config file {path}: [services.{section}] has unknown settings "
                          f"{sorted(unknown)}")
    values.update(own_table)
    return values


def layered(cls: type, section: str, flags: Mapping[str, Any],
            defaults: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings for ``cls``: flag > VIRTMESH_* env > config file > given defaults."""
    values: dict[str, Any] = dict(defaults)
    config_path = flags.get("config") or environ.get(f"{ENV_PREFIX}CONFIG")
    values.update(_file_values(config_path, section, cls))
    for name in _settings(cls):
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
        if flags.get(name) is not None:
            values[name] = flags[name]
    fields = _settings(cls)
    return {name: _convert(fields[name], value) for name, value in values.items()}


def load(service: str, default_uri: str, argv: Sequence[str] | None = None,
         environ: Mapping[str, str] | None = None,
         parser: argparse.ArgumentParser | None = None) -> Config:
    """Build the effective config for ``service`` from flags, env, file and defaults."""
    parser = parser or argparse.ArgumentParser(prog=f"virtmesh-{service}")
    add_arguments(parser)
    flags = vars(parser.parse_args(argv))
    values = layered(Config, service, flags, {"uri": default_uri},
                     os.environ if environ is None else environ)
    config = Config(service=service, **values)
    if config.guests_on_exit not in GUESTS_ON_EXIT:
        raise ConfigError(f"guests_on_exit: must be one of {', '.join(GUESTS_ON_EXIT)}")
    if config.log_format not in ("text", "json"):
        raise ConfigError("log_format: must be text or json")
    if config.scrape_budget <= 0:
        raise ConfigError("scrape_budget: must be positive")
    if config.idle_timeout < 0:
        raise ConfigError("idle_timeout: must be 0 (never) or positive")
    if config.socket_ro_path == config.socket_path:
        raise ConfigError("socket_ro: must differ from socket")
    return dataclasses.replace(config, state_dir=config.state_dir.absolute())


def describe(config: Any) -> str:
    """One line with every effective setting, for the start-up log."""
    items = dataclasses.asdict(config)
    if isinstance(config, Config):
        items.update(uri=config.libvirt_uri, socket=str(config.socket_path),
                     socket_ro=str(config.socket_ro_path or "none"))
    for name, value in items.items():
        if name.endswith("_mode"):
            items[name] = oct(value)
    return " ".join(f"{k}={v}" for k, v in items.items())
