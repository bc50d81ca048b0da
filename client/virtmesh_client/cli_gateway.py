"""Commands about the gateway itself (virtmesh.gateway.v1): what runs behind it, a host
summary, and a search across every object type.

A part of an answer that the gateway could not gather (a service down or slow) is a
warning on stderr; the rest is printed as usual.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from virtmesh.gateway.v1 import gateway_service_pb2 as pb
from virtmesh_client.cli_commands import CommandFactory
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import Output, enum_name, fields, kib, table
from virtmesh_client.client import Client


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    return " ".join(parts + [f"{hours}h", f"{minutes}m"] if days or hours else
                    [f"{minutes}m", f"{seconds}s"])


def _warn(failures: Iterable[Any]) -> None:
    for failure in failures:
        print(f"virtmesh: warning: {failure.service} {failure.method}: {failure.code}: "
              f"{failure.message}", file=sys.stderr, flush=True)


def _service_row(s: Any) -> tuple[object, ...]:
    up = s.health != pb.SERVICE_HEALTH_UNREACHABLE
    return (s.name, enum_name(pb.ServiceHealth, s.health, "SERVICE_HEALTH_"), s.version or "-",
            _duration(s.uptime.seconds) if up and s.HasField("uptime") else "-", s.socket)


def _services(client: Client, args: argparse.Namespace) -> Any:
    return client.call("ListServices", pb.ListServicesRequest())


cmd_services = Query(_services, ("NAME", "HEALTH", "VERSION", "UPTIME", "SOCKET"),
                     _service_row, "services")


def cmd_host_summary(client: Client, args: argparse.Namespace, out: Output) -> None:
    summary = client.call("GetHostSummary", pb.GetHostSummaryRequest())
    _warn(summary.failures)
    node = summary.node
    text = fields((("Node", summary.node_name or "-"), ("Hostname", summary.hostname),
                   ("CPU model", node.model or "-"),
                   ("CPUs", f"{node.cpus} ({node.sockets} sockets, {node.cores} cores, "
                            f"{node.threads} threads, {node.nodes} NUMA nodes)"),
                   ("Memory", kib(node.memory_kib))) if summary.HasField("node") else
                  (("Node", summary.node_name or "-"), ("Hostname", summary.hostname),
                   ("Node info", "unavailable")))
    counts = table(("SERVICE", "OBJECT_TYPE", "COUNT"),
                   ((c.service, c.object_type, c.count) for c in summary.counts))
    out.show(summary, f"{text}\n\n{counts}")


def _search(client: Client, args: argparse.Namespace) -> Any:
    results, failures, token = [], [], ""
    while True:
        page = client.call("Search", pb.SearchRequest(pattern=args.pattern,
                                                      page_size=1000, page_token=token))
        results.extend(page.results)
        failures = list(page.failures)
        token = page.next_page_token
        if not token:
            break
    _warn(failures)
    return pb.SearchResponse(results=results, failures=failures)


cmd_search = Query(_search, ("SERVICE", "OBJECT_TYPE", "NAME", "PARENT", "UUID"),
                   lambda r: (r.service, r.object_type, r.name, r.parent or "-", r.uuid or "-"),
                   "results")


def register(command: CommandFactory) -> None:
    command("services", cmd_services, "list the services behind the gateway, with health, "
            "version and uptime")
    command("host-summary", cmd_host_summary, "show the host and how many objects of each "
            "type each service has")
    sub = command("search", cmd_search, "find objects of every type by name glob")
    sub.add_argument("pattern", metavar="GLOB", help="shell-style pattern, e.g. 'web-*'")
