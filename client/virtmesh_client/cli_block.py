"""Disks, interfaces and block jobs: virsh's domblklist, domiflist, domblkinfo,
domblkstat, domifstat, dommemstat, blockresize, blockpeek, blkdeviotune, blockcopy,
blockcommit, blockpull, blockjob and domblkthreshold.

domblklist and domiflist read the domain XML (GetDomainXML). Sizes and bandwidths
take units: 10G, 512K; a bandwidth is bytes per second (virsh's default unit is
MiB/s: say 10M for that). blockcopy, blockcommit and blockpull start a job and return;
with ``--wait`` they follow it (GetDomainBlockJobInfo), with ``--verbose`` drawing a
progress bar, and a copy or active commit then ends with ``--pivot`` (the guest
switches to the new image) or ``--finish``/``--keep-overlay`` (it stays). Ctrl-C
while waiting aborts the job, as virsh does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.types.v1.typed_params_pb2 import TypedParameter
from virtmesh_client.cli_commands import XML_FILE, CommandFactory, Commands
from virtmesh_client.cli_compute import DOMAIN
from virtmesh_client.cli_fleet import UsageError
from virtmesh_client.cli_jobs import POLL, bar
from virtmesh_client.cli_output import (
    Output,
    byte_size,
    enum_name,
    fields,
    parse_bytes,
    read_input,
    table,
    to_dict,
)
from virtmesh_client.cli_tuning import assignment, parameter_value, typed_parameter
from virtmesh_client.client import Client, ClientError

#: blkdeviotune's named options: virsh's, each a typed parameter of libvirt's
IOTUNE_OPTIONS = ("total_bytes_sec", "read_bytes_sec", "write_bytes_sec", "total_iops_sec",
                  "read_iops_sec", "write_iops_sec", "total_bytes_sec_max",
                  "read_bytes_sec_max", "write_bytes_sec_max", "total_iops_sec_max",
                  "read_iops_sec_max", "write_iops_sec_max", "size_iops_sec")


# -- the domain XML's devices --------------------------------------------------------


def _devices(client: Client, name: str, inactive: bool) -> ET.Element:
    """The <devices> of the domain's XML. The document is libvirt's (no DTD, no
    entities: the service's own writer); a missing element is an empty list."""
    xml = client.call("GetDomainXML", pb.GetDomainXMLRequest(name=name, inactive=inactive)).xml
    devices = ET.fromstring(xml).find("devices")
    return devices if devices is not None else ET.Element("devices")


def _source(element: ET.Element) -> str:
    source = element.find("source")
    if source is None:
        return "-"
    for attribute in ("file", "dev", "dir", "name", "volume", "network", "bridge"):
        if source.get(attribute):
            return source.get(attribute, "")
    return "-"


def disks(client: Client, name: str, inactive: bool = False) -> list[dict[str, str]]:
    return [{"target": disk.find("target").get("dev", "")  # type: ignore[union-attr]
             if disk.find("target") is not None else "",
             "source": _source(disk), "type": disk.get("type", ""),
             "device": disk.get("device", "disk")}
            for disk in _devices(client, name, inactive).findall("disk")]


def interfaces(client: Client, name: str, inactive: bool = False) -> list[dict[str, str]]:
    found = []
    for iface in _devices(client, name, inactive).findall("interface"):
        target, model, mac = iface.find("target"), iface.find("model"), iface.find("mac")
        found.append({"interface": target.get("dev", "-") if target is not None else "-",
                      "type": iface.get("type", ""), "source": _source(iface),
                      "model": model.get("type", "-") if model is not None else "-",
                      "mac": mac.get("address", "") if mac is not None else ""})
    return found


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cmd_domblklist(client: Client, args: argparse.Namespace, out: Output) -> None:
    found = disks(client, args.name, args.inactive)
    if out.json:
        _print_json({"disks": found})
    elif args.details:
        print(table(("Type", "Device", "Target", "Source"),
                    [(d["type"], d["device"], d["target"], d["source"]) for d in found]))
    else:
        print(table(("Target", "Source"), [(d["target"], d["source"]) for d in found]))


def cmd_domiflist(client: Client, args: argparse.Namespace, out: Output) -> None:
    found = interfaces(client, args.name, args.inactive)
    if out.json:
        _print_json({"interfaces": found})
    else:
        print(table(("Interface", "Type", "Source", "Model", "MAC"),
                    [(i["interface"], i["type"], i["source"], i["model"], i["mac"])
                     for i in found]))


# -- sizes and statistics ----------------------------------------------------------


def _size(count: int, human: bool) -> str:
    return byte_size(count) if human else str(count)


def cmd_domblkinfo(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.all == bool(args.device):
        raise UsageError("domblkinfo: give DEVICE or --all")
    targets = [d["target"] for d in disks(client, args.name)] if args.all else [args.device]
    infos = [(target, client.call("GetDomainBlockInfo", pb.GetDomainBlockInfoRequest(
        name=args.name, disk=target))) for target in targets]
    if out.json:
        _print_json({"disks": [{"target": target, **to_dict(info)} for target, info in infos]})
    elif args.all:
        print(table(("Target", "Capacity", "Allocation", "Physical"),
                    [(target, _size(i.capacity_bytes, args.human),
                      _size(i.allocation_bytes, args.human), _size(i.physical_bytes, args.human))
                     for target, i in infos]))
    else:
        info = infos[0][1]
        print(fields((("Capacity", _size(info.capacity_bytes, args.human)),
                      ("Allocation", _size(info.allocation_bytes, args.human)),
                      ("Physical", _size(info.physical_bytes, args.human)))))


def cmd_domblkstat(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainBlockStats", pb.GetDomainBlockStatsRequest(
        name=args.name, disk=args.device or ""))
    out.show(response, "\n".join(f"{args.device or ''} {p.name} {parameter_value(p)}".lstrip()
                                 for p in response.parameters))


def cmd_domifstat(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainInterfaceStats", pb.GetDomainInterfaceStatsRequest(
        name=args.name, device=args.interface))
    out.show(response, "\n".join(
        f"{args.interface} {field.name} {getattr(response, field.name)}"
        for field in response.DESCRIPTOR.fields if getattr(response, field.name) >= 0))


def cmd_dommemstat(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainMemoryStats", pb.GetDomainMemoryStatsRequest(
        name=args.name))
    out.show(response, "\n".join(
        f"{s.name or enum_name(pb.MemoryStatTag, s.tag, 'MEMORY_STAT_TAG_')} {s.value}"
        for s in response.stats))


def cmd_blockresize(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("ResizeDomainBlock", pb.ResizeDomainBlockRequest(
        name=args.name, disk=args.path, size_bytes=args.size, shrink=args.shrink))
    out.show(response, f"Block device '{args.path}' is resized")


def hexdump(data: bytes, offset: int) -> str:
    lines = []
    for start in range(0, len(data), 16):
        chunk = data[start:start + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset + start:08x}  {chunk.hex(' '):<47}  |{text}|")
    return "\n".join(lines)


def cmd_blockpeek(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("PeekDomainBlock", pb.PeekDomainBlockRequest(
        name=args.name, disk=args.disk, offset=args.offset, size=args.size))
    if args.raw and not out.json:
        sys.stdout.buffer.write(response.data)
        sys.stdout.flush()
        return
    out.show(response, hexdump(response.data, args.offset))


def cmd_blkdeviotune(client: Client, args: argparse.Namespace, out: Output) -> None:
    def read() -> Any:
        return client.call("GetDomainBlockIoTune", pb.GetDomainBlockIoTuneRequest(
            name=args.name, disk=args.device,
            scope=pb.Scope(live=args.live, config=args.config and not args.live)))
    wanted: list[tuple[str, str]] = list(args.set or ())
    wanted += [(option, str(getattr(args, option))) for option in IOTUNE_OPTIONS
               if getattr(args, option) is not None]
    if args.group_name is not None:
        wanted.append(("group_name", args.group_name))
    if wanted:
        current = read().parameters
        changes: list[TypedParameter] = [typed_parameter(name, value, current)
                                         for name, value in wanted]
        client.call("SetDomainBlockIoTune", pb.SetDomainBlockIoTuneRequest(
            name=args.name, disk=args.device, parameters=changes,
            scope=pb.Scope(live=args.live, config=args.config)))
    response = read()
    out.show(response, fields((p.name, parameter_value(p)) for p in response.parameters))


def cmd_domblkthreshold(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainBlockThreshold", pb.SetDomainBlockThresholdRequest(
        name=args.name, disk=args.dev, threshold_bytes=args.threshold))
    out.show(response, f"Threshold of '{args.dev}' set to {args.threshold} bytes"
             if args.threshold else f"Threshold of '{args.dev}' cleared")


# -- block jobs -----------------------------------------------------------------------


def job_name(info: Any) -> str:
    return {pb.BLOCK_JOB_TYPE_PULL: "Block Pull", pb.BLOCK_JOB_TYPE_COPY: "Block Copy",
            pb.BLOCK_JOB_TYPE_COMMIT: "Block Commit",
            pb.BLOCK_JOB_TYPE_ACTIVE_COMMIT: "Active Block Commit"}.get(
        info.type, enum_name(pb.BlockJobType, info.type, "BLOCK_JOB_TYPE_"))


def progress_line(info: Any) -> str:
    """virsh's ``Block Copy: [ 42 %]`` with a bar."""
    return f"{job_name(info)}: {bar(100.0 * info.cur / info.end if info.end else 0.0)}"


def job_info(client: Client, name: str, disk: str) -> Any:
    return client.call("GetDomainBlockJobInfo",
                       pb.GetDomainBlockJobInfoRequest(name=name, disk=disk))


def wait_for_job(client: Client, args: argparse.Namespace, until_ready: bool) -> Any:
    """Follow the disk's job until it is ready (a copy, an active commit: cur == end) or
    gone (a pull, a commit: done); its last state. Ctrl-C and --timeout abort it."""
    deadline = time.monotonic() + args.job_timeout if args.job_timeout else None
    last = None
    try:
        while True:
            info = job_info(client, args.name, args.path)
            if not info.active:
                if until_ready:
                    raise ClientError("FAILED_PRECONDITION",
                                      f"the block job of '{args.path}' ended before it "
                                      "was ready (failed or cancelled)")
                break
            last = info
            if args.verbose and not args.json:
                print(f"\r{progress_line(info)}", end="", file=sys.stderr, flush=True)
            if until_ready and info.end and info.cur == info.end:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(POLL)
    except (KeyboardInterrupt, TimeoutError):
        client.call("AbortDomainBlockJob",
                    pb.AbortDomainBlockJobRequest(name=args.name, disk=args.path))
        raise ClientError("CANCELLED", f"the block job of '{args.path}' was aborted") from None
    finally:
        if args.verbose and not args.json:
            print(file=sys.stderr)
    return last


def _bandwidth(args: argparse.Namespace) -> int:
    return args.bandwidth or 0


def _end_job(client: Client, args: argparse.Namespace, out: Output, what: str,
             until_ready: bool, pivot: bool, finish: bool) -> None:
    """After a job started: return, or wait for it and end it as asked."""
    if not args.wait:
        info = job_info(client, args.name, args.path)
        out.show(info, f"{what} started")
        return
    info = wait_for_job(client, args, until_ready)
    if not until_ready:
        out.show(pb.GetDomainBlockJobInfoResponse(), f"{what} done")
        return
    if pivot or finish:
        client.call("AbortDomainBlockJob", pb.AbortDomainBlockJobRequest(
            name=args.name, disk=args.path, pivot=pivot))
        out.show(info, "Successfully pivoted" if pivot else f"{what} finished, "
                 "the guest keeps its disk")
        return
    out.show(info, "Now in mirroring phase")


def cmd_blockcopy(client: Client, args: argparse.Namespace, out: Output) -> None:
    if bool(args.dest) == bool(args.xml):
        raise UsageError("blockcopy: give --dest PATH or --xml FILE")
    if (args.pivot or args.finish) and not args.wait:
        raise UsageError("blockcopy: --pivot and --finish need --wait")
    request = pb.CopyDomainBlockRequest(
        name=args.name, disk=args.path, bandwidth_bytes=_bandwidth(args),
        shallow=args.shallow, reuse_external=args.reuse_external,
        transient_job=args.transient_job, synchronous_writes=args.synchronous_writes)
    if args.xml:
        request.destination_xml = read_input(args.xml)
    else:
        request.destination_file.path = args.dest
        request.destination_file.format = args.format or ""
    client.call("CopyDomainBlock", request)
    _end_job(client, args, out, "Block Copy", True, args.pivot, args.finish)


def cmd_blockcommit(client: Client, args: argparse.Namespace, out: Output) -> None:
    if (args.pivot or args.keep_overlay) and not (args.active and args.wait):
        raise UsageError("blockcommit: --pivot and --keep-overlay need --active and --wait")
    client.call("CommitDomainBlock", pb.CommitDomainBlockRequest(
        name=args.name, disk=args.path, base=args.base or "", top=args.top or "",
        bandwidth_bytes=_bandwidth(args), active=args.active, shallow=args.shallow,
        delete=args.delete))
    _end_job(client, args, out, "Block Commit", args.active, args.pivot, args.keep_overlay)


def cmd_blockpull(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.base:
        client.call("RebaseDomainBlock", pb.RebaseDomainBlockRequest(
            name=args.name, disk=args.path, base=args.base, bandwidth_bytes=_bandwidth(args)))
    else:
        client.call("PullDomainBlock", pb.PullDomainBlockRequest(
            name=args.name, disk=args.path, bandwidth_bytes=_bandwidth(args)))
    _end_job(client, args, out, "Block Pull", False, False, False)


def cmd_blockjob(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.abort or args.pivot:
        response = client.call("AbortDomainBlockJob", pb.AbortDomainBlockJobRequest(
            name=args.name, disk=args.path, asynchronous=args.asynchronous,
            pivot=args.pivot))
        out.show(response, "Pivoted" if args.pivot else "Block job aborted")
        return
    if args.bandwidth is not None:
        response = client.call("SetDomainBlockJobSpeed", pb.SetDomainBlockJobSpeedRequest(
            name=args.name, disk=args.path, bandwidth_bytes=args.bandwidth))
        out.show(response, f"Bandwidth set to {args.bandwidth} bytes/s")
        return
    info = job_info(client, args.name, args.path)
    if not info.active:
        out.show(info, f"No current block job for {args.path}")
        return
    out.show(info, f"{progress_line(info)}\n"
                   f"Bandwidth limit: {info.bandwidth_bytes} bytes/s "
                   f"({byte_size(info.bandwidth_bytes)}/s)")


# -- registration ----------------------------------------------------------------------


def _offset(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an offset") from None


def _job_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--bandwidth", type=parse_bytes, metavar="BYTES",
                     help="bytes per second, with units (10M); default unlimited")
    sub.add_argument("--wait", action="store_true", help="wait for the job")
    sub.add_argument("--verbose", action="store_true", help="with --wait: a progress bar")
    sub.add_argument("--job-timeout", type=float, metavar="SECONDS",
                     help="with --wait: abort the job after so long")


def register(command: CommandFactory) -> None:
    domains = Commands(command, DOMAIN)
    sub = domains.add("domblklist", cmd_domblklist, "list a domain's disks")
    sub.add_argument("--inactive", action="store_true", help="the persistent config's")
    sub.add_argument("--details", action="store_true", help="with the type and device")
    sub = domains.add("domiflist", cmd_domiflist, "list a domain's network interfaces")
    sub.add_argument("--inactive", action="store_true", help="the persistent config's")
    sub = domains.add("domblkinfo", cmd_domblkinfo, "show a disk's capacity and allocation")
    sub.add_argument("device", nargs="?", metavar="DEVICE", help="target (vda) or source path")
    sub.add_argument("--all", action="store_true", help="every disk")
    sub.add_argument("--human", action="store_true", help="sizes with units")
    sub = domains.add("domblkstat", cmd_domblkstat, "show a running domain's disk I/O counters")
    sub.add_argument("device", nargs="?", metavar="DEVICE", help="a disk; default all summed")
    sub = domains.add("domifstat", cmd_domifstat, "show an interface's traffic counters")
    sub.add_argument("interface", metavar="INTERFACE", help="target device (vnet0) or MAC")
    domains.add("dommemstat", cmd_dommemstat, "show a running domain's memory statistics")
    sub = domains.add("blockresize", cmd_blockresize, "grow a running domain's disk")
    sub.add_argument("path", metavar="PATH", help="disk target or source path")
    sub.add_argument("size", type=parse_bytes, metavar="SIZE", help="new size (10G, 512M)")
    sub.add_argument("--shrink", action="store_true",
                     help="allow a smaller size (the guest loses what lies past it)")
    sub = domains.add("blockpeek", cmd_blockpeek, "read up to 64 KiB of a disk's image")
    sub.add_argument("disk", metavar="DISK", help="disk target or source path")
    sub.add_argument("offset", type=_offset, metavar="OFFSET")
    sub.add_argument("size", type=parse_bytes, metavar="SIZE", help="1 to 64K bytes")
    sub.add_argument("--raw", action="store_true", help="the bytes themselves, not a hex dump")
    sub = domains.add("blkdeviotune", cmd_blkdeviotune, "show or change a disk's I/O limits")
    sub.add_argument("device", metavar="DEVICE", help="disk target or source path")
    for option in IOTUNE_OPTIONS:
        sub.add_argument(f"--{option.replace('_', '-')}", dest=option,
                         type=parse_bytes if "bytes" in option else int, metavar="N")
    sub.add_argument("--group-name", metavar="NAME", help="throttle group")
    sub.add_argument("--set", type=assignment, action="append", metavar="NAME=VALUE",
                     help="change any parameter (repeatable)")
    sub.add_argument("--live", action="store_true", help="the running domain")
    sub.add_argument("--config", action="store_true", help="the persistent config")
    sub = domains.add("blockcopy", cmd_blockcopy,
                      "copy a running domain's disk to a new image, then pivot or finish")
    sub.add_argument("path", metavar="PATH", help="disk target or source path")
    sub.add_argument("--dest", metavar="FILE", help="destination file on the node")
    sub.add_argument("--xml", type=XML_FILE, metavar="FILE",
                     help="destination as a <disk> document")
    sub.add_argument("--format", help="with --dest: raw, qcow2, ...")
    sub.add_argument("--shallow", action="store_true", help="the top layer only")
    sub.add_argument("--reuse-external", action="store_true",
                     help="the destination exists already")
    sub.add_argument("--transient-job", action="store_true",
                     help="the job does not outlast the domain")
    sub.add_argument("--synchronous-writes", action="store_true",
                     help="guest writes reach the copy before they complete")
    end = sub.add_mutually_exclusive_group()
    end.add_argument("--pivot", action="store_true", help="with --wait: switch to the copy")
    end.add_argument("--finish", action="store_true", help="with --wait: end, keep the disk")
    _job_options(sub)
    sub = domains.add("blockcommit", cmd_blockcommit,
                      "commit a disk's backing chain down into its base")
    sub.add_argument("path", metavar="PATH", help="disk target or source path")
    sub.add_argument("--base", help="the layer committed into (default: the bottom)")
    sub.add_argument("--top", help="the top layer committed (default: the active one's backing)")
    sub.add_argument("--active", action="store_true", help="commit the active layer too")
    sub.add_argument("--shallow", action="store_true", help="base is top's backing file")
    sub.add_argument("--delete", action="store_true", help="delete the committed files")
    end = sub.add_mutually_exclusive_group()
    end.add_argument("--pivot", action="store_true",
                     help="with --active --wait: switch the guest to the base")
    end.add_argument("--keep-overlay", action="store_true",
                     help="with --active --wait: end, the guest keeps the top")
    _job_options(sub)
    sub = domains.add("blockpull", cmd_blockpull, "pull a disk's backing chain into it")
    sub.add_argument("path", metavar="PATH", help="disk target or source path")
    sub.add_argument("--base", help="pull only the layers above this one")
    _job_options(sub)
    sub = domains.add("blockjob", cmd_blockjob, "show, abort or throttle a disk's block job")
    sub.add_argument("path", metavar="PATH", help="disk target or source path")
    sub.add_argument("--info", action="store_true", help="show it (the default)")
    sub.add_argument("--abort", action="store_true", help="cancel it")
    sub.add_argument("--async", dest="asynchronous", action="store_true",
                     help="with --abort: return at once")
    sub.add_argument("--pivot", action="store_true", help="switch to a ready copy and end it")
    sub.add_argument("--bandwidth", type=parse_bytes, metavar="BYTES",
                     help="change its bytes per second (with units)")
    sub = domains.add("domblkthreshold", cmd_domblkthreshold,
                      "ask for an event when the guest writes past a disk offset")
    sub.add_argument("dev", metavar="DEV", help="disk target, or a layer such as vda[1]")
    sub.add_argument("threshold", type=parse_bytes, metavar="THRESHOLD",
                     help="bytes with units; 0 clears it")
