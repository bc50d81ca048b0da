"""Migrating a domain: virsh's migrate, migrate-setspeed, migrate-getspeed,
migrate-setmaxdowntime, migrate-getmaxdowntime, migrate-compcache and migrate-postcopy;
changing its devices in place: update-device and detach-device-alias; QEMU passthrough:
qemu-agent-command, qemu-monitor-command and qemu-monitor-event.

qemu-agent-command's --timeout is virsh's: the agent's, and the call's deadline too.

migrate lasts as long as libvirt's job, as save does (cli_jobs.py): it waits for it
(a ``--timeout`` given aborts the job when it passes); with ``--verbose`` on a
terminal a progress bar follows the job; Ctrl-C cancels the call and the service
aborts the migration, the guest running on here.
"""

from __future__ import annotations

import argparse
import json

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_commands import XML_FILE, CommandFactory, Commands
from virtmesh_client.cli_compute import DOMAIN, _add_scope, _scope
from virtmesh_client.cli_jobs import long_call
from virtmesh_client.cli_output import Output, byte_size, parse_bytes, read_input
from virtmesh_client.client import DEFAULT_TIMEOUT, Client

#: virsh's options -> MigrateDomainRequest's flags
FLAGS: dict[str, tuple[str, str]] = {
    "--live": ("live", "migrate the running guest (else it is paused meanwhile)"),
    "--p2p": ("peer2peer", "the source's libvirt connects to the destination itself"),
    "--tunnelled": ("tunnelled", "the data through libvirt's connection (with --p2p)"),
    "--persistent": ("persist_dest", "define the domain persistently on the destination"),
    "--undefinesource": ("undefine_source", "undefine it here once migrated"),
    "--suspend": ("paused", "leave it paused on the destination"),
    "--copy-storage-all": ("non_shared_disk", "copy all disks"),
    "--copy-storage-inc": ("non_shared_inc", "copy the top layer of the disks"),
    "--offline": ("offline", "only the definition (with --persistent)"),
    "--unsafe": ("unsafe", "skip libvirt's safety checks"),
    "--compressed": ("compressed", "compress the data"),
    "--abort-on-error": ("abort_on_error", "abort on an I/O error"),
    "--auto-converge": ("auto_converge", "throttle the guest's vCPUs if it does not converge"),
    "--postcopy": ("postcopy", "allow switching to post-copy (migrate-postcopy)"),
    "--tls": ("tls", "encrypt the data with TLS"),
    "--parallel": ("parallel", "several connections (--parallel-connections)"),
    "--change-protection": ("change_protection", "keep it from starting elsewhere meanwhile"),
}


def _text(file: object) -> str:
    return read_input(file) if file else ""  # type: ignore[arg-type]


def migrate_request(args: argparse.Namespace) -> pb.MigrateDomainRequest:
    parameters = pb.MigrationParameters(
        destination_name=args.dname or "", destination_xml=_text(args.xml),
        persistent_xml=_text(args.persistent_xml), bandwidth_mib_per_s=args.bandwidth or 0,
        migration_uri=args.migrateuri or "", listen_address=args.listen_address or "",
        graphics_uri=args.graphicsuri or "", disks=args.migrate_disks or [],
        disks_port=args.disks_port or 0, compression=args.comp_methods or [],
        parallel_connections=args.parallel_connections or 0,
        tls_destination=args.tls_destination or "")
    return pb.MigrateDomainRequest(
        name=args.name, destination_uri=args.desturi, parameters=parameters,
        **{field: getattr(args, option[2:].replace("-", "_"))
           for option, (field, _) in FLAGS.items()})


def cmd_migrate(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = long_call(client, args, "MigrateDomain", migrate_request(args),
                         args.name if args.verbose else "")
    out.show(response, f"Domain '{args.name}' migrated to {args.desturi}")


def cmd_getspeed(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainMigrationMaxSpeed", pb.GetDomainMigrationMaxSpeedRequest(
        name=args.name, postcopy=args.postcopy))
    out.show(response, str(response.bandwidth_mib_per_s))


def cmd_setspeed(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainMigrationMaxSpeed", pb.SetDomainMigrationMaxSpeedRequest(
        name=args.name, bandwidth_mib_per_s=args.bandwidth, postcopy=args.postcopy))
    out.show(response, f"Domain '{args.name}' migrates at most at {args.bandwidth} MiB/s")


def cmd_getmaxdowntime(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainMigrationMaxDowntime",
                           pb.GetDomainMigrationMaxDowntimeRequest(name=args.name))
    out.show(response, str(response.downtime_ms))


def cmd_setmaxdowntime(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainMigrationMaxDowntime",
                           pb.SetDomainMigrationMaxDowntimeRequest(name=args.name,
                                                                   downtime_ms=args.downtime))
    out.show(response, f"Domain '{args.name}' pauses at most {args.downtime} ms to migrate")


def cmd_compcache(client: Client, args: argparse.Namespace, out: Output) -> None:
    """virsh's migrate-compcache: with --size, set it first; print it always."""
    if args.size is not None:
        client.call("SetDomainMigrationCompressionCache",
                    pb.SetDomainMigrationCompressionCacheRequest(name=args.name,
                                                                 cache_bytes=args.size))
    response = client.call("GetDomainMigrationCompressionCache",
                           pb.GetDomainMigrationCompressionCacheRequest(name=args.name))
    out.show(response, f"Compression cache: {byte_size(response.cache_bytes)}")


def cmd_update_device(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("UpdateDevice", pb.UpdateDeviceRequest(
        name=args.name, xml=read_input(args.file), scope=_scope(args), force=args.force))
    out.show(response, f"Device updated on '{args.name}'")


def cmd_detach_device_alias(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DetachDeviceAlias", pb.DetachDeviceAliasRequest(
        name=args.name, alias=args.alias, scope=_scope(args)))
    out.show(response, f"Device detach request sent to '{args.name}'")


def cmd_qemu_agent_command(client: Client, args: argparse.Namespace, out: Output) -> None:
    request = pb.QemuAgentCommandRequest(name=args.name, command=" ".join(args.cmd))
    if args.async_:
        request.timeout_seconds = 0
    elif args.timeout not in (None, DEFAULT_TIMEOUT):
        request.timeout_seconds = max(int(args.timeout), 0)
    response = client.call("QemuAgentCommand", request)
    out.show(response, _pretty(response.result) if args.pretty else response.result)


def cmd_qemu_monitor_command(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("QemuMonitorCommand", pb.QemuMonitorCommandRequest(
        name=args.name, command=" ".join(args.cmd), hmp=args.hmp))
    text = _pretty(response.result) if args.pretty and not args.hmp else response.result
    out.show(response, text.rstrip("\n"))


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text


def event_line(event: pb.WatchQemuMonitorEventsResponse) -> str:
    """virsh's: ``event STOP at 1700000000.123456 for domain 'g': {...}``."""
    details = event.details or "<null>"
    return (f"event {event.event} at {event.time.seconds}.{event.time.nanos // 1000:06d} "
            f"for domain '{event.name}': {details}")


def cmd_qemu_monitor_event(client: Client, args: argparse.Namespace, out: Output) -> None:
    request = pb.WatchQemuMonitorEventsRequest(name=args.domain or "", event=args.event or "")
    for seen, event in enumerate(client.stream("WatchQemuMonitorEvents", request), 1):
        out.line(event, event_line(event))
        if args.count and seen >= args.count:
            return


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is negative")
    return value


def register(command: CommandFactory) -> None:
    domains = Commands(command, DOMAIN)
    sub = domains.add("migrate", cmd_migrate, "migrate a domain to another libvirt host")
    sub.add_argument("desturi", metavar="DESTURI",
                     help="the destination's libvirt URI, such as qemu+ssh://host/system")
    for option, (_, help_text) in FLAGS.items():
        sub.add_argument(option, action="store_true", help=help_text)
    sub.add_argument("--verbose", action="store_true", help="show the migration's progress")
    sub.add_argument("--dname", metavar="NAME", help="the domain's name on the destination")
    sub.add_argument("--xml", type=XML_FILE, metavar="FILE",
                     help="domain XML for the destination (ABI-compatible changes only)")
    sub.add_argument("--persistent-xml", type=XML_FILE, metavar="FILE",
                     help="the definition to store on the destination")
    sub.add_argument("--bandwidth", type=_non_negative, metavar="MiB/s", help="bandwidth limit")
    sub.add_argument("--migrateuri", metavar="URI", help="where the data goes (tcp://host:port)")
    sub.add_argument("--listen-address", metavar="ADDRESS",
                     help="the address the destination listens on")
    sub.add_argument("--graphicsuri", metavar="URI",
                     help="where graphics clients reconnect")
    sub.add_argument("--migrate-disks", type=lambda text: text.split(","),
                     metavar="DISK[,DISK]", help="with --copy-storage-*: only these disks")
    sub.add_argument("--disks-port", type=_non_negative, metavar="PORT",
                     help="the destination's NBD port")
    sub.add_argument("--comp-methods", type=lambda text: text.split(","),
                     metavar="METHOD[,METHOD]", help="with --compressed: xbzrle, mt, zlib, zstd")
    sub.add_argument("--parallel-connections", type=_non_negative, metavar="N",
                     help="with --parallel: how many")
    sub.add_argument("--tls-destination", metavar="HOST",
                     help="the host name the destination's certificate must have")
    for name, handler, summary in (
            ("migrate-getspeed", cmd_getspeed, "print a domain's migration bandwidth (MiB/s)"),
            ("migrate-setspeed", cmd_setspeed, "limit a domain's migration bandwidth")):
        sub = domains.add(name, handler, summary)
        if name == "migrate-setspeed":
            sub.add_argument("bandwidth", type=_non_negative, metavar="BANDWIDTH",
                             help="MiB/s")
        sub.add_argument("--postcopy", action="store_true", help="the post-copy phase's")
    domains.add("migrate-getmaxdowntime", cmd_getmaxdowntime,
                "print the longest pause a live migration may make (ms)")
    sub = domains.add("migrate-setmaxdowntime", cmd_setmaxdowntime,
                      "set the longest pause a live migration may make")
    sub.add_argument("downtime", type=_non_negative, metavar="DOWNTIME", help="milliseconds")
    sub = domains.add("migrate-compcache", cmd_compcache,
                      "print (or set) a domain's migration compression cache size")
    sub.add_argument("--size", type=parse_bytes, metavar="SIZE", help="such as 64M")
    domains.simple("migrate-postcopy", "StartDomainMigrationPostCopy",
                   pb.StartDomainMigrationPostCopyRequest,
                   "switches its migration to post-copy",
                   "switch a domain's running migration to post-copy")
    sub = domains.add("update-device", cmd_update_device,
                      "change a device in place (a CD-ROM's media, a link's state)")
    sub.add_argument("file", type=XML_FILE, help="device XML file, or - for stdin")
    _add_scope(sub)
    sub.add_argument("--force", action="store_true", help="force it (eject a locked tray)")
    sub = domains.add("detach-device-alias", cmd_detach_device_alias,
                      "detach the device with an alias (ua-..., net0)")
    sub.add_argument("alias", metavar="ALIAS", help="the device's alias")
    _add_scope(sub)
    sub = domains.add("qemu-agent-command", cmd_qemu_agent_command,
                      "send a command to the guest agent (unsupported: taints the domain)")
    sub.add_argument("cmd", nargs="+", metavar="JSON", help='such as {"execute":"guest-ping"}')
    sub.add_argument("--async", dest="async_", action="store_true",
                     help="do not wait for the answer")
    sub.add_argument("--pretty", action="store_true", help="indent the JSON answer")
    sub = domains.add("qemu-monitor-command", cmd_qemu_monitor_command,
                      "send a command to QEMU's monitor (unsupported: taints the domain)")
    sub.add_argument("cmd", nargs="+", metavar="CMD",
                     help='QMP JSON such as {"execute":"query-status"}, or HMP with --hmp')
    sub.add_argument("--hmp", action="store_true", help="a human monitor command line")
    sub.add_argument("--pretty", action="store_true", help="indent QMP's JSON answer")
    sub = command("qemu-monitor-event", cmd_qemu_monitor_event,
                  "print QEMU's monitor events as they happen")
    sub.add_argument("--domain", metavar="DOMAIN", help="only this domain's")
    sub.add_argument("--event", metavar="NAME", help="only events of this name (STOP, ...)")
    sub.add_argument("--count", type=int, metavar="N", help="stop after N events")
