"""Snapshots, checkpoints and backups: virsh's snapshot-*, checkpoint-* and backup-*
commands.

snapshot-create-as and checkpoint-create-as build their XML with xml.etree, so a
name or description is text, never markup. backup-begin takes virsh's
``--backupxml``/``--checkpointxml`` files, or builds a push-mode backup from
``--target DISK=FILE`` (files on the node, inside the compute service's save_dir);
the backup runs as the domain's job, which ``domjobinfo`` shows and ``domjobabort``
aborts, and with ``--wait`` the command follows it to its end with a progress bar.
"""

from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_commands import XML_FILE, Argument, CommandFactory, Commands, Kind
from virtmesh_client.cli_compute import DOMAIN, DOMAIN_ARGUMENT
from virtmesh_client.cli_fleet import UsageError
from virtmesh_client.cli_jobs import POLL, progress_line
from virtmesh_client.cli_output import Output, read_input, table, yes
from virtmesh_client.client import Client, ClientError

#: a snapshot is named by its domain and its own name
SNAPSHOT = Kind("Snapshot '{}'", (
    DOMAIN_ARGUMENT, Argument("snapshot", "SNAPSHOT", "snapshot name", field="snapshot")))
CHECKPOINT = Kind("Checkpoint '{}'", (
    DOMAIN_ARGUMENT, Argument("checkpoint", "CHECKPOINT", "checkpoint name", field="checkpoint")))


def _text(parent: ET.Element, tag: str, text: str) -> None:
    if text:
        ET.SubElement(parent, tag).text = text


def _diskspec(parent: ET.Element, spec: str, source_tag: str) -> None:
    """virsh's --diskspec: ``DISK[,snapshot=TYPE][,driver=TYPE][,file=PATH]``."""
    name, *pairs = spec.split(",")
    disk = ET.SubElement(parent, "disk", name=name)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--diskspec {spec!r}: {pair!r} is not KEY=VALUE")
        if key in ("snapshot", "checkpoint", "bitmap"):
            disk.set(key, value)
        elif key == "driver":
            ET.SubElement(disk, "driver", type=value)
        elif key == "file":
            ET.SubElement(disk, source_tag, file=value)
        else:
            raise UsageError(f"--diskspec {spec!r}: unknown key {key!r}")


def snapshot_xml(name: str, description: str, disk_only: bool = False,
                 diskspecs: Sequence[str] = ()) -> str:
    """A <domainsnapshot> document, as virsh snapshot-create-as builds it."""
    root = ET.Element("domainsnapshot")
    _text(root, "name", name)
    _text(root, "description", description)
    if disk_only:
        ET.SubElement(root, "memory", snapshot="no")
    if diskspecs:
        disks = ET.SubElement(root, "disks")
        for spec in diskspecs:
            _diskspec(disks, spec, "source")
    return ET.tostring(root, encoding="unicode")


def checkpoint_xml(name: str, description: str, diskspecs: Sequence[str] = ()) -> str:
    root = ET.Element("domaincheckpoint")
    _text(root, "name", name)
    _text(root, "description", description)
    if diskspecs:
        disks = ET.SubElement(root, "disks")
        for spec in diskspecs:
            _diskspec(disks, spec, "source")
    return ET.tostring(root, encoding="unicode")


def backup_xml(targets: Sequence[str], incremental: str) -> str:
    """A push-mode <domainbackup> from ``DISK=FILE`` targets (qcow2 files)."""
    root = ET.Element("domainbackup", mode="push")
    _text(root, "incremental", incremental)
    disks = ET.SubElement(root, "disks")
    for target in targets:
        disk, sep, path = target.partition("=")
        if not sep or not disk or not path:
            raise UsageError(f"--target {target!r} is not DISK=FILE")
        if path.lower() == "no":
            ET.SubElement(disks, "disk", name=disk, backup="no")
            continue
        element = ET.SubElement(disks, "disk", name=disk, type="file")
        ET.SubElement(element, "target", file=path)
        ET.SubElement(element, "driver", type="qcow2")
    return ET.tostring(root, encoding="unicode")


def _when(item: Any) -> str:
    return str(item.create_time.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds"))


def tree_text(items: Sequence[Any], top: str = "") -> str:
    """Items as a tree under their parents (virsh's --tree), children by name."""
    children: dict[str, list[Any]] = {}
    present = {item.name for item in items}
    for item in items:
        children.setdefault(item.parent if item.parent in present else top, []).append(item)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for item in sorted(children.get(parent, ()), key=lambda i: i.name):
            lines.append(f"{'  ' * (depth - 1)}+- {item.name}" if depth else item.name)
            walk(item.name, depth + 1)
    walk(top, 0)
    return "\n".join(lines)


def _listing(items: Sequence[Any], args: argparse.Namespace, extra: Any) -> str:
    if args.tree:
        return tree_text(items)
    if args.name_only_list:
        return "\n".join(item.name for item in items)
    headers = ("NAME", "CREATE_TIME", *extra[0], *(("PARENT",) if args.parent else ()))
    return table(headers, ((item.name, _when(item), *extra[1](item),
                            *((item.parent or "-",) if args.parent else ())) for item in items))


# -- snapshots ---------------------------------------------------------------------

def _create_snapshot(client: Client, args: argparse.Namespace, xml: str,
                     out: Output) -> None:
    response = client.call("CreateSnapshot", pb.CreateSnapshotRequest(
        name=args.name, xml=xml, disk_only=args.disk_only, quiesce=args.quiesce,
        atomic=args.atomic, no_metadata=args.no_metadata, live=args.live,
        reuse_external=args.reuse_external, halt=args.halt))
    out.show(response, f"Domain snapshot {response.snapshot.name} created")


def cmd_snapshot_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    _create_snapshot(client, args, read_input(args.xml) if args.xml else "", out)


def cmd_snapshot_create_as(client: Client, args: argparse.Namespace, out: Output) -> None:
    xml = snapshot_xml(args.snapshot_name or "", args.description or "", args.disk_only,
                       args.diskspec or ())
    if args.print_xml:
        print(xml)
        return
    _create_snapshot(client, args, xml, out)


def _snapshot_filter(args: argparse.Namespace) -> pb.SnapshotFilter:
    kinds = [kind for flag, kind in (("inactive", pb.SNAPSHOT_KIND_INACTIVE),
                                     ("active", pb.SNAPSHOT_KIND_ACTIVE),
                                     ("disk_only", pb.SNAPSHOT_KIND_DISK_ONLY))
             if getattr(args, flag)]
    return pb.SnapshotFilter(leaves=_either(args.leaves, args.no_leaves),
                             metadata=_either(args.metadata, args.no_metadata), kinds=kinds,
                             external=_either(args.external, args.internal),
                             topological=args.topological)


def _either(yes_flag: bool, no_flag: bool) -> bool | None:
    return True if yes_flag else False if no_flag else None


def cmd_snapshot_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.descendants and not args.from_:
        raise UsageError("--descendants goes with --from")
    if args.from_:
        request: Any = pb.ListSnapshotChildrenRequest(
            name=args.name, snapshot=args.from_, descendants=args.descendants,
            filter=_snapshot_filter(args))
        snaps = client.all_pages("ListSnapshotChildren", request, "snapshots")
    else:
        request = pb.ListSnapshotsRequest(name=args.name, roots=args.roots,
                                          filter=_snapshot_filter(args))
        snaps = client.all_pages("ListSnapshots", request, "snapshots")
    text = _listing(snaps, args, (("STATE", "CURRENT"),
                                  lambda s: (s.state, yes(s.current))))
    out.show(pb.ListSnapshotsResponse(snapshots=snaps), text)


def cmd_snapshot_current(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetCurrentSnapshot", pb.GetCurrentSnapshotRequest(name=args.name))
    out.show(response, response.snapshot.name if args.name_only
             else response.snapshot.xml.rstrip("\n"))


def cmd_snapshot_parent(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetSnapshotParent", pb.GetSnapshotParentRequest(
        name=args.name, snapshot=args.snapshot))
    out.show(response, response.snapshot.name)


def cmd_snapshot_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetSnapshot", pb.GetSnapshotRequest(name=args.name,
                                                                snapshot=args.snapshot))
    out.show(response, response.snapshot.xml.rstrip("\n"))


def cmd_snapshot_revert(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("RevertToSnapshot", pb.RevertToSnapshotRequest(
        name=args.name, snapshot=args.snapshot, running=args.running, paused=args.paused,
        force=args.force))
    out.show(response, f"Domain '{args.name}' reverted to snapshot '{args.snapshot}'")


def cmd_snapshot_delete(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DeleteSnapshot", pb.DeleteSnapshotRequest(
        name=args.name, snapshot=args.snapshot, children=args.children,
        metadata_only=args.metadata))
    out.show(response, f"Snapshot '{args.snapshot}' of '{args.name}' deleted")


# -- checkpoints -------------------------------------------------------------------

def _create_checkpoint(client: Client, args: argparse.Namespace, xml: str,
                       out: Output) -> None:
    response = client.call("CreateCheckpoint", pb.CreateCheckpointRequest(
        name=args.name, xml=xml, quiesce=args.quiesce,
        redefine=getattr(args, "redefine", False),
        redefine_validate=getattr(args, "redefine_validate", False)))
    out.show(response, f"Domain checkpoint {response.checkpoint.name} created")


def cmd_checkpoint_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    _create_checkpoint(client, args, read_input(args.xml) if args.xml else "", out)


def cmd_checkpoint_create_as(client: Client, args: argparse.Namespace, out: Output) -> None:
    xml = checkpoint_xml(args.checkpoint_name or "", args.description or "",
                         args.diskspec or ())
    if args.print_xml:
        print(xml)
        return
    _create_checkpoint(client, args, xml, out)


def cmd_checkpoint_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.descendants and not args.from_:
        raise UsageError("--descendants goes with --from")
    leaves = _either(args.leaves, args.no_leaves)
    if args.from_:
        request: Any = pb.ListCheckpointChildrenRequest(
            name=args.name, checkpoint=args.from_, descendants=args.descendants,
            leaves=leaves, topological=args.topological)
        items = client.all_pages("ListCheckpointChildren", request, "checkpoints")
    else:
        request = pb.ListCheckpointsRequest(name=args.name, roots=args.roots, leaves=leaves,
                                            topological=args.topological)
        items = client.all_pages("ListCheckpoints", request, "checkpoints")
    text = _listing(items, args, ((), lambda c: ()))
    out.show(pb.ListCheckpointsResponse(checkpoints=items), text)


def cmd_checkpoint_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetCheckpoint", pb.GetCheckpointRequest(
        name=args.name, checkpoint=args.checkpoint, size=args.size, no_domain=args.no_domain,
        secure=args.security_info))
    out.show(response, response.checkpoint.xml.rstrip("\n"))


def cmd_checkpoint_parent(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetCheckpointParent", pb.GetCheckpointParentRequest(
        name=args.name, checkpoint=args.checkpoint))
    out.show(response, response.checkpoint.name)


def cmd_checkpoint_delete(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DeleteCheckpoint", pb.DeleteCheckpointRequest(
        name=args.name, checkpoint=args.checkpoint, children=args.children,
        children_only=args.children_only, metadata_only=args.metadata))
    out.show(response, f"Domain checkpoint {args.checkpoint} deleted")


# -- backups -----------------------------------------------------------------------

def _wait_for_backup(client: Client, name: str, show: bool) -> Any:
    """Follow the domain's backup job to its end (a progress bar on a terminal); the
    completed job."""
    while True:
        job = client.call("GetDomainJobInfo", pb.GetDomainJobInfoRequest(name=name)).job
        if job.type == pb.JOB_TYPE_NONE:
            break
        if show:
            print(f"\r{progress_line(job)}", end="", file=sys.stderr, flush=True)
        time.sleep(POLL)
    if show:
        print(file=sys.stderr)
    return client.call("GetDomainJobInfo", pb.GetDomainJobInfoRequest(
        name=name, completed=True)).job


def cmd_backup_begin(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.backupxml and (args.target or args.incremental):
        raise UsageError("--backupxml excludes --target and --incremental")
    if not args.backupxml and not args.target:
        raise UsageError("give --backupxml FILE, or --target DISK=FILE for each disk")
    xml = read_input(args.backupxml) if args.backupxml else backup_xml(args.target,
                                                                       args.incremental or "")
    if args.checkpointxml and args.checkpoint:
        raise UsageError("--checkpointxml excludes --checkpoint")
    checkpoint = (read_input(args.checkpointxml) if args.checkpointxml
                  else checkpoint_xml(args.checkpoint, "") if args.checkpoint else "")
    response = client.call("BeginBackup", pb.BeginBackupRequest(
        name=args.name, backup_xml=xml, checkpoint_xml=checkpoint,
        reuse_external=args.reuse_external))
    if not args.wait:
        out.show(response, "Backup started")
        return
    job = _wait_for_backup(client, args.name, sys.stderr.isatty() and not args.json)
    if job.type != pb.JOB_TYPE_COMPLETED:
        raise ClientError("ABORTED", f"the backup of '{args.name}' did not complete: "
                          f"{pb.JobType.Name(job.type)} {job.error_message}".rstrip())
    out.show(job, "Backup completed")


def cmd_backup_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetBackupXML", pb.GetBackupXMLRequest(name=args.name))
    out.show(response, response.xml.rstrip("\n"))


def _list_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--parent", action="store_true", help="add a PARENT column")
    tree = sub.add_mutually_exclusive_group()
    tree.add_argument("--roots", action="store_true", help="only those without a parent")
    tree.add_argument("--tree", action="store_true", help="show them as a tree")
    tree.add_argument("--from", dest="from_", metavar="NAME", help="only NAME's children")
    sub.add_argument("--descendants", action="store_true",
                     help="with --from: all its descendants")
    leaves = sub.add_mutually_exclusive_group()
    leaves.add_argument("--leaves", action="store_true", help="only those without children")
    leaves.add_argument("--no-leaves", action="store_true", help="only those with children")
    sub.add_argument("--topological", action="store_true", help="parents before children")
    sub.add_argument("--name", dest="name_only_list", action="store_true",
                     help="only the names")


def _create_flags(sub: argparse.ArgumentParser) -> None:
    for flag, text in (("--disk-only", "disks only, no memory (external)"),
                       ("--quiesce", "freeze guest file systems (guest agent)"),
                       ("--atomic", "all disks or none"),
                       ("--no-metadata", "let libvirt keep no metadata for it"),
                       ("--live", "keep the guest running while its memory is saved"),
                       ("--reuse-external", "reuse the external files named"),
                       ("--halt", "stop the domain once it is taken")):
        sub.add_argument(flag, action="store_true", help=text)


def register(command: CommandFactory) -> None:
    domains = Commands(command, DOMAIN)
    snapshots, checkpoints = Commands(command, SNAPSHOT), Commands(command, CHECKPOINT)
    diskspec = "DISK[,snapshot=TYPE][,driver=TYPE][,file=PATH] (repeatable)"

    sub = domains.add("snapshot-create", cmd_snapshot_create, "snapshot a domain")
    sub.add_argument("--xml", type=XML_FILE, metavar="FILE", help="<domainsnapshot> XML file")
    _create_flags(sub)
    sub = domains.add("snapshot-create-as", cmd_snapshot_create_as,
                      "snapshot a domain, its XML built from the arguments")
    sub.add_argument("snapshot_name", nargs="?", metavar="NAME", help="the snapshot's name")
    sub.add_argument("--description", metavar="TEXT")
    sub.add_argument("--diskspec", action="append", metavar="SPEC", help=diskspec)
    sub.add_argument("--print-xml", action="store_true", help="print the XML, create nothing")
    _create_flags(sub)
    sub = domains.add("snapshot-current", cmd_snapshot_current,
                      "print the current snapshot's XML")
    sub.add_argument("--name", dest="name_only", action="store_true", help="only its name")
    snapshots.add("snapshot-parent", cmd_snapshot_parent, "print a snapshot's parent")
    snapshots.add("snapshot-dumpxml", cmd_snapshot_dumpxml, "print a snapshot's XML")
    sub = domains.add("snapshot-list", cmd_snapshot_list, "list a domain's snapshots")
    _list_flags(sub)
    for flag, text in (("--metadata", "only those libvirt has metadata for"),
                       ("--no-metadata", "only those without metadata"),
                       ("--inactive", "only of an inactive domain"),
                       ("--active", "only of a running domain, with memory"),
                       ("--disk-only", "only disk-only ones"),
                       ("--internal", "only internal ones"),
                       ("--external", "only external ones")):
        sub.add_argument(flag, action="store_true", help=text)
    sub = snapshots.add("snapshot-revert", cmd_snapshot_revert, "revert to a snapshot")
    sub.add_argument("--running", action="store_true", help="leave the domain running")
    sub.add_argument("--paused", action="store_true", help="leave the domain paused")
    sub.add_argument("--force", action="store_true", help="revert even when risky")
    sub = snapshots.add("snapshot-delete", cmd_snapshot_delete, "delete a snapshot")
    sub.add_argument("--children", action="store_true", help="and its descendants")
    sub.add_argument("--metadata", action="store_true", help="only libvirt's metadata")

    sub = domains.add("checkpoint-create", cmd_checkpoint_create,
                      "create a checkpoint from XML")
    sub.add_argument("--xml", type=XML_FILE, metavar="FILE",
                     help="<domaincheckpoint> XML file")
    sub.add_argument("--redefine", action="store_true", help="restore a checkpoint's metadata")
    sub.add_argument("--redefine-validate", action="store_true",
                     help="with --redefine: check the disks' bitmaps")
    sub.add_argument("--quiesce", action="store_true", help="freeze guest file systems")
    sub = domains.add("checkpoint-create-as", cmd_checkpoint_create_as,
                      "create a checkpoint, its XML built from the arguments")
    sub.add_argument("checkpoint_name", nargs="?", metavar="NAME")
    sub.add_argument("--description", metavar="TEXT")
    sub.add_argument("--diskspec", action="append", metavar="SPEC",
                     help="DISK[,checkpoint=bitmap|no][,bitmap=NAME] (repeatable)")
    sub.add_argument("--print-xml", action="store_true", help="print the XML, create nothing")
    sub.add_argument("--quiesce", action="store_true", help="freeze guest file systems")
    sub = domains.add("checkpoint-list", cmd_checkpoint_list, "list a domain's checkpoints")
    _list_flags(sub)
    sub = checkpoints.add("checkpoint-dumpxml", cmd_checkpoint_dumpxml,
                          "print a checkpoint's XML")
    sub.add_argument("--security-info", action="store_true", help="include secrets")
    sub.add_argument("--no-domain", action="store_true", help="leave the <domain> out")
    sub.add_argument("--size", action="store_true",
                     help="bytes changed since, per disk (running domain)")
    checkpoints.add("checkpoint-parent", cmd_checkpoint_parent, "print a checkpoint's parent")
    sub = checkpoints.add("checkpoint-delete", cmd_checkpoint_delete, "delete a checkpoint")
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--children", action="store_true", help="and its descendants")
    which.add_argument("--children-only", action="store_true", help="only its descendants")
    sub.add_argument("--metadata", action="store_true", help="only libvirt's metadata")

    sub = domains.add("backup-begin", cmd_backup_begin,
                      "start a push-mode backup of a running domain's disks")
    sub.add_argument("--backupxml", type=XML_FILE, metavar="FILE", help="<domainbackup> XML")
    sub.add_argument("--checkpointxml", type=XML_FILE, metavar="FILE",
                     help="<domaincheckpoint> XML of a checkpoint to create with it")
    sub.add_argument("--target", action="append", metavar="DISK=FILE",
                     help="back DISK up to FILE on the node, in save_dir (DISK=no: skip "
                     "it); every disk of the domain, repeatable")
    sub.add_argument("--incremental", metavar="CHECKPOINT",
                     help="only what changed since CHECKPOINT")
    sub.add_argument("--checkpoint", metavar="NAME", help="create checkpoint NAME with it")
    sub.add_argument("--reuse-external", action="store_true",
                     help="the target files exist already")
    sub.add_argument("--wait", action="store_true",
                     help="follow the backup to its end (a progress bar on a terminal); "
                     "Ctrl-C stops waiting, the backup goes on (domjobabort aborts it)")
    domains.add("backup-dumpxml", cmd_backup_dumpxml, "print the running backup's XML")
