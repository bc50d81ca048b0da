"""Named contexts: where a gateway is and how to reach it, kept in a TOML file.

The file is ``$VIRTMESH_CLI_CONFIG``, else ``$XDG_CONFIG_HOME/virtmesh/config.toml``
(``~/.config/virtmesh/config.toml``). Not ``VIRTMESH_CONFIG``: that is the services'
and the gateway's own TOML file (services/common/config.py, the systemd units), and a
shell that has it set for them must not make the CLI read it. Like kubectl's
kubeconfig, it holds several contexts and names the current one::

    current-context = "dev"

    [contexts."dev"]
    gateway = "127.0.0.1:16514"          # or "a=HOST:PORT,b=HOST:PORT" for several nodes
    ca = "/srv/virtmesh/.virtmesh/pki/ca.crt"
    cert = "/srv/virtmesh/.virtmesh/pki/client.crt"
    key = "/srv/virtmesh/.virtmesh/pki/client.key"
    token-file = "/home/me/.config/virtmesh/readonly.token"   # instead of, or with, cert/key
    tls-server-name = "node-1.virtmesh"  # the name the server certificate carries

Every key is optional. Paths are absolute (``virtmesh config set-context`` makes
them so), so a context works from any directory. A flag or environment variable
always wins over the context's value (cli_fleet.connection). Knows no gRPC: the
CLI and ``make run`` (which writes a context for its own mesh) use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from virtmesh_client.client import DEFAULT_GATEWAY, Client, ConfigError

#: what a context may say, in the file's spelling
FIELDS = ("gateway", "ca", "cert", "key", "token-file", "tls-server-name")
#: the fields that name files: stored as absolute paths
PATH_FIELDS = ("ca", "cert", "key", "token-file")


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("VIRTMESH_CLI_CONFIG"):
        return Path(env["VIRTMESH_CLI_CONFIG"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "virtmesh" / "config.toml"


def _quote(text: str) -> str:
    """A TOML basic string: JSON's escaping is TOML's (``\\"``, ``\\\\``, ``\\uXXXX``)."""
    return json.dumps(text)


@dataclasses.dataclass
class ConfigFile:
    """The contexts of one file; ``load`` it, change it, ``save`` it."""

    path: Path
    current: str = ""
    contexts: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> ConfigFile:
        """The file's contexts; none if it does not exist."""
        path = path or config_path()
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except FileNotFoundError:
            return cls(path)
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        current, contexts = data.get("current-context", ""), data.get("contexts", {})
        if not isinstance(current, str) or not isinstance(contexts, dict) or not all(
                isinstance(context, dict) for context in contexts.values()):
            raise ConfigError(f"config file {path}: expected current-context = \"NAME\" and "
                              "[contexts.NAME] tables")
        loaded: dict[str, dict[str, str]] = {}
        for name, context in contexts.items():
            unknown = sorted(set(context) - set(FIELDS))
            if unknown or not all(isinstance(value, str) for value in context.values()):
                raise ConfigError(f"config file {path}: context '{name}': "
                                  + (f"unknown key {unknown[0]!r}" if unknown else
                                     "values must be strings")
                                  + f" (keys: {', '.join(FIELDS)})")
            loaded[name] = dict(context)
        return cls(path, current, loaded)

    def context(self, name: str) -> dict[str, str]:
        if name not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise ConfigError(f"no context named '{name}' in {self.path} (contexts: {known})")
        return self.contexts[name]

    def set(self, name: str, values: Mapping[str, str | None]) -> dict[str, str]:
        """Create or update context ``name``: a value replaces the context's, an empty
        one removes it, None leaves it. Relative paths become absolute."""
        if not name or any(not char.isprintable() for char in name):
            raise ConfigError(f"bad context name {name!r}")
        context = self.contexts.setdefault(name, {})
        for field, value in values.items():
            if field not in FIELDS:
                raise ConfigError(f"unknown context field '{field}'")
            if value is None:
                continue
            if not value:
                context.pop(field, None)
            else:
                context[field] = str(Path(value).absolute()) if field in PATH_FIELDS else value
        return context

    def use(self, name: str) -> None:
        self.context(name)
        self.current = name

    def delete(self, name: str) -> None:
        self.context(name)
        del self.contexts[name]
        if self.current == name:
            self.current = ""

    def dumps(self) -> str:
        lines = ["# virtmesh CLI contexts: `virtmesh config --help`", ""]
        if self.current:
            lines += [f"current-context = {_quote(self.current)}", ""]
        for name, context in self.contexts.items():
            lines.append(f"[contexts.{_quote(name)}]")
            lines += [f"{field} = {_quote(context[field])}" for field in FIELDS
                      if field in context]
            lines.append("")
        return "\n".join(lines)

    def save(self) -> None:
        """Written whole to a temporary file and renamed: never half a file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                      "w") as file:
                file.write(self.dumps())
            os.replace(temporary, self.path)
        except OSError as error:
            raise ConfigError(f"cannot write config file {self.path}: {error}") from None


def write_context(name: str, values: Mapping[str, str], use_if_unset: bool = True,
                  path: Path | None = None) -> Path:
    """Create or replace context ``name`` (``make run`` does for its mesh); it becomes
    the current context if none is. Returns the file's path."""
    config = ConfigFile.load(path)
    config.contexts.pop(name, None)
    config.set(name, values)
    if use_if_unset and config.current not in config.contexts:
        config.current = name
    config.save()
    return config.path


def connect(context: str | None = None, **overrides: Any) -> Client:
    """A Client for context ``context`` (else ``VIRTMESH_CONTEXT``, else the current
    one): ``with connect() as client: client.domains()`` from any directory. The
    context's first gateway; ``overrides`` are Client's arguments (``timeout=``,
    ``token_file=``...), which win over the context's; what neither says comes from
    Client's environment variables and defaults."""
    config = ConfigFile.load()
    name = context or os.environ.get("VIRTMESH_CONTEXT") or config.current
    if not name:
        raise ConfigError(f"no context given and no current context in {config.path}")
    values = config.context(name)
    first = (values.get("gateway") or DEFAULT_GATEWAY).split(",")[0].strip()
    settings: dict[str, Any] = {
        "state_dir": config.path.parent,  # not ./.virtmesh: the context says what to use
        "ca": values.get("ca"), "cert": values.get("cert"), "key": values.get("key"),
        "token_file": values.get("token-file"), "server_name": values.get("tls-server-name"),
    }
    return Client(first.rpartition("=")[2], **{**settings, **overrides})
