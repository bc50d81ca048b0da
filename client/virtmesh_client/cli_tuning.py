"""Tuning a domain: virsh's schedinfo, memtune, blkiotune, numatune, domiftune, perf,
vcpupin, emulatorpin, iothreadinfo, iothreadadd, iothreaddel, iothreadpin, iothreadset,
setvcpu, vcpuinfo, domlaunchsecinfo, cpu-stats, metadata, desc and setmaxmem.

``--set NAME=VALUE`` (repeatable) changes libvirt's typed parameters: the command
reads them first and sends each value in the type libvirt gives its name, so a
number stays a number and a name the domain does not have is refused by the
service, which then changes none. CPU lists are virsh's: ``0,2-3``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.types.v1.typed_params_pb2 import TypedParameter
from virtmesh_client.cli_commands import CommandFactory, Commands
from virtmesh_client.cli_compute import DOMAIN
from virtmesh_client.cli_fleet import UsageError
from virtmesh_client.cli_output import Output, enum_name, fields, kib, parse_kib, table
from virtmesh_client.client import Client

_TRUE, _FALSE = ("1", "yes", "true", "on"), ("0", "no", "false", "off")
#: memtune's parameters that are sizes in KiB: a unit is accepted (``hard_limit=1G``)
MEMORY_SIZES = frozenset(("hard_limit", "soft_limit", "swap_hard_limit", "min_guarantee"))


def cpu_list(text: str) -> list[int]:
    """virsh's CPU list: ``0,2-3`` is [0, 2, 3]."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a CPU list such as 0,2-3") from None
    return sorted(cpus)


def cpu_text(cpus: Iterable[int]) -> str:
    """[0, 2, 3] as ``0,2-3``."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=VALUE")
    return name, value


def typed_parameter(name: str, text: str, current: Sequence[TypedParameter],
           sizes: frozenset[str] = frozenset()) -> TypedParameter:
    """``text`` in the field libvirt's current value of ``name`` has (a string for a
    name it lacks: the service says so); for a name of ``sizes``, KiB or a size with a
    unit."""
    field = next((p.WhichOneof("value") or "" for p in current if p.name == name),
                 "string_value")
    try:
        if field == "boolean_value":
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError(text)
            return TypedParameter(name=name, boolean_value=text.lower() in _TRUE)
        if field == "double_value":
            return TypedParameter(name=name, double_value=float(text))
        if field != "string_value":
            param = TypedParameter(name=name)
            sized = name in sizes and not text.lstrip("-").isdigit()
            setattr(param, field, parse_kib(text) if sized else int(text))
            return param
    except (ValueError, argparse.ArgumentTypeError):
        raise UsageError(f"{name}: '{text}' is not a "
                         f"{field.removesuffix('parameter_value')}") from None
    return TypedParameter(name=name, string_value=text)


def parameter_value(param: TypedParameter) -> object:
    value = getattr(param, param.WhichOneof("value") or "string_value")
    return ("yes" if value else "no") if isinstance(value, bool) else value


def _scope(args: argparse.Namespace) -> Any:
    return pb.Scope(live=args.live, config=args.config)


def _tune(getter: str, setter: str, what: str, sizes: frozenset[str] = frozenset()) -> Any:
    """A command that shows a domain's typed parameters of one kind, or changes those
    of ``--set`` (then shows them all)."""
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        def read(scope: Any) -> Any:
            return client.call(getter, getattr(pb, f"{getter}Request")(name=args.name,
                                                                       scope=scope))
        if args.set:
            # live and config are read as live (a getter takes one)
            current = read(pb.Scope(live=args.live, config=args.config and not args.live))
            changes = [typed_parameter(name, value, current.parameters, sizes)
                       for name, value in args.set]
            client.call(setter, getattr(pb, f"{setter}Request")(
                name=args.name, scope=_scope(args), parameters=changes))
        response = read(pb.Scope(live=args.live, config=args.config and not args.live))
        lines = [(p.name, parameter_value(p)) for p in response.parameters]
        if getattr(response, "scheduler", ""):
            lines.insert(0, ("Scheduler", response.scheduler))
        out.show(response, fields(lines) if lines else f"no {what} parameters")
    return handler


def cmd_perf(client: Client, args: argparse.Namespace, out: Output) -> None:
    changes = ([TypedParameter(name=e, boolean_value=True) for e in args.enable or ()]
               + [TypedParameter(name=e, boolean_value=False) for e in args.disable or ()])
    if changes:
        client.call("SetDomainPerfEvents", pb.SetDomainPerfEventsRequest(
            name=args.name, scope=_scope(args), parameters=changes))
    response = client.call("GetDomainPerfEvents", pb.GetDomainPerfEventsRequest(
        name=args.name, scope=pb.Scope(live=args.live, config=args.config and not args.live)))
    out.show(response, fields((p.name, "enabled" if p.boolean_value else "disabled")
                              for p in response.parameters))


def cmd_vcpupin(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.cpulist is not None:
        if args.vcpu is None:
            raise UsageError("vcpupin: give VCPU with CPULIST")
        response = client.call("PinDomainVcpu", pb.PinDomainVcpuRequest(
            name=args.name, vcpu=args.vcpu, cpus=args.cpulist, scope=_scope(args)))
        out.show(response, f"vCPU {args.vcpu} of domain '{args.name}' pinned to "
                           f"{cpu_text(args.cpulist)}")
        return
    pins = client.call("GetDomainVcpuPinInfo", pb.GetDomainVcpuPinInfoRequest(
        name=args.name, scope=_scope(args)))
    rows = [(vcpu, cpu_text(pin.cpus)) for vcpu, pin in enumerate(pins.vcpus)
            if args.vcpu is None or vcpu == args.vcpu]
    out.show(pins, table(("VCPU", "CPUS"), rows))


def cmd_emulatorpin(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.cpulist is not None:
        response = client.call("PinDomainEmulator", pb.PinDomainEmulatorRequest(
            name=args.name, cpus=args.cpulist, scope=_scope(args)))
        out.show(response, f"Emulator of domain '{args.name}' pinned to "
                           f"{cpu_text(args.cpulist)}")
        return
    pin = client.call("GetDomainEmulatorPinInfo", pb.GetDomainEmulatorPinInfoRequest(
        name=args.name, scope=_scope(args)))
    out.show(pin, f"emulator: {cpu_text(pin.affinity.cpus)}")


def cmd_iothreadinfo(client: Client, args: argparse.Namespace, out: Output) -> None:
    info = client.call("GetDomainIOThreadInfo", pb.GetDomainIOThreadInfoRequest(
        name=args.name, scope=_scope(args)))
    out.show(info, table(("ID", "AFFINITY"), ((t.id, cpu_text(t.affinity.cpus))
                                              for t in info.iothreads)))


def cmd_iothreadadd(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("AddDomainIOThread", pb.AddDomainIOThreadRequest(
        name=args.name, id=args.id, scope=_scope(args)))
    out.show(response, f"IOThread {args.id} added to domain '{args.name}'")


def cmd_iothreaddel(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DeleteDomainIOThread", pb.DeleteDomainIOThreadRequest(
        name=args.name, id=args.id, scope=_scope(args)))
    out.show(response, f"IOThread {args.id} deleted from domain '{args.name}'")


def cmd_iothreadpin(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("PinDomainIOThread", pb.PinDomainIOThreadRequest(
        name=args.name, id=args.id, cpus=args.cpulist, scope=_scope(args)))
    out.show(response, f"IOThread {args.id} of domain '{args.name}' pinned to "
                       f"{cpu_text(args.cpulist)}")


def cmd_vcpuinfo(client: Client, args: argparse.Namespace, out: Output) -> None:
    info = client.call("GetDomainVcpus", pb.GetDomainVcpusRequest(name=args.name))
    rows = ((v.number, enum_name(pb.VcpuState, v.state, "VCPU_STATE_"), v.cpu,
             f"{v.cpu_time_ns / 1e9:.1f}s", cpu_text(v.affinity.cpus)) for v in info.vcpus)
    out.show(info, table(("NUMBER", "STATE", "CPU", "CPU_TIME", "AFFINITY"), rows))


def cmd_cpu_stats(client: Client, args: argparse.Namespace, out: Output) -> None:
    stats = client.call("GetDomainCpuStats", pb.GetDomainCpuStatsRequest(
        name=args.name, start_cpu=args.start, cpu_count=args.count))
    blocks = [f"CPU{cpu.cpu}:\n" + fields((p.name, parameter_value(p)) for p in cpu.parameters)
              for cpu in stats.cpus]
    blocks.append("Total:\n" + fields((p.name, parameter_value(p)) for p in stats.total.parameters))
    out.show(stats, "\n".join(blocks))


def cmd_metadata(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.set is not None or args.remove:
        response = client.call("SetDomainMetadata", pb.SetDomainMetadataRequest(
            name=args.name, type=pb.METADATA_TYPE_ELEMENT, value=args.set or "",
            key=args.key or "", uri=args.uri, scope=_scope(args)))
        out.show(response, f"Metadata of domain '{args.name}' "
                           f"{'removed' if args.remove else 'changed'}")
        return
    response = client.call("GetDomainMetadata", pb.GetDomainMetadataRequest(
        name=args.name, type=pb.METADATA_TYPE_ELEMENT, uri=args.uri, scope=_scope(args)))
    out.show(response, response.value)


def cmd_desc(client: Client, args: argparse.Namespace, out: Output) -> None:
    kind = pb.METADATA_TYPE_TITLE if args.title else pb.METADATA_TYPE_DESCRIPTION
    if args.new_desc is not None:
        response = client.call("SetDomainMetadata", pb.SetDomainMetadataRequest(
            name=args.name, type=kind, value=args.new_desc, scope=_scope(args)))
        out.show(response, f"Domain '{args.name}' {'title' if args.title else 'description'}"
                           " updated")
        return
    response = client.call("GetDomainMetadata", pb.GetDomainMetadataRequest(
        name=args.name, type=kind, scope=_scope(args)))
    out.show(response, response.value)


def kib_size(text: str) -> int:
    """KiB, as virsh's setmaxmem takes: a plain number is KiB, ``1G`` is 1048576."""
    return parse_kib(text)


def cmd_setmaxmem(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainMemory", pb.SetDomainMemoryRequest(
        name=args.name, memory_kib=args.size, scope=_scope(args), maximum=True))
    out.show(response, f"Domain '{args.name}' maximum memory set to {kib(args.size)}")


def cmd_domiftune(client: Client, args: argparse.Namespace, out: Output) -> None:
    scope = pb.Scope(live=args.live, config=args.config and not args.live)

    def read() -> Any:
        return client.call("GetDomainInterfaceParameters", pb.GetDomainInterfaceParametersRequest(
            name=args.name, device=args.device, scope=scope))
    if args.set:
        current = read().parameters
        client.call("SetDomainInterfaceParameters", pb.SetDomainInterfaceParametersRequest(
            name=args.name, device=args.device, scope=_scope(args),
            parameters=[typed_parameter(name, value, current) for name, value in args.set]))
    response = read()
    out.show(response, fields((p.name, parameter_value(p)) for p in response.parameters))


def cmd_iothreadset(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainIOThreadParameters", pb.SetDomainIOThreadParametersRequest(
        name=args.name, id=args.id, scope=_scope(args),
        parameters=[TypedParameter(name=name, long_value=_integer(name, value))
                    for name, value in args.set]))
    out.show(response, f"IOThread {args.id} of domain '{args.name}' changed")


def _integer(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}: '{text}' is not a number") from None


def cmd_setvcpu(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainVcpu", pb.SetDomainVcpuRequest(
        name=args.name, vcpus=args.vcpulist, enable=not args.disable, scope=_scope(args)))
    out.show(response, f"vCPUs {cpu_text(args.vcpulist)} of domain '{args.name}' "
                       f"{'disabled' if args.disable else 'enabled'}")


def cmd_domlaunchsecinfo(client: Client, args: argparse.Namespace, out: Output) -> None:
    info = client.call("GetDomainLaunchSecurityInfo",
                       pb.GetDomainLaunchSecurityInfoRequest(name=args.name))
    out.show(info, fields((p.name, parameter_value(p)) for p in info.parameters))


def _add_scope(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--live", action="store_true", help="the running domain")
    sub.add_argument("--config", action="store_true", help="the persistent config")


def register(command: CommandFactory) -> None:
    domains = Commands(command, DOMAIN)
    for name, kind, what in (("schedinfo", "SchedulerParameters", "scheduler"),
                             ("memtune", "MemoryParameters", "memory"),
                             ("blkiotune", "BlkioParameters", "block I/O"),
                             ("numatune", "NumaParameters", "NUMA")):
        sizes = MEMORY_SIZES if name == "memtune" else frozenset()
        sub = domains.add(name, _tune(f"GetDomain{kind}", f"SetDomain{kind}", what, sizes),
                          f"show or change a domain's {what} parameters")
        sub.add_argument("--set", type=assignment, action="append", metavar="NAME=VALUE",
                         help="change a parameter (repeatable)")
        _add_scope(sub)
    sub = domains.add("perf", cmd_perf, "show, enable or disable a domain's perf events")
    sub.add_argument("--enable", type=lambda t: t.split(","), metavar="EVENTS",
                     help="comma-separated events to enable")
    sub.add_argument("--disable", type=lambda t: t.split(","), metavar="EVENTS",
                     help="comma-separated events to disable")
    _add_scope(sub)
    sub = domains.add("vcpupin", cmd_vcpupin, "show or change vCPU pinning")
    sub.add_argument("vcpu", type=int, nargs="?", metavar="VCPU")
    sub.add_argument("cpulist", type=cpu_list, nargs="?", metavar="CPULIST",
                     help="host CPUs, such as 0,2-3")
    _add_scope(sub)
    sub = domains.add("emulatorpin", cmd_emulatorpin, "show or change emulator pinning")
    sub.add_argument("cpulist", type=cpu_list, nargs="?", metavar="CPULIST")
    _add_scope(sub)
    sub = domains.add("iothreadinfo", cmd_iothreadinfo, "list a domain's IOThreads")
    _add_scope(sub)
    for name, handler, summary in (("iothreadadd", cmd_iothreadadd, "add an IOThread"),
                                   ("iothreaddel", cmd_iothreaddel, "delete an IOThread")):
        sub = domains.add(name, handler, summary)
        sub.add_argument("id", type=int, metavar="ID")
        _add_scope(sub)
    sub = domains.add("iothreadpin", cmd_iothreadpin, "pin an IOThread to host CPUs")
    sub.add_argument("id", type=int, metavar="ID")
    sub.add_argument("cpulist", type=cpu_list, metavar="CPULIST")
    _add_scope(sub)
    domains.add("vcpuinfo", cmd_vcpuinfo, "show a running domain's vCPUs")
    domains.add("domlaunchsecinfo", cmd_domlaunchsecinfo,
                "show a running SEV guest's launch measurement")
    sub = domains.add("cpu-stats", cmd_cpu_stats, "show a running domain's CPU time")
    sub.add_argument("--start", type=int, default=0, help="first host CPU")
    sub.add_argument("--count", type=int, default=0, help="host CPUs to show (0: total only)")
    sub = domains.add("metadata", cmd_metadata, "show or change one metadata element")
    sub.add_argument("uri", metavar="URI", help="the element's namespace")
    sub.add_argument("--prefix", dest="key",
                     help="the namespace's prefix, virsh's --key (with --set)")
    change = sub.add_mutually_exclusive_group()
    change.add_argument("--set", metavar="XML", help="the new element")
    change.add_argument("--remove", action="store_true", help="remove the element")
    _add_scope(sub)
    sub = domains.add("desc", cmd_desc, "show or change a domain's description or title")
    sub.add_argument("--title", action="store_true", help="the title, not the description")
    sub.add_argument("--new-desc", metavar="TEXT", help="the new text (empty removes it)")
    _add_scope(sub)
    sub = domains.add("setmaxmem", cmd_setmaxmem, "change a domain's maximum memory")
    sub.add_argument("size", type=kib_size, metavar="SIZE",
                     help="KiB, or with a unit: 512M, 2G")
    _add_scope(sub)
    sub = domains.add("domiftune", cmd_domiftune,
                      "show or change an interface's bandwidth parameters")
    sub.add_argument("device", metavar="DEVICE", help="the interface's target or MAC")
    sub.add_argument("--set", type=assignment, action="append", metavar="NAME=VALUE",
                     help="change a parameter, such as inbound.average=1000 (repeatable)")
    _add_scope(sub)
    sub = domains.add("iothreadset", cmd_iothreadset, "change an IOThread's parameters")
    sub.add_argument("id", type=int, metavar="ID")
    sub.add_argument("--set", type=assignment, action="append", metavar="NAME=VALUE",
                     required=True, help="such as poll_max_ns=32768 (repeatable)")
    _add_scope(sub)
    sub = domains.add("setvcpu", cmd_setvcpu, "enable or disable individual vCPUs")
    sub.add_argument("vcpulist", type=cpu_list, metavar="VCPULIST", help="such as 1,3-4")
    state = sub.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true", help="enable them (the default)")
    state.add_argument("--disable", action="store_true", help="disable them")
    _add_scope(sub)
