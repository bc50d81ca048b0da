"""Host commands: virsh's cpu-baseline, cpu-compare, cpu-models, sysinfo, hostname,
maxvcpus, nodecpustats, nodememstats, nodecpumap, nodesevinfo, freecell, freepages,
allocpages, node-memory-tune, nodesuspend, domxml-from-native and domxml-to-native.

As virsh does, cpu-baseline and cpu-compare read every ``<cpu>`` element of their file:
capabilities XML (its host CPU), domain XML, or several of either one after another.
Page sizes are KiB unless a unit is given (``2M``, ``1G``), as virsh takes them.
"""

from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_commands import XML_FILE, CommandFactory, enum_choices
from virtmesh_client.cli_fleet import Query, UsageError
from virtmesh_client.cli_output import (
    Output,
    byte_size,
    fields,
    kib,
    read_input,
    table,
    yes,
)
from virtmesh_client.cli_output import parse_bytes as byte_count
from virtmesh_client.client import Client

SUSPEND_TARGETS = enum_choices(pb.NodeSuspendTarget, "NODE_SUSPEND_TARGET_")
NATIVE_FORMATS = enum_choices(pb.NativeConfigFormat, "NATIVE_CONFIG_FORMAT_", "-")
_XML_DECLARATION = re.compile(r"<\?xml[^>]*\?>")


def cpu_elements(text: str) -> list[str]:
    """The CPU descriptions of a file holding one or more XML documents: a <cpu>
    document, a domain's <cpu>, capabilities' <host><cpu> (not the <cpu> entries of
    its NUMA topology, deeper down), as virsh finds them."""
    try:
        root = ET.fromstring(f"<documents>{_XML_DECLARATION.sub('', text)}</documents>")
    except ET.ParseError as error:
        raise argparse.ArgumentTypeError(f"not XML: {error}") from None
    found = [ET.tostring(cpu, encoding="unicode").strip() for cpu in _cpus_within(root, 3)]
    if not found:
        raise argparse.ArgumentTypeError("no <cpu> element in the file")
    return found


def _cpus_within(element: ET.Element, depth: int) -> Iterator[ET.Element]:
    """The <cpu> elements at most ``depth`` levels below ``element``, in document order."""
    for child in element:
        if child.tag == "cpu":
            yield child
        elif depth > 1:
            yield from _cpus_within(child, depth - 1)


def page_size_kib(text: str) -> int:
    """A page size: KiB without a unit (``2048``), or with one (``2M``, ``1G``)."""
    if text.isdigit():
        return int(text)
    size = byte_count(text)
    if size % 1024:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of KiB")
    return size // 1024


def _cpus(args: argparse.Namespace) -> list[str]:
    try:
        return cpu_elements(read_input(args.file))
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"{args.file.name}: {error}") from None


def _hypervisor(args: argparse.Namespace) -> dict[str, Any]:
    return {"emulator": args.emulator, "arch": args.arch, "machine": args.machine,
            "virt_type": args.virttype}


def cmd_cpu_baseline(client: Client, args: argparse.Namespace, out: Output) -> None:
    flags: dict[str, Any] = {"xml_cpus": _cpus(args), "expand_features": args.features,
             "migratable": args.migratable}
    response = (client.call("BaselineHypervisorCpu", pb.BaselineHypervisorCpuRequest(
        **flags, **_hypervisor(args))) if args.hypervisor else
        client.call("BaselineCpu", pb.BaselineCpuRequest(**flags)))
    out.show(response, response.xml.rstrip("\n"))


_COMPARED = {pb.CPU_COMPARE_RESULT_IDENTICAL: "identical to",
             pb.CPU_COMPARE_RESULT_SUPERSET: "a subset of",
             pb.CPU_COMPARE_RESULT_INCOMPATIBLE: "incompatible with"}


def cmd_cpu_compare(client: Client, args: argparse.Namespace, out: Output) -> None:
    flags: dict[str, Any] = {"xml": _cpus(args)[0], "fail_incompatible": args.error,
                             "validate": args.validate}
    response = (client.call("CompareHypervisorCpu", pb.CompareHypervisorCpuRequest(
        **flags, **_hypervisor(args))) if args.hypervisor else
        client.call("CompareCpu", pb.CompareCpuRequest(**flags)))
    host = "the CPU the hypervisor provides" if args.hypervisor else "the host CPU"
    relation = _COMPARED.get(response.result, "of unknown relation to")
    out.show(response, f"CPU described in {args.file.name} is {relation} {host}")


def cmd_cpu_models(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetCpuModelNames", pb.GetCpuModelNamesRequest(arch=args.arch))
    out.show(response, "\n".join(response.models))


def cmd_sysinfo(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetSysinfo", pb.GetSysinfoRequest())
    out.show(response, response.xml.rstrip("\n"))


def cmd_hostname(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetHostname", pb.GetHostnameRequest())
    out.show(response, response.hostname)


def cmd_maxvcpus(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetMaxVcpus", pb.GetMaxVcpusRequest(virt_type=args.type))
    out.show(response, str(response.max_vcpus))


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.2f} s"


cmd_nodecpustats = Query(
    lambda client, args: client.call("GetNodeCpuStats", pb.GetNodeCpuStatsRequest(cpu=args.cpu)),
    ("Kernel", "User", "Idle", "I/O wait", "Interrupts"),
    lambda s: (_seconds(s.kernel_ns), _seconds(s.user_ns), _seconds(s.idle_ns),
               _seconds(s.iowait_ns), _seconds(s.intr_ns)),
    columns=("KERNEL", "USER", "IDLE", "IOWAIT", "INTR"))

cmd_nodememstats = Query(
    lambda client, args: client.call("GetNodeMemoryStats",
                                     pb.GetNodeMemoryStatsRequest(cell=args.cell)),
    ("Total", "Free", "Buffers", "Cached"),
    lambda s: (kib(s.total_kib), kib(s.free_kib), kib(s.buffers_kib), kib(s.cached_kib)))

cmd_nodecpumap = Query(
    lambda client, args: client.call("GetNodeCpuMap", pb.GetNodeCpuMapRequest()),
    ("CPUs present", "CPUs online", "CPU map"),
    lambda m: (m.cpus, len(m.online),
               "".join("y" if cpu in set(m.online) else "-" for cpu in range(m.cpus))),
    columns=("CPUS", "ONLINE", "ONLINE"))

cmd_nodesevinfo = Query(
    lambda client, args: client.call("GetNodeSevInfo", pb.GetNodeSevInfoRequest()),
    ("C-bit position", "Reduced physical bits", "Max guests", "Max ES guests"),
    lambda s: (s.cbitpos, s.reduced_phys_bits, s.max_guests, s.max_es_guests),
    columns=("CBITPOS", "REDUCED_PHYS_BITS", "MAX_GUESTS", "MAX_ES_GUESTS"))


def cmd_freecell(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.cellno is None and not args.all:
        total = client.call("GetNodeFreeMemory", pb.GetNodeFreeMemoryRequest())
        out.show(total, f"Total: {byte_size(total.free_bytes)}")
        return
    response = client.call("GetCellsFreeMemory", pb.GetCellsFreeMemoryRequest(
        start_cell=args.cellno or 0, max_cells=0 if args.all else 1))
    out.show(response, table(("CELL", "FREE"), (
        (cell.cell, byte_size(cell.free_bytes)) for cell in response.cells)))


def cmd_freepages(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetNodeFreePages", pb.GetNodeFreePagesRequest(
        page_sizes_kib=[args.pagesize] if args.pagesize else [], start_cell=args.cellno or 0,
        cell_count=0 if args.all or args.cellno is None else 1))
    out.show(response, table(("CELL", "PAGES_PAGE_SIZE", "PAGES_COUNT"), (
        (cell.cell, kib(page.page_size_kib), page.count)
        for cell in response.cells for page in cell.pages)))


def cmd_allocpages(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("AllocNodePages", pb.AllocNodePagesRequest(
        pages=[pb.PageCount(page_size_kib=args.pagesize, count=args.pagecount)],
        start_cell=args.cellno or 0, cell_count=0 if args.cellno is None else 1,
        mode=pb.PAGE_ALLOCATION_MODE_ADD if args.add else pb.PAGE_ALLOCATION_MODE_SET))
    how = "added to" if args.add else "set in"
    out.show(response, f"{args.pagecount} pages of {kib(args.pagesize)} {how} "
                       f"{response.cells_changed} cell(s)")


_MEMORY_TUNABLES = ("shm_pages_to_scan", "shm_sleep_millisecs", "shm_merge_across_nodes")


def _memory_parameters(p: Any) -> str:
    return fields([*((name, getattr(p, name)) for name in (
        "shm_pages_to_scan", "shm_sleep_millisecs", "shm_pages_shared", "shm_pages_sharing",
        "shm_pages_unshared", "shm_pages_volatile", "shm_full_scans")),
        ("shm_merge_across_nodes", yes(p.shm_merge_across_nodes))])


def cmd_node_memory_tune(client: Client, args: argparse.Namespace, out: Output) -> None:
    changes = {name: getattr(args, name) for name in _MEMORY_TUNABLES
               if getattr(args, name) is not None}
    response = (client.call("SetNodeMemoryParameters", pb.SetNodeMemoryParametersRequest(
        **changes)) if changes else
        client.call("GetNodeMemoryParameters", pb.GetNodeMemoryParametersRequest()))
    out.show(response, _memory_parameters(response.parameters))


def cmd_nodesuspend(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SuspendNode", pb.SuspendNodeRequest(
        target=SUSPEND_TARGETS[args.target], duration_seconds=args.duration))
    out.show(response, f"The host is suspended to {args.target} for {args.duration} s")


def cmd_domxml_from_native(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("ConvertNativeToDomainXML", pb.ConvertNativeToDomainXMLRequest(
        format=NATIVE_FORMATS[args.format], config=read_input(args.file)))
    out.show(response, response.xml.rstrip("\n"))


def cmd_domxml_to_native(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("ConvertDomainXMLToNative", pb.ConvertDomainXMLToNativeRequest(
        format=NATIVE_FORMATS[args.format], xml=read_input(args.file)))
    out.show(response, response.config.rstrip("\n"))


def _cpu_command(command: CommandFactory, name: str, handler: Any, summary: str,
                 hypervisor: bool) -> argparse.ArgumentParser:
    sub = command(name, handler, summary)
    sub.add_argument("file", type=XML_FILE, metavar="FILE",
                     help="XML holding <cpu> elements (capabilities, domain XML), or -")
    sub.set_defaults(hypervisor=hypervisor)
    if hypervisor:
        for option, help_text in (("--emulator", "emulator binary path"),
                                  ("--arch", "architecture, e.g. x86_64"),
                                  ("--machine", "machine type, e.g. q35"),
                                  ("--virttype", "kvm or qemu")):
            sub.add_argument(option, default="", help=help_text)
    return sub


def _cell_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--cellno", type=int, metavar="N", help="only NUMA cell N")
    sub.add_argument("--all", action="store_true", help="every NUMA cell (the default)")


def register(command: CommandFactory) -> None:
    for prefix, hypervisor in (("", False), ("hypervisor-", True)):
        what = "the hypervisor's" if hypervisor else "the host's"
        sub = _cpu_command(command, f"{prefix}cpu-baseline", cmd_cpu_baseline,
                           f"the best CPU model all given CPUs run ({what} view)", hypervisor)
        sub.add_argument("--features", action="store_true", help="list every feature")
        sub.add_argument("--migratable", action="store_true",
                         help="leave out features that block migration")
        sub = _cpu_command(command, f"{prefix}cpu-compare", cmd_cpu_compare,
                           f"compare a CPU with {what} CPU", hypervisor)
        sub.add_argument("--error", action="store_true",
                         help="an incompatible CPU is an error")
        sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    sub = command("cpu-models", cmd_cpu_models, "list the CPU models of an architecture")
    sub.add_argument("arch", metavar="ARCH", help="architecture, e.g. x86_64")
    command("sysinfo", cmd_sysinfo, "print the host's SMBIOS information as XML")
    command("hostname", cmd_hostname, "print the host's name")
    sub = command("maxvcpus", cmd_maxvcpus, "the most vCPUs a guest may have")
    sub.add_argument("--type", default="", help="virtualization type, kvm or qemu")
    sub = command("nodecpustats", cmd_nodecpustats, "show the host's CPU times")
    sub.add_argument("--cpu", type=int, metavar="N", help="only CPU N")
    sub = command("nodememstats", cmd_nodememstats, "show the host's memory")
    sub.add_argument("--cell", type=int, metavar="N", help="only NUMA cell N")
    command("nodecpumap", cmd_nodecpumap, "show which of the host's CPUs are online")
    command("nodesevinfo", cmd_nodesevinfo, "show the host's AMD SEV data")
    sub = command("freecell", cmd_freecell, "show free memory, of the host or NUMA cells")
    _cell_options(sub)
    sub = command("freepages", cmd_freepages, "show free pages of each size in NUMA cells")
    _cell_options(sub)
    sub.add_argument("--pagesize", type=page_size_kib, metavar="SIZE",
                     help="only pages of SIZE (KiB, or with a unit: 2M, 1G)")
    sub = command("allocpages", cmd_allocpages, "set or grow the host's huge page pools")
    sub.add_argument("pagesize", type=page_size_kib, metavar="PAGESIZE",
                     help="page size (KiB, or with a unit: 2M, 1G)")
    sub.add_argument("pagecount", type=int, metavar="PAGECOUNT", help="number of pages")
    sub.add_argument("--cellno", type=int, metavar="N", help="only NUMA cell N (default: all)")
    sub.add_argument("--add", action="store_true",
                     help="add the pages to the pool instead of setting its size")
    sub = command("node-memory-tune", cmd_node_memory_tune,
                  "show or change the kernel's same-page merging (KSM)")
    sub.add_argument("--shm-pages-to-scan", type=int, metavar="N",
                     help="pages to scan before KSM sleeps")
    sub.add_argument("--shm-sleep-millisecs", type=int, metavar="MS",
                     help="milliseconds KSM sleeps between scans")
    sub.add_argument("--shm-merge-across-nodes", type=lambda text: bool(int(text)),
                     metavar="0|1", help="whether pages of different NUMA cells may merge")
    sub = command("nodesuspend", cmd_nodesuspend,
                  "suspend the host for a time (refused unless the service allows it)")
    sub.add_argument("target", choices=sorted(SUSPEND_TARGETS), help="sleep state")
    sub.add_argument("duration", type=int, metavar="SECONDS", help="at least 60")
    for name, handler, summary, what in (
            ("domxml-from-native", cmd_domxml_from_native,
             "domain XML from a native configuration", "native configuration file"),
            ("domxml-to-native", cmd_domxml_to_native,
             "the native configuration of domain XML", "domain XML file")):
        sub = command(name, handler, summary)
        sub.add_argument("format", choices=sorted(NATIVE_FORMATS), help="native format")
        sub.add_argument("file", type=XML_FILE, metavar="FILE", help=f"{what}, or -")
