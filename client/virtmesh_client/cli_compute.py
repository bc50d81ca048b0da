"""Compute commands: virsh's domain commands against the compute service.

The only service whose commands find a domain's node among several gateways
(``locate``) and whose events merge the streams of every node.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from collections.abc import Sequence
from typing import Any

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_commands import (
    VALIDATE,
    XML_FILE,
    Argument,
    CommandFactory,
    Commands,
    Kind,
    add_count,
    either,
    enum_choices,
    follow,
    gap_text,
    notice,
)
from virtmesh_client.cli_edit import add_edit
from virtmesh_client.cli_fleet import Fleet, Handler, Query
from virtmesh_client.cli_output import (
    INT_ENUMS,
    Output,
    byte_size,
    enum_name,
    event_line,
    fields,
    kib,
    message_text,
    parse_kib,
    read_input,
    yes,
)
from virtmesh_client.client import Client, ClientError, EventStream

STATES = enum_choices(pb.DomainState, "DOMAIN_STATE_")
# libvirt's virVcpuState, an int32 in the API: by name in --json, as other enums are
INT_ENUMS["virtmesh.compute.v1.VcpuStats.state"] = {
    0: "VCPU_STATE_OFFLINE", 1: "VCPU_STATE_RUNNING", 2: "VCPU_STATE_BLOCKED"}
#: ``name`` is the argument the fleet looks for to find a domain's node
DOMAIN_ARGUMENT = Argument("name", "DOMAIN", "domain name or UUID")
DOMAIN = Kind("Domain '{}'", (DOMAIN_ARGUMENT,), response_field="domain")


def _state(value: int) -> str:
    return enum_name(pb.DomainState, value, "DOMAIN_STATE_")


def _domain_row(d: Any) -> Sequence[object]:
    return (d.name, _state(d.state), d.id or "-", d.vcpus, kib(d.memory_kib),
            yes(d.persistent), yes(d.autostart))


def _domain_fields(d: Any) -> str:
    return fields((
        ("Name", d.name), ("UUID", d.uuid), ("Id", d.id or "-"),
        ("State", f"{_state(d.state)} ({d.state_reason})"),
        *((("Why", d.state_message),) if d.state_message else ()), ("OS type", d.os_type),
        ("vCPUs", d.vcpus), ("Memory", kib(d.memory_kib)),
        ("Max memory", kib(d.max_memory_kib)), ("CPU time", f"{d.cpu_time_ns / 1e9:.1f} s"),
        ("Persistent", yes(d.persistent)), ("Autostart", yes(d.autostart)),
        ("Managed save", yes(d.has_managed_save)),
    ))


def _stats_row(s: Any) -> Sequence[object]:
    return (s.name, _state(s.state), f"{s.cpu.time_ns / 1e9:.2f} s",
            kib(s.balloon.current_kib) if s.balloon.current_kib else "-",
            s.vcpu_current or "-",
            byte_size(sum(b.read_bytes for b in s.blocks)),
            byte_size(sum(b.write_bytes for b in s.blocks)),
            byte_size(sum(i.rx_bytes for i in s.interfaces)),
            byte_size(sum(i.tx_bytes for i in s.interfaces)))


def _event_text(event: Any) -> str:
    which = event.WhichOneof("event")
    kind = which or "unknown"
    detail = {
        "lifecycle": lambda: (enum_name(pb.LifecycleEventType, event.lifecycle.type,
                                        "LIFECYCLE_EVENT_TYPE_") + f" {event.lifecycle.detail}"
                      + (f": {event.lifecycle.message}" if event.lifecycle.message else "")),
        "device_added": lambda: event.device_added.device,
        "device_removed": lambda: event.device_removed.device,
    }.get(kind, lambda: message_text(getattr(event, which)) if which else "")()
    return event_line(event, kind.replace("_", "-"), detail)


def _scope(args: argparse.Namespace) -> Any:
    return pb.Scope(live=args.live, config=args.config)


def _list(client: Client, args: argparse.Namespace) -> Any:
    return pb.ListDomainsResponse(domains=client.domains(
        active=either(args, "active", "inactive"), states=[STATES[s] for s in args.state or ()]))


cmd_list = Query(_list, ("NAME", "STATE", "ID", "VCPUS", "MEMORY", "PERSISTENT", "AUTOSTART"),
                 _domain_row, "domains")


def cmd_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    domain = client.domain(args.name)
    out.show(domain, _domain_fields(domain))


def cmd_domname(client: Client, args: argparse.Namespace, out: Output) -> None:
    """virsh domname: a running domain's ID (or a UUID) as its name."""
    if args.domain.isdigit():
        domain = client.call("LookupDomainById",
                             pb.LookupDomainByIdRequest(id=int(args.domain))).domain
    else:
        domain = client.domain(args.domain)
    out.show(domain, domain.name)


def cmd_domid(client: Client, args: argparse.Namespace, out: Output) -> None:
    """virsh domid: a domain's ID, ``-`` when it is not running."""
    domain = client.domain(args.name)
    out.show(domain, str(domain.id) if domain.id else "-")


def cmd_undefine(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("UndefineDomain", pb.UndefineDomainRequest(
        name=args.name, managed_save=args.managed_save, snapshots_metadata=args.snapshots,
        nvram=args.nvram))
    out.show(response, f"Domain '{args.name}' undefined")


def cmd_shutdown(client: Client, args: argparse.Namespace, out: Output) -> None:
    client.shutdown(args.name, wait=args.wait_timeout if args.wait else None)
    done = "shut off" if args.wait else "is being shut down"
    out.show(pb.ShutdownDomainResponse(), f"Domain '{args.name}' {done}")


def cmd_events(client: Client, args: argparse.Namespace, out: Output) -> None:
    follow(client.watch(args.names, notice=notice), "domain", _event_text, out, args.count)


def merge_events(fleet: Fleet, args: argparse.Namespace, out: Output) -> None:
    """Every node's events as one stream, each line labelled with its node."""
    def watch(client: Client) -> EventStream:
        def said(text: str) -> None:
            notice(f"{client.target}: {text}")
        return client.watch(args.names, notice=said)

    streams = fleet.each(watch)
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
            if item.HasField("gap"):
                notice(f"{node}: {gap_text(item.gap)}")
                if out.json:
                    out.line(item, "", node)
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
    ("NAME", "STATE", "CPU_TIME", "BALLOON_CURRENT", "VCPU_CURRENT", "BLOCKS_READ",
     "BLOCKS_WRITE", "INTERFACES_RX", "INTERFACES_TX"),
    _stats_row, "stats")


#: virsh domstats' order of the groups; a key's group is its first dotted word
_STATS_GROUP_ORDER = ("state", "cpu", "balloon", "vcpu", "net", "block")
#: the group options of ``domstats``, as virsh names them
_DOMSTATS_GROUPS = {"state": pb.STAT_GROUP_STATE, "cpu_total": pb.STAT_GROUP_CPU_TOTAL,
                    "balloon": pb.STAT_GROUP_BALLOON, "vcpu": pb.STAT_GROUP_VCPU,
                    "interface": pb.STAT_GROUP_INTERFACE, "block": pb.STAT_GROUP_BLOCK}


def stats_key_order(key: str) -> tuple[object, ...]:
    """virsh's group order; within a group by name, numbered items (``block.10``)
    numerically (a protobuf map does not keep libvirt's order)."""
    group = key.split(".", 1)[0]
    rank = (_STATS_GROUP_ORDER.index(group) if group in _STATS_GROUP_ORDER
            else len(_STATS_GROUP_ORDER))
    return (rank, *((0, int(word), "") if word.isdigit() else (1, 0, word)
                     for word in key.split(".")))


def cmd_domstats(client: Client, args: argparse.Namespace, out: Output) -> None:
    """virsh domstats: every value libvirt reported, ``group.field=value`` per line."""
    groups = [group for option, group in _DOMSTATS_GROUPS.items() if getattr(args, option)]
    response = client.call("GetDomainStats", pb.GetDomainStatsRequest(
        names=args.names, active_only=args.list_active, groups=groups, nowait=args.nowait))
    out.show(response, "\n\n".join(
        "\n".join([f"Domain: '{stats.name}'",
                   *(f"  {key}={stats.raw[key]}"
                     for key in sorted(stats.raw, key=stats_key_order))])
        for stats in response.stats))


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
               kib(n.memory_kib)),
    columns=("MODEL", "CPUS", "MHZ", "NODES", "SOCKETS", "CORES", "THREADS", "MEMORY"))

cmd_version = Query(
    lambda client, args: client.call("GetVersion", pb.GetVersionRequest()),
    ("virtmesh", "libvirt", "Hypervisor", "URI"),
    lambda v: (v.virtmesh_version, v.libvirt_version,
               f"{v.hypervisor_type} {v.hypervisor_version}", v.uri),
    columns=("VIRTMESH_VERSION", "LIBVIRT_VERSION", "HYPERVISOR", "URI"))


def cmd_setvcpus(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainVcpus", pb.SetDomainVcpusRequest(
        name=args.name, count=args.count, scope=_scope(args), maximum=args.maximum))
    out.show(response, f"Domain '{args.name}' vCPUs set to {args.count}")


def cmd_setmem(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainMemory", pb.SetDomainMemoryRequest(
        name=args.name, memory_kib=args.size, scope=_scope(args), maximum=args.maximum))
    out.show(response, f"Domain '{args.name}' memory set to {kib(args.size)}")


def _device(method: str, request: type, done: str) -> Handler:
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        response = client.call(method, request(name=args.name, xml=read_input(args.file),
                                               scope=_scope(args)))
        out.show(response, f"Device {done} '{args.name}'")
    return handler


def _add_scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--live", action="store_true", help="change the running domain")
    parser.add_argument("--config", action="store_true", help="change the persistent config")


def register(command: CommandFactory) -> None:
    domains = Commands(command, DOMAIN)
    paused = ("--paused", "leave its vCPUs paused")
    sub = command("list", cmd_list, "list domains")
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="all domains (the default)")
    which.add_argument("--active", action="store_true", help="only running domains")
    which.add_argument("--inactive", action="store_true", help="only inactive domains")
    sub.add_argument("--state", action="append", choices=sorted(STATES),
                     help="only domains in this state (repeatable)")

    domains.add("info", cmd_info, "show a domain's summary")
    sub = command("domname", cmd_domname, "the name of a running domain's ID, or of a UUID")
    sub.add_argument("domain", metavar="ID|UUID")
    domains.add("domid", cmd_domid, "a domain's ID (- when it is not running)")
    domains.from_xml("define", "DefineDomain", pb.DefineDomainRequest, "defined",
                     "define a persistent domain from XML", "domain XML file, or - for stdin",
                     VALIDATE, uuid=True)
    add_edit(domains, "edit", ("GetDomainXML", pb.GetDomainXMLRequest),
             ("DefineDomain", pb.DefineDomainRequest),
             "edit a domain's persistent XML in $EDITOR", inactive=True, secure=True)
    sub = domains.add("undefine", cmd_undefine, "remove a domain's definition")
    sub.add_argument("--managed-save", action="store_true", help="also its managed save")
    sub.add_argument("--snapshots", action="store_true", help="also its snapshot metadata")
    sub.add_argument("--nvram", action="store_true", help="also its UEFI NVRAM file")
    domains.from_xml("create", "CreateDomain", pb.CreateDomainRequest, "created",
                     "create and start a transient domain from XML",
                     "domain XML file, or - for stdin", paused, VALIDATE, uuid=True)
    domains.simple("start", "StartDomain", pb.StartDomainRequest, "started",
                   "start a defined domain", paused,
                   ("--force-boot", "discard a managed save"))
    sub = domains.add("shutdown", cmd_shutdown, "ask the guest to shut down")
    sub.add_argument("--wait", action="store_true", help="return once the domain is shut off")
    sub.add_argument("--wait-timeout", type=float, default=300.0, metavar="SECONDS",
                     help="how long --wait waits (default 300)")
    domains.simple("destroy", "DestroyDomain", pb.DestroyDomainRequest, "destroyed",
                   "power a domain off at once", ("--graceful", "SIGTERM only, never SIGKILL"))
    domains.simple("reboot", "RebootDomain", pb.RebootDomainRequest, "is being rebooted",
                   "ask the guest to reboot")
    domains.simple("reset", "ResetDomain", pb.ResetDomainRequest, "reset",
                   "press the reset button")
    domains.simple("suspend", "SuspendDomain", pb.SuspendDomainRequest, "suspended",
                   "pause a domain's vCPUs")
    domains.simple("resume", "ResumeDomain", pb.ResumeDomainRequest, "resumed",
                   "resume a paused domain")
    domains.dumpxml("dumpxml", "GetDomainXML", pb.GetDomainXMLRequest, "print a domain's XML",
                    ("--inactive", "the persistent config"), ("--secure", "include secrets"),
                    ("--migratable", "XML suitable for migration"))
    sub = command("events", cmd_events, "print domain events as they happen",
                  fan_out=merge_events)
    sub.add_argument("names", nargs="*", metavar="NAME", help="only these domains")
    add_count(sub)
    sub = command("stats", cmd_stats, "show domain statistics")
    sub.add_argument("names", nargs="*", metavar="NAME", help="only these domains")
    sub.add_argument("--active", action="store_true", help="only running domains")
    sub = command("domstats", cmd_domstats,
                  "every statistic libvirt reports, as virsh domstats prints them")
    sub.add_argument("names", nargs="*", metavar="NAME", help="only these domains")
    for option in _DOMSTATS_GROUPS:
        sub.add_argument(f"--{option.replace('_', '-')}", action="store_true",
                         help=f"the {option.replace('_', ' ')} group (default: all)")
    sub.add_argument("--list-active", action="store_true", help="only running domains")
    sub.add_argument("--nowait", action="store_true",
                     help="do not wait for a domain busy with a job")
    command("capabilities", cmd_capabilities, "print the hypervisor's capabilities XML")
    sub = command("domcapabilities", cmd_domcapabilities, "print domain capabilities XML")
    sub.add_argument("--emulator", default="", help="emulator binary path")
    sub.add_argument("--arch", default="", help="architecture, e.g. x86_64")
    sub.add_argument("--machine", default="", help="machine type, e.g. q35")
    sub.add_argument("--virt-type", default="", help="kvm or qemu")
    command("nodeinfo", cmd_nodeinfo, "show the host's CPUs and memory")
    command("version", cmd_version, "show virtmesh, libvirt and hypervisor versions")
    domains.autostart("autostart", "SetDomainAutostart", pb.SetDomainAutostartRequest,
                      "start a domain with the service")
    sub = domains.add("setvcpus", cmd_setvcpus, "change the number of vCPUs")
    sub.add_argument("count", type=int)
    sub.add_argument("--maximum", action="store_true", help="change the maximum (config)")
    _add_scope(sub)
    sub = domains.add("setmem", cmd_setmem, "change the memory size")
    sub.add_argument("size", type=parse_kib, metavar="SIZE",
                     help="KiB, or with a unit: 512M, 1G")
    sub.add_argument("--maximum", action="store_true", help="change the maximum")
    _add_scope(sub)
    for name, method, request, done in (
            ("attach-device", "AttachDevice", pb.AttachDeviceRequest, "attached to"),
            ("detach-device", "DetachDevice", pb.DetachDeviceRequest, "detached from")):
        sub = domains.add(name, _device(method, request, done),
                          f"{name.split('-')[0]} a device described by XML")
        sub.add_argument("file", type=XML_FILE, help="device XML file, or - for stdin")
        _add_scope(sub)
