"""Where a command runs: the gateways named on the command line, in the
environment or in a context (config.py), one connection to each, and the fan-out
over several of them (the rules users see are in cli.py's docstring). Knows no
service but compute's ``GetDomain``, which finds the node that has a domain.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from virtmesh_client.cli_output import Output, fields, table, to_dict
from virtmesh_client.client import Client, ClientError, default_gateway
from virtmesh_client.config import ConfigFile


@dataclasses.dataclass(frozen=True)
class Local:
    """A command that calls nothing (``virtmesh config …``): run without a connection."""

    run: Callable[[argparse.Namespace, Output], None]

    def __call__(self, args: argparse.Namespace, out: Output) -> None:
        self.run(args, out)


Handler = Callable[[Client, argparse.Namespace, Output], None] | Local
FanOut = Callable[["Fleet", argparse.Namespace, Output], None]
T = TypeVar("T")


class UsageError(Exception):
    """The command line does not say what to do, e.g. which of several nodes."""


class Fleet:
    """Several gateways by node name; calls them in parallel and warns about each failure."""

    def __init__(self, clients: dict[str, Client]) -> None:
        self.clients = clients
        self.failed: list[str] = []

    def warn(self, node: str, error: ClientError) -> None:
        self.failed.append(node)
        print(f"virtmesh: node {node}: {error}", file=sys.stderr, flush=True)

    def each(self, call: Callable[[Client], T]) -> dict[str, T]:
        """``call`` on every node at once (each with its own deadline), results in node
        order; a node whose call fails is left out with a warning."""
        with ThreadPoolExecutor(len(self.clients)) as pool:
            futures = {node: pool.submit(call, client) for node, client in self.clients.items()}
        results: dict[str, T] = {}
        for node, future in futures.items():
            try:
                results[node] = future.result()
            except ClientError as error:
                self.warn(node, error)
        return results

    def locate(self, name: str) -> Client:
        """The client of the one node that has domain ``name``."""
        def has(client: Client) -> bool:
            try:
                client.domain(name)
            except ClientError as error:
                if error.code != "NOT_FOUND":
                    raise
                return False
            return True
        answers = self.each(has)
        nodes = [node for node, found in answers.items() if found]
        if len(nodes) > 1:
            raise UsageError(f"domain '{name}' is on nodes {', '.join(nodes)}; pick one with "
                             "--node NAME")
        if not nodes:
            raise ClientError("NOT_FOUND", f"Domain not found: no domain '{name}' on nodes "
                              f"{', '.join(answers) or '(none answered)'}", "VIR_ERR_NO_DOMAIN")
        return self.clients[nodes[0]]


@dataclasses.dataclass(frozen=True)
class Query:
    """A read-only command: the same call on every node.

    Its response is a table of rows (the repeated field ``key``) or, without ``key``,
    one object shown as labelled fields. From several nodes the results are one
    table with a NODE column; in JSON ``{key or "nodes": [...]}``, each with "node".
    """

    fetch: Callable[[Client, argparse.Namespace], Any]
    headers: tuple[str, ...]
    row: Callable[[Any], Sequence[object]]
    key: str = ""
    #: without ``key``: the columns of the merged table, if the labels are not their
    #: fields' names (cli_output's rule)
    columns: tuple[str, ...] = ()

    def __call__(self, client: Client, args: argparse.Namespace, out: Output) -> None:
        response = self.fetch(client, args)
        out.show(response, table(self.headers, map(self.row, getattr(response, self.key)))
                 if self.key else fields(zip(self.headers, self.row(response), strict=True)))

    def merged(self, fleet: Fleet, args: argparse.Namespace, out: Output) -> None:
        results = fleet.each(lambda client: self.fetch(client, args))
        rows = [(node, item) for node, response in results.items()
                for item in (getattr(response, self.key) if self.key else [response])]
        if out.json:
            print(json.dumps({self.key or "nodes": [to_dict(item, node) for node, item in rows]},
                             indent=2))
        else:
            headers = ("NODE", *(self.columns or (header.upper().replace(" ", "_")
                                                  for header in self.headers)))
            print(table(headers, ((node, *self.row(item)) for node, item in rows)))


def _nodes(values: Sequence[str]) -> dict[str, str]:
    nodes: dict[str, str] = {}
    for value in values:
        name, _, address = value.rpartition("=")
        if not address or (name or address) in nodes:
            raise UsageError(f"bad or repeated gateway '{value}'; expected [NAME=]HOST:PORT, "
                             "each name once")
        nodes[name or address] = address
    return nodes


def connection(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, Any]]:
    """Node name → address, and the Client's settings.

    ``--socket`` is one service's socket, or a directory where the command's service
    has ``<service>.sock``; nothing else. Otherwise each setting is the
    flag, else its environment variable, else the context's (``--context``,
    ``VIRTMESH_CONTEXT`` or the config file's current context; see config.py), else
    the default (127.0.0.1:16514, or 127.0.0.1:16515 for a token without a
    certificate: client.default_gateway; ``./.virtmesh/pki``). ``--state-dir`` or
    ``VIRTMESH_STATE_DIR`` names a PKI: the context's CA, certificate and key are then
    not used. Gateways are ``[NAME=]HOST:PORT`` from every ``--gateway``,
    ``VIRTMESH_GATEWAYS`` (comma-separated), ``VIRTMESH_GATEWAY`` or the context's
    ``gateway`` (comma-separated too); unnamed, the node is its address.
    """
    if args.socket:
        service = getattr(args, "service", "")
        if service == "gateway":
            raise UsageError(f"{args.command} is the gateway's own API: the gateway has no "
                             "socket; use --gateway")
        path = args.socket.removeprefix("unix:")
        if os.path.isdir(path):
            if not service:
                raise UsageError(f"{args.command} calls no service: --socket does not apply")
            path = os.path.join(path, f"{service}.sock")
        return {args.socket: f"unix:{path}"}, {}
    env = os.environ
    config = ConfigFile.load()
    name = args.context or env.get("VIRTMESH_CONTEXT") or config.current
    context = config.context(name) if name else {}
    state_dir = args.state_dir or env.get("VIRTMESH_STATE_DIR")
    pki = {} if state_dir else context

    def pick(flag: str | None, variable: str, field: str,
             source: dict[str, str] = context) -> str | None:
        return flag or env.get(variable) or source.get(field) or None

    settings = {
        # with a context, files it does not name are not taken from ./.virtmesh
        "state_dir": state_dir or (str(config.path.parent) if context else None),
        "ca": pick(args.ca, "VIRTMESH_CA", "ca", pki),
        "cert": pick(args.cert, "VIRTMESH_CERT", "cert", pki),
        "key": pick(args.key, "VIRTMESH_KEY", "key", pki),
        "token_file": pick(args.token_file, "VIRTMESH_TOKEN_FILE", "token-file"),
        "server_name": pick(args.tls_server_name, "VIRTMESH_TLS_SERVER_NAME",
                            "tls-server-name"),
    }
    # unless told, a token without a certificate goes to the token-only port
    fallback = default_gateway(env, bool(settings["token_file"]),
                               bool(settings["cert"] or settings["key"]))
    values = [value.strip() for value in
              args.gateway or (env.get("VIRTMESH_GATEWAYS") or env.get("VIRTMESH_GATEWAY")
                               or context.get("gateway") or fallback).split(",")
              if value.strip()]
    return _nodes(values or [fallback]), settings


def run(args: argparse.Namespace, out: Output) -> int:
    """One gateway (or ``--node``): the command as is. Several: fan out, or find the
    domain's node; anything else needs ``--node``. 1 if a node failed."""
    if isinstance(args.handler, Local):
        args.handler(args, out)
        return 0
    with contextlib.ExitStack() as stack:
        nodes, settings = connection(args)
        clients = {node: stack.enter_context(Client(address, timeout=args.timeout or None,
                                                    **settings))
                   for node, address in nodes.items()}
        if args.node:
            if args.node not in clients:
                raise UsageError(f"no gateway named '{args.node}' (nodes: {', '.join(clients)})")
            clients = {args.node: clients[args.node]}
        if len(clients) == 1:
            args.handler(*clients.values(), args, out)
            return 0
        fleet = Fleet(clients)
        if args.fan_out:
            args.fan_out(fleet, args, out)
        elif "name" in args:
            args.handler(fleet.locate(args.name), args, out)
        else:
            raise UsageError(f"with several gateways, {args.command} needs --node NAME "
                             f"(nodes: {', '.join(clients)})")
        return 1 if fleet.failed else 0
