"""``virtmesh config …``: the contexts of the config file (config.py), as kubectl's
``config`` subcommands do for kubeconfig, minimally. Local commands: no call is made.

    virtmesh config set-context NAME [--gateway [N=]HOST:PORT]... [--ca FILE] [--cert FILE]
                                     [--key FILE] [--token-file FILE] [--tls-server-name NAME]
                                     [--state-dir DIR] [--use]
    virtmesh config use-context NAME
    virtmesh config current-context
    virtmesh config get-contexts
    virtmesh config delete-context NAME
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from virtmesh_client.cli_commands import CommandFactory
from virtmesh_client.cli_fleet import Local
from virtmesh_client.cli_output import Output, table
from virtmesh_client.client import ConfigError
from virtmesh_client.config import FIELDS, ConfigFile


def _auth(context: dict[str, str]) -> str:
    kinds = ["certificate"] if context.get("cert") or context.get("key") else []
    return ", ".join(kinds + (["token"] if context.get("token-file") else [])) or "-"


def cmd_get_contexts(args: argparse.Namespace, out: Output) -> None:
    config = ConfigFile.load()
    rows = [{"current": name == config.current, "name": name,
             "gateway": context.get("gateway", ""), "auth": _auth(context),
             **{field.replace("-", "_"): context.get(field, "") for field in FIELDS}}
            for name, context in sorted(config.contexts.items())]
    if out.json:
        print(json.dumps({"config": str(config.path), "current_context": config.current,
                          "contexts": rows}, indent=2))
        return
    print(table(("CURRENT", "NAME", "GATEWAY", "AUTH"),
                (("*" if row["current"] else "", row["name"], row["gateway"] or "-",
                  row["auth"]) for row in rows)))


def cmd_current_context(args: argparse.Namespace, out: Output) -> None:
    config = ConfigFile.load()
    if not config.current:
        raise ConfigError(f"no current context in {config.path} (set one with "
                          "`virtmesh config use-context NAME`)")
    print(json.dumps({"current_context": config.current}) if out.json else config.current)


def cmd_use_context(args: argparse.Namespace, out: Output) -> None:
    config = ConfigFile.load()
    config.use(args.name)
    config.save()
    _say(out, f"Switched to context '{args.name}'", args.name)


def cmd_set_context(args: argparse.Namespace, out: Output) -> None:
    config = ConfigFile.load()
    existed = args.name in config.contexts
    pki = Path(args.state_dir).absolute() / "pki" if args.state_dir else None
    values: dict[str, Any] = {
        "gateway": ",".join(args.gateway) if args.gateway else None,
        "ca": _given(args.ca, pki / "ca.crt" if pki else None),
        "cert": _given(args.cert, pki / "client.crt" if pki else None),
        "key": _given(args.key, pki / "client.key" if pki else None),
        "token-file": args.token_file,
        "tls-server-name": args.tls_server_name,
    }
    config.set(args.name, values)
    if args.use:
        config.use(args.name)
    config.save()
    done = "modified" if existed else "created"
    _say(out, f"Context '{args.name}' {done} in {config.path}"
              + (" and is the current context" if args.use else ""), args.name)


def _given(flag: str | None, default: Path | None) -> str | None:
    """The flag's value, even empty (which removes the field), else ``default``."""
    return flag if flag is not None else str(default) if default else None


def cmd_delete_context(args: argparse.Namespace, out: Output) -> None:
    config = ConfigFile.load()
    config.delete(args.name)
    config.save()
    _say(out, f"Deleted context '{args.name}' from {config.path}", args.name)


def _say(out: Output, text: str, name: str) -> None:
    print(json.dumps({"context": name}) if out.json else text)


def register(command: CommandFactory) -> None:
    group = command("config", Local(cmd_get_contexts),
                    "named contexts: gateway address and credentials (config file "
                    "$VIRTMESH_CLI_CONFIG or ~/.config/virtmesh/config.toml)")
    command("get-contexts", Local(cmd_get_contexts), "list the contexts", under=group)
    command("current-context", Local(cmd_current_context), "print the current context's name",
            under=group)
    sub = command("use-context", Local(cmd_use_context), "make a context the current one",
                  under=group)
    sub.add_argument("name", metavar="NAME")
    sub = command("set-context", Local(cmd_set_context),
                  "create or change a context from the connection flags given (--gateway, "
                  "--ca, --cert, --key, --token-file, --tls-server-name; --state-dir DIR "
                  "for DIR/pki's ca.crt, client.crt and client.key); an empty value "
                  "removes a field", under=group)
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--use", action="store_true", help="and make it the current context")
    sub = command("delete-context", Local(cmd_delete_context), "remove a context",
                  under=group)
    sub.add_argument("name", metavar="NAME")
