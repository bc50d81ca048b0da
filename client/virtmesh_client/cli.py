"""``virtmesh``: a virsh-like command line for the compute service.

Tables for people, ``--json`` (protobuf field names) for scripts. Errors are one
line on stderr; exit status 1 for a failed call, 2 for a usage or setup error.

With several gateways (``--gateway`` repeated, or ``VIRTMESH_GATEWAYS``) read-only
commands ask every node in parallel and merge the results with a NODE column;
commands on one domain run on the node that has it. A node that fails is a
warning on stderr and exit status 1, never a silently shorter table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import pkgutil
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import IO, Any, TypeVar

from google.protobuf import json_format

import virtmesh_client
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.client import (
    DEFAULT_GATEWAY,
    DEFAULT_TIMEOUT,
    Client,
    ClientError,
    ConfigError,
    EventStream,
)

Handler = Callable[[Client, argparse.Namespace, "Output"], None]
FanOut = Callable[["Fleet", argparse.Namespace, "Output"], None]
#: ``command(name, handler, summary, *positionals, fan_out=None)`` -> its subparser;
#: what each cli_<driver>.py's ``register`` receives
CommandFactory = Callable[..., argparse.ArgumentParser]
T = TypeVar("T")

STATES = {name.removeprefix("DOMAIN_STATE_").lower(): value
          for name, value in pb.DomainState.items() if value}
START_HINT = "; is virtmesh running? start it with `make run`"


# -- formatting ----------------------------------------------------------------

def _to_dict(message: Any, node: str | None = None) -> dict[str, Any]:
    """The message as JSON; with ``node``, labelled with the node it came from."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    return data if node is None else {"node": node, **data}


def _enum(enum: Any, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower() if value in enum.values() else "?"


def _state(value: int) -> str:
    return _enum(pb.DomainState, value, "DOMAIN_STATE_")


def _size(amount: float, units: Sequence[str]) -> str:
    for unit in units[:-1]:
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == units[0] else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} {units[-1]}"


def _kib(kib: int) -> str:
    return _size(kib, ("KiB", "MiB", "GiB", "TiB"))


def _bytes(count: int) -> str:
    return _size(count, ("B", "KiB", "MiB", "GiB", "TiB"))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [[str(cell) for cell in row] for row in (headers, *rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                        strict=True)).rstrip()
                     for row in cells)


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """``Label:  value`` lines with the values aligned."""
    items = list(pairs)
    width = max(len(label) for label, _ in items) + 2
    return "\n".join(f"{label + ':':<{width}}{value}" for label, value in items)


class Output:
    """Prints a result as text, or as the JSON of its message with ``--json``."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def show(self, message: Any, text: str) -> None:
        print(json.dumps(_to_dict(message), indent=2) if self.json else text)

    def line(self, message: Any, text: str, node: str | None = None) -> None:
        """One line per item as it arrives (JSON Lines with ``--json``)."""
        print(json.dumps(_to_dict(message, node)) if self.json else
              f"{node}  {text}" if node else text, flush=True)


def _domain_row(d: Any) -> Sequence[object]:
    return (d.name, _state(d.state), d.id or "-", d.vcpus, _kib(d.memory_kib),
            _yes(d.persistent), _yes(d.autostart))


def _domain_fields(d: Any) -> str:
    return fields((
        ("Name", d.name), ("UUID", d.uuid), ("Id", d.id or "-"),
        ("State", f"{_state(d.state)} ({d.state_reason})"), ("OS type", d.os_type),
        ("vCPUs", d.vcpus), ("Memory", _kib(d.memory_kib)),
        ("Max memory", _kib(d.max_memory_kib)), ("CPU time", f"{d.cpu_time_ns / 1e9:.1f} s"),
        ("Persistent", _yes(d.persistent)), ("Autostart", _yes(d.autostart)),
        ("Managed save", _yes(d.has_managed_save)),
    ))


def _stats_row(s: Any) -> Sequence[object]:
    return (s.name, _state(s.state), f"{s.cpu.time_ns / 1e9:.2f}",
            _kib(s.balloon.current_kib) if s.balloon.current_kib else "-",
            s.vcpu_current or "-",
            _bytes(sum(b.read_bytes for b in s.blocks)),
            _bytes(sum(b.write_bytes for b in s.blocks)),
            _bytes(sum(i.rx_bytes for i in s.interfaces)),
            _bytes(sum(i.tx_bytes for i in s.interfaces)))


def _event_text(event: Any) -> str:
    kind = event.WhichOneof("event") or "unknown"
    detail = {
        "lifecycle": lambda: (_enum(pb.LifecycleEventType, event.lifecycle.type,
                                    "LIFECYCLE_EVENT_TYPE_") + f" {event.lifecycle.detail}"),
        "device_added": lambda: event.device_added.device,
        "device_removed": lambda: event.device_removed.device,
    }.get(kind, lambda: "")()
    when = event.time.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds")
    return f"{when}  {event.name}  {kind.replace('_', '-')}  {detail}".rstrip()


def _read(file: IO[str]) -> str:
    """The contents of a FileType argument; stdin stays open for the caller."""
    text = file.read()
    if file is not sys.stdin:
        file.close()
    return text


def _scope(args: argparse.Namespace) -> Any:
    return pb.Scope(live=args.live, config=args.config)


# -- several gateways ----------------------------------------------------------

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

    def __call__(self, client: Client, args: argparse.Namespace, out: Output) -> None:
        response = self.fetch(client, args)
        out.show(response, table(self.headers, map(self.row, getattr(response, self.key)))
                 if self.key else fields(zip(self.headers, self.row(response), strict=True)))

    def merged(self, fleet: Fleet, args: argparse.Namespace, out: Output) -> None:
        results = fleet.each(lambda client: self.fetch(client, args))
        rows = [(node, item) for node, response in results.items()
                for item in (getattr(response, self.key) if self.key else [response])]
        if out.json:
            print(json.dumps({self.key or "nodes": [_to_dict(item, node) for node, item in rows]},
                             indent=2))
        else:
            headers = ("NODE", *(header.upper().replace(" ", "_") for header in self.headers))
            print(table(headers, ((node, *self.row(item)) for node, item in rows)))


def _gateways(args: argparse.Namespace) -> dict[str, str]:
    """Node name → address: ``--socket``, or ``[NAME=]HOST:PORT`` from every ``--gateway``,
    ``VIRTMESH_GATEWAYS`` (comma-separated) or ``VIRTMESH_GATEWAY``; unnamed, the
    node is its address."""
    if args.socket:
        return {args.socket: args.socket if args.socket.startswith("unix:")
                else f"unix:{args.socket}"}
    values = [value.strip() for value in
              args.gateway or os.environ.get("VIRTMESH_GATEWAYS", "").split(",")
              if value.strip()] or [os.environ.get("VIRTMESH_GATEWAY") or DEFAULT_GATEWAY]
    nodes: dict[str, str] = {}
    for value in values:
        name, _, address = value.rpartition("=")
        if not address or (name or address) in nodes:
            raise UsageError(f"bad or repeated gateway '{value}'; expected [NAME=]HOST:PORT, "
                             "each name once")
        nodes[name or address] = address
    return nodes


# -- commands ------------------------------------------------------------------

def _list(client: Client, args: argparse.Namespace) -> Any:
    active = True if args.active else False if args.inactive else None
    return pb.ListDomainsResponse(domains=client.domains(
        active=active, states=[STATES[s] for s in args.state or ()]))


cmd_list = Query(_list, ("NAME", "STATE", "ID", "VCPUS", "MEMORY", "PERSISTENT", "AUTOSTART"),
                 _domain_row, "domains")


def cmd_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    domain = client.domain(args.name)
    out.show(domain, _domain_fields(domain))


def cmd_define(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DefineDomain", pb.DefineDomainRequest(
        xml=_read(args.file), validate=args.validate))
    out.show(response, f"Domain '{response.domain.name}' defined ({response.domain.uuid})")


def cmd_undefine(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("UndefineDomain", pb.UndefineDomainRequest(
        name=args.name, managed_save=args.managed_save, snapshots_metadata=args.snapshots,
        nvram=args.nvram))
    out.show(response, f"Domain '{args.name}' undefined")


def cmd_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateDomain", pb.CreateDomainRequest(
        xml=_read(args.file), paused=args.paused, validate=args.validate))
    out.show(response, f"Domain '{response.domain.name}' created ({response.domain.uuid})")


def cmd_start(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("StartDomain", pb.StartDomainRequest(
        name=args.name, paused=args.paused, force_boot=args.force_boot))
    out.show(response, f"Domain '{args.name}' started")


def cmd_shutdown(client: Client, args: argparse.Namespace, out: Output) -> None:
    client.shutdown(args.name, wait=args.wait_timeout if args.wait else None)
    done = "shut off" if args.wait else "is being shut down"
    out.show(pb.ShutdownDomainResponse(), f"Domain '{args.name}' {done}")


def _simple(method: str, request: type, done: str) -> Handler:
    """A command that sends just the domain name and reports success."""
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        out.show(client.call(method, request(name=args.name)), f"Domain '{args.name}' {done}")
    return handler


def cmd_destroy(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DestroyDomain", pb.DestroyDomainRequest(
        name=args.name, graceful=args.graceful))
    out.show(response, f"Domain '{args.name}' destroyed")


def cmd_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainXML", pb.GetDomainXMLRequest(
        name=args.name, inactive=args.inactive, secure=args.secure,
        migratable=args.migratable))
    out.show(response, response.xml.rstrip("\n"))


def follow(events: EventStream, what: str, text: Callable[[Any], str], out: Output,
           count: int | None) -> None:
    """Print a Watch… stream's events as they come, until Ctrl-C or ``count`` events."""
    with events:
        print(f"watching {what} events; Ctrl-C to stop", file=sys.stderr, flush=True)
        for seen, event in enumerate(events, 1):
            out.line(event, text(event))
            if seen == count:
                return


def watch(client: Client, method: str, request: Any) -> EventStream:
    """Open a Watch… stream of any service; returns once the server has subscribed us."""
    return EventStream(client.method(method, type(request))(request, timeout=None))


def cmd_events(client: Client, args: argparse.Namespace, out: Output) -> None:
    follow(client.watch(args.names), "domain", _event_text, out, args.count)


def merge_events(fleet: Fleet, args: argparse.Namespace, out: Output) -> None:
    """Every node's events as one stream, each line labelled with its node."""
    streams = fleet.each(lambda client: client.watch(args.names))
    merged: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pump(node: str, stream: EventStream) -> None:
        try:
            for event in stream:
                merged.put((node, event))
            merged.put((node, ClientError("UNAVAILABLE", "the event stream ended")))
        except ClientError as error:
            merged.put((node, error))

    for node, stream in streams.items():
        threading.Thread(target=pump, args=(node, stream), daemon=True).start()
    if streams:
        print(f"watching domain events on {', '.join(streams)}; Ctrl-C to stop",
              file=sys.stderr, flush=True)
    try:
        count, running = 0, len(streams)
        while running:
            node, item = merged.get()
            if isinstance(item, ClientError):
                fleet.warn(node, item)
                running -= 1
                continue
            out.line(item, _event_text(item), node)
            count += 1
            if count == args.count:
                return
    finally:
        for stream in streams.values():
            stream.close()


cmd_stats = Query(
    lambda client, args: client.call("GetDomainStats", pb.GetDomainStatsRequest(
        names=args.names, active_only=args.active)),
    ("NAME", "STATE", "CPU_S", "MEMORY", "VCPUS", "BLOCK_RD", "BLOCK_WR", "NET_RX", "NET_TX"),
    _stats_row, "stats")


def cmd_capabilities(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetCapabilities", pb.GetCapabilitiesRequest())
    out.show(response, response.xml.rstrip("\n"))


def cmd_domcapabilities(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainCapabilities", pb.GetDomainCapabilitiesRequest(
        emulator=args.emulator, arch=args.arch, machine=args.machine,
        virt_type=args.virt_type))
    out.show(response, response.xml.rstrip("\n"))


cmd_nodeinfo = Query(
    lambda client, args: client.call("GetNodeInfo", pb.GetNodeInfoRequest()),
    ("CPU model", "CPUs", "CPU frequency", "NUMA nodes", "Sockets per node", "Cores per socket",
     "Threads per core", "Memory"),
    lambda n: (n.model, n.cpus, f"{n.mhz} MHz", n.nodes, n.sockets, n.cores, n.threads,
               _kib(n.memory_kib)))

cmd_version = Query(
    lambda client, args: client.call("GetVersion", pb.GetVersionRequest()),
    ("virtmesh", "libvirt", "Hypervisor", "URI"),
    lambda v: (v.virtmesh_version, v.libvirt_version,
               f"{v.hypervisor_type} {v.hypervisor_version}", v.uri))


def cmd_autostart(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainAutostart", pb.SetDomainAutostartRequest(
        name=args.name, autostart=not args.disable))
    done = "unmarked as autostarted" if args.disable else "marked as autostarted"
    out.show(response, f"Domain '{args.name}' {done}")


def cmd_setvcpus(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainVcpus", pb.SetDomainVcpusRequest(
        name=args.name, count=args.count, scope=_scope(args), maximum=args.maximum))
    out.show(response, f"Domain '{args.name}' vCPUs set to {args.count}")


def cmd_setmem(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainMemory", pb.SetDomainMemoryRequest(
        name=args.name, memory_kib=args.kib, scope=_scope(args), maximum=args.maximum))
    out.show(response, f"Domain '{args.name}' memory set to {_kib(args.kib)}")


def cmd_snapshot_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateSnapshot", pb.CreateSnapshotRequest(
        name=args.name, xml=_read(args.xml) if args.xml else ""))
    out.show(response, f"Snapshot '{response.snapshot.name}' of '{args.name}' created")


def cmd_snapshot_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    snaps = client.snapshots(args.name)
    text = table(("NAME", "CREATED", "STATE", "PARENT", "CURRENT"), (
        (s.name, s.create_time.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds"),
         s.state, s.parent or "-", _yes(s.current)) for s in snaps))
    out.show(pb.ListSnapshotsResponse(snapshots=snaps), text)


def cmd_snapshot_revert(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("RevertToSnapshot", pb.RevertToSnapshotRequest(
        name=args.name, snapshot=args.snapshot, running=args.running, paused=args.paused,
        force=args.force))
    out.show(response, f"Domain '{args.name}' reverted to snapshot '{args.snapshot}'")


def cmd_snapshot_delete(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DeleteSnapshot", pb.DeleteSnapshotRequest(
        name=args.name, snapshot=args.snapshot, children=args.children))
    out.show(response, f"Snapshot '{args.snapshot}' of '{args.name}' deleted")


def _device(method: str, request: type, done: str) -> Handler:
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        response = client.call(method, request(name=args.name, xml=_read(args.file),
                                               scope=_scope(args)))
        out.show(response, f"Device {done} '{args.name}'")
    return handler


# -- argument parsing ----------------------------------------------------------

def _global_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Added to the main parser with defaults and to every subcommand without, so that
    ``virtmesh --json list`` and ``virtmesh list --json`` both work."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS
    parser.add_argument("--gateway", action="append", default=default(None),
                        metavar="[NAME=]HOST:PORT",
                        help="gateway address, repeatable for several nodes (env "
                        "VIRTMESH_GATEWAYS, comma-separated, or VIRTMESH_GATEWAY; default "
                        "127.0.0.1:16514)")
    parser.add_argument("--node", default=default(None), metavar="NAME",
                        help="with several gateways: the one to use")
    parser.add_argument("--socket", default=default(None), metavar="PATH",
                        help="talk to the compute service's UNIX socket directly, without TLS")
    parser.add_argument("--state-dir", default=default(None),
                        help="where pki/ is (env VIRTMESH_STATE_DIR; default ./.virtmesh)")
    parser.add_argument("--ca", default=default(None), help="CA certificate (env VIRTMESH_CA)")
    parser.add_argument("--cert", default=default(None),
                        help="client certificate (env VIRTMESH_CERT)")
    parser.add_argument("--key", default=default(None), help="client key (env VIRTMESH_KEY)")
    parser.add_argument("--token-file", default=default(None), metavar="PATH",
                        help="bearer token for the gateway, sent over TLS only (env "
                        "VIRTMESH_TOKEN_FILE, or the token itself in VIRTMESH_TOKEN)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON for scripts")
    parser.add_argument("--timeout", type=float, default=default(DEFAULT_TIMEOUT),
                        metavar="SECONDS", help="deadline of each call; 0 waits forever")


def _add_scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--live", action="store_true", help="change the running domain")
    parser.add_argument("--config", action="store_true", help="change the persistent config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virtmesh", description=__doc__.splitlines()[0])
    _global_flags(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, summary: str, *names: str,
                fan_out: FanOut | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, parents=[common])
        sub.set_defaults(handler=handler,
                         fan_out=handler.merged if isinstance(handler, Query) else fan_out)
        for arg in names:
            sub.add_argument(arg, metavar="DOMAIN" if arg == "name" else arg.upper(),
                             help="domain name or UUID" if arg == "name" else f"{arg} name")
        return sub

    xml_in = argparse.FileType("r")

    sub = command("list", cmd_list, "list domains")
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="all domains (the default)")
    which.add_argument("--active", action="store_true", help="only running domains")
    which.add_argument("--inactive", action="store_true", help="only inactive domains")
    sub.add_argument("--state", action="append", choices=sorted(STATES),
                     help="only domains in this state (repeatable)")

    command("info", cmd_info, "show a domain's summary", "name")
    sub = command("define", cmd_define, "define a persistent domain from XML")
    sub.add_argument("file", type=xml_in, help="domain XML file, or - for stdin")
    sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    sub = command("undefine", cmd_undefine, "remove a domain's definition", "name")
    sub.add_argument("--managed-save", action="store_true", help="also its managed save")
    sub.add_argument("--snapshots", action="store_true", help="also its snapshot metadata")
    sub.add_argument("--nvram", action="store_true", help="also its UEFI NVRAM file")
    sub = command("create", cmd_create, "create and start a transient domain from XML")
    sub.add_argument("file", type=xml_in, help="domain XML file, or - for stdin")
    sub.add_argument("--paused", action="store_true", help="leave its vCPUs paused")
    sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    sub = command("start", cmd_start, "start a defined domain", "name")
    sub.add_argument("--paused", action="store_true", help="leave its vCPUs paused")
    sub.add_argument("--force-boot", action="store_true", help="discard a managed save")
    sub = command("shutdown", cmd_shutdown, "ask the guest to shut down", "name")
    sub.add_argument("--wait", action="store_true", help="return once the domain is shut off")
    sub.add_argument("--wait-timeout", type=float, default=300.0, metavar="SECONDS",
                     help="how long --wait waits (default 300)")
    sub = command("destroy", cmd_destroy, "power a domain off at once", "name")
    sub.add_argument("--graceful", action="store_true", help="SIGTERM only, never SIGKILL")
    command("reboot", _simple("RebootDomain", pb.RebootDomainRequest, "is being rebooted"),
            "ask the guest to reboot", "name")
    command("reset", _simple("ResetDomain", pb.ResetDomainRequest, "reset"),
            "press the reset button", "name")
    command("suspend", _simple("SuspendDomain", pb.SuspendDomainRequest, "suspended"),
            "pause a domain's vCPUs", "name")
    command("resume", _simple("ResumeDomain", pb.ResumeDomainRequest, "resumed"),
            "resume a paused domain", "name")
    sub = command("dumpxml", cmd_dumpxml, "print a domain's XML", "name")
    sub.add_argument("--inactive", action="store_true", help="the persistent config")
    sub.add_argument("--secure", action="store_true", help="include secrets")
    sub.add_argument("--migratable", action="store_true", help="XML suitable for migration")
    sub = command("events", cmd_events, "print domain events as they happen",
                  fan_out=merge_events)
    sub.add_argument("names", nargs="*", metavar="NAME", help="only these domains")
    sub.add_argument("--count", type=int, metavar="N", help="stop after N events")
    sub = command("stats", cmd_stats, "show domain statistics")
    sub.add_argument("names", nargs="*", metavar="NAME", help="only these domains")
    sub.add_argument("--active", action="store_true", help="only running domains")
    command("capabilities", cmd_capabilities, "print the hypervisor's capabilities XML")
    sub = command("domcapabilities", cmd_domcapabilities, "print domain capabilities XML")
    sub.add_argument("--emulator", default="", help="emulator binary path")
    sub.add_argument("--arch", default="", help="architecture, e.g. x86_64")
    sub.add_argument("--machine", default="", help="machine type, e.g. q35")
    sub.add_argument("--virt-type", default="", help="kvm or qemu")
    command("nodeinfo", cmd_nodeinfo, "show the host's CPUs and memory")
    command("version", cmd_version, "show virtmesh, libvirt and hypervisor versions")
    sub = command("autostart", cmd_autostart, "start a domain with the service", "name")
    sub.add_argument("--disable", action="store_true", help="do not autostart it")
    sub = command("setvcpus", cmd_setvcpus, "change the number of vCPUs", "name")
    sub.add_argument("count", type=int)
    sub.add_argument("--maximum", action="store_true", help="change the maximum (config)")
    _add_scope(sub)
    sub = command("setmem", cmd_setmem, "change the memory size", "name")
    sub.add_argument("kib", type=int, metavar="KIB")
    sub.add_argument("--maximum", action="store_true", help="change the maximum")
    _add_scope(sub)
    sub = command("snapshot-create", cmd_snapshot_create, "snapshot a domain", "name")
    sub.add_argument("--xml", type=xml_in, metavar="FILE", help="<domainsnapshot> XML file")
    command("snapshot-list", cmd_snapshot_list, "list a domain's snapshots", "name")
    sub = command("snapshot-revert", cmd_snapshot_revert, "revert to a snapshot", "name",
                  "snapshot")
    sub.add_argument("--running", action="store_true", help="leave the domain running")
    sub.add_argument("--paused", action="store_true", help="leave the domain paused")
    sub.add_argument("--force", action="store_true", help="revert even when risky")
    sub = command("snapshot-delete", cmd_snapshot_delete, "delete a snapshot", "name",
                  "snapshot")
    sub.add_argument("--children", action="store_true", help="and its descendants")
    for name, method, request, done in (
            ("attach-device", "AttachDevice", pb.AttachDeviceRequest, "attached to"),
            ("detach-device", "DetachDevice", pb.DetachDeviceRequest, "detached from")):
        sub = command(name, _device(method, request, done), f"{name.split('-')[0]} a device "
                      "described by XML", "name")
        sub.add_argument("file", type=xml_in, help="device XML file, or - for stdin")
        _add_scope(sub)
    # The other drivers' commands live in cli_<driver>.py, each with
    # ``register(command)``; they use this module's helpers, hence the late import.
    for module in sorted(pkgutil.iter_modules(virtmesh_client.__path__), key=lambda m: m.name):
        if module.name.startswith("cli_"):
            importlib.import_module(f"virtmesh_client.{module.name}").register(command)
    return parser


def _run(args: argparse.Namespace, out: Output) -> int:
    """One gateway (or ``--node``): the command as is. Several: fan out, or find the
    domain's node; anything else needs ``--node``. 1 if a node failed."""
    with contextlib.ExitStack() as stack:
        clients = {node: stack.enter_context(Client(
            address, state_dir=args.state_dir, ca=args.ca, cert=args.cert, key=args.key,
            token_file=args.token_file, timeout=args.timeout or None))
            for node, address in _gateways(args).items()}
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


@dataclasses.dataclass
class _CtrlC:
    """What Ctrl-C does to the command being run: watches (events, *-event) end with
    it, status 0; anything else is interrupted, status 130."""

    status: int = 130
    pressed: bool = False


_ctrl_c = _CtrlC()


def _exit_now(status: int, flush: bool = True) -> None:
    """End the process now. Only the main thread flushes: a stalled one may hold the
    streams' locks, or be inside a flush itself."""
    if flush:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(status)


def _on_ctrl_c(_signum: int, _frame: object) -> None:
    """The first Ctrl-C unwinds (calls cancelled, partial files removed); should that
    stall in a thread grpc's core holds, one second or a second Ctrl-C ends it."""
    if _ctrl_c.pressed:
        _exit_now(_ctrl_c.status, flush=False)
    _ctrl_c.pressed = True
    watchdog = threading.Timer(1.0, _exit_now, (_ctrl_c.status, False))
    watchdog.daemon = True
    watchdog.start()
    raise KeyboardInterrupt


def command() -> None:
    """The ``virtmesh`` program. After a Ctrl-C the process ends without the
    interpreter's own teardown, where grpc can wait on the threads of calls being
    cancelled: Ctrl-C always ends the CLI within a second."""
    signal.signal(signal.SIGINT, _on_ctrl_c)
    status = main()
    if _ctrl_c.pressed:
        _exit_now(status)
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse printed the usage or --help
        return exit.code if isinstance(exit.code, int) else 2
    _ctrl_c.status = 0 if args.command == "events" or args.command.endswith("-event") else 130
    try:
        return _run(args, Output(args.json))
    except ClientError as error:
        hint = START_HINT if error.code == "UNAVAILABLE" and not error.reason else ""
        print(f"virtmesh: {error}{hint}", file=sys.stderr)
        return 1
    except (ConfigError, UsageError) as error:
        print(f"virtmesh: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _ctrl_c.status
