"""``virtmesh admin …``: a running process administered through virtmesh.admin.v1, as
virt-admin administers a libvirt daemon (``virtmesh-admin``, gateway/admin.py, is
another tool: it edits the identities file and issues credentials, offline).

Every action asks the gateway about itself, or with ``--service NAME`` about the
service of that name behind it; ``--socket PATH`` asks a service on its own socket
(``--socket DIR --service NAME`` finds ``DIR/NAME.sock``). Reading needs
``server:read`` (read-only identities have it), changing ``server:write`` (admin only).
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from virtmesh.admin.v1 import admin_service_pb2 as admin_pb
from virtmesh_client.cli_commands import CommandFactory
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import Output, enum_name, fields, table, yes
from virtmesh_client.client import Client

LEVELS = ("debug", "info", "warning", "error", "critical")


def _since(stamp: Any) -> str:
    return stamp.ToDatetime(tzinfo=datetime.UTC).isoformat(timespec="seconds")


def _info(client: Client, args: argparse.Namespace) -> Any:
    return client.call("GetServerInfo", admin_pb.GetServerInfoRequest(name=args.service))


cmd_info = Query(_info, ("NAME", "VERSION", "PID", "START_TIME", "UPTIME", "THREADS",
                         "LIBVIRT_URI", "LIBVIRT_STATE", "HOSTNAME"),
                 lambda i: (i.name, i.version, i.pid, _since(i.start_time),
                            f"{i.uptime.ToTimedelta().total_seconds():.0f}s", i.threads,
                            i.libvirt_uri or "-",
                            enum_name(admin_pb.LibvirtState, i.libvirt_state, "LIBVIRT_STATE_"),
                            i.hostname))


def _clients(client: Client, args: argparse.Namespace) -> Any:
    found, token = [], ""
    while True:
        page = client.call("ListClients", admin_pb.ListClientsRequest(
            name=args.service, page_size=1000, page_token=token))
        found.extend(page.clients)
        token = page.next_page_token
        if not token:
            return admin_pb.ListClientsResponse(clients=found)


cmd_clients = Query(_clients, ("ID", "IDENTITY", "AUTH", "PEER", "SINCE", "CALLS_IN_FLIGHT",
                               "METHODS"),
                    lambda c: (c.id, c.identity or "-", c.auth or "-", c.peer, _since(c.since),
                               c.calls_in_flight,
                               ",".join(m.rsplit("/", 1)[-1] for m in c.methods) or "-"),
                    "clients")


def _limit_row(limit: Any) -> tuple[object, ...]:
    return (limit.name, limit.value, "-" if limit.in_use < 0 else limit.in_use,
            yes(limit.settable), limit.description)


_LIMIT_HEADERS = ("NAME", "VALUE", "IN_USE", "SETTABLE", "DESCRIPTION")


def _limits(client: Client, args: argparse.Namespace) -> Any:
    return client.call("GetLimits", admin_pb.GetLimitsRequest(name=args.service))


cmd_limits = Query(_limits, _LIMIT_HEADERS, _limit_row, "limits")


def cmd_disconnect(client: Client, args: argparse.Namespace, out: Output) -> None:
    gone = client.call("DisconnectClient", admin_pb.DisconnectClientRequest(
        name=args.service, client_id=args.client_id)).client
    out.show(gone, f"client {gone.id} ({gone.identity or 'unknown identity'}, {gone.peer}) "
                   f"disconnected; {gone.calls_in_flight} calls in flight ended")


def cmd_set_limit(client: Client, args: argparse.Namespace, out: Output) -> None:
    limit = client.call("SetLimit", admin_pb.SetLimitRequest(
        name=args.service, limit=args.limit, value=args.value)).limit
    out.show(limit, table(_LIMIT_HEADERS, [_limit_row(limit)]))


def _level(value: int) -> str:
    return enum_name(admin_pb.LogLevel, value, "LOG_LEVEL_")


def _show_log(settings: Any, out: Output) -> None:
    rows = [("(level)", _level(settings.level)),
            *((name, _level(level)) for name, level in sorted(settings.filters.items()))]
    out.show(settings, table(("LOGGER", "LEVEL"), rows))


def cmd_log(client: Client, args: argparse.Namespace, out: Output) -> None:
    _show_log(client.call("GetLogSettings", admin_pb.GetLogSettingsRequest(
        name=args.service)).settings, out)


def _level_value(text: str) -> int:
    """``debug`` → LOG_LEVEL_DEBUG; ``default`` → UNSPECIFIED (no filter of its own)."""
    if text.lower() == "default":
        return admin_pb.LOG_LEVEL_UNSPECIFIED
    if text.lower() not in LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {text!r} (one of {', '.join(LEVELS)}"
                                         ", or default to remove a filter)")
    return admin_pb.LogLevel.Value(f"LOG_LEVEL_{text.upper()}")


def _filter(text: str) -> tuple[str, int]:
    logger, separator, level = text.rpartition("=")
    if not separator or not logger:
        raise argparse.ArgumentTypeError(f"expected LOGGER=LEVEL, got {text!r}")
    return logger, _level_value(level)


def cmd_set_log(client: Client, args: argparse.Namespace, out: Output) -> None:
    request = admin_pb.SetLogSettingsRequest(
        name=args.service, level=args.level or admin_pb.LOG_LEVEL_UNSPECIFIED,
        filters=dict(args.filter or ()), clear_filters=args.clear_filters)
    _show_log(client.call("SetLogSettings", request).settings, out)


def cmd_reload(client: Client, args: argparse.Namespace, out: Output) -> None:
    reply = client.call("ReloadServer", admin_pb.ReloadServerRequest(name=args.service))
    text = fields([("Reloaded", ", ".join(reply.reloaded) or "nothing"),
                   *((f"Kept ({failure.what})", failure.message)
                     for failure in reply.failures)])
    out.show(reply, text)


def register(command: CommandFactory) -> None:
    group = command("admin", cmd_info, "administer a running gateway or service (as "
                    "virt-admin does a daemon): info, clients, limits, log, reload")

    def action(name: str, handler: Any, summary: str) -> argparse.ArgumentParser:
        sub = command(name, handler, summary, under=group)
        sub.add_argument("--service", default="", metavar="NAME",
                         help="a service behind the gateway (compute, storage, ...), or "
                         "with --socket DIR the one whose socket to use; default: the "
                         "gateway itself")
        return sub

    action("info", cmd_info, "name, version, pid, uptime, threads and libvirt connection")
    action("clients", cmd_clients, "clients with their identity, peer and calls in flight")
    sub = action("disconnect", cmd_disconnect, "end a client's calls in flight; at the "
                 "gateway its connection is refused from then on")
    sub.add_argument("client_id", metavar="ID", help="the client's id, from `admin clients`")
    action("limits", cmd_limits, "limits and how much of each is in use")
    sub = action("set-limit", cmd_set_limit, "change a limit while the process runs")
    sub.add_argument("limit", metavar="NAME", help="a limit's name, from `admin limits`")
    sub.add_argument("value", metavar="VALUE", type=int)
    action("log", cmd_log, "the log level and per-logger filters")
    sub = action("set-log", cmd_set_log, "change the log level and per-logger filters")
    sub.add_argument("--level", type=_level_value, metavar="LEVEL",
                     help=f"the level of loggers without a filter ({', '.join(LEVELS)})")
    sub.add_argument("--filter", type=_filter, action="append", metavar="LOGGER=LEVEL",
                     help="a logger's own level (e.g. virtmesh.rpc=debug); LEVEL default "
                     "removes it; repeatable")
    sub.add_argument("--clear-filters", action="store_true",
                     help="remove every filter first")
    action("reload", cmd_reload, "read TLS material, identities and policy again (gateway)")
