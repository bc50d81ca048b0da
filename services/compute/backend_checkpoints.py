"""Checkpoints, backups and the snapshot tree: libvirt's calls behind them.

A caller's document goes through documents.check before libvirt parses it, and a
checkpoint document through the parse sandbox too (services/common/sandbox.py; the
test driver the sandbox runs has no backups, so a backup document gets
documents.check and the target rules below only). A backup writes files on the
node: push mode only, and every disk of the domain either left out explicitly
(backup='no') or given a target file inside the service's save directory
(backend_jobs.SaveDir), which must not exist yet unless the caller reuses files
already there. libvirt would otherwise pick files beside the disk images, outside
anything a caller may name.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import grpc
import libvirt

from services.common import documents
from services.common.errors import ServiceError, invalid, require
from services.compute.backend import ComputeBackend, must_run
from services.compute.backend_jobs import SaveDir


def _name(text: str, what: str) -> str:
    require(text, what)
    if "\0" in text:
        raise invalid(f"the {what} name holds a NUL character")
    return text


class CheckpointsBackend:
    """The libvirt side of the checkpoint, backup and snapshot-tree RPCs."""

    def __init__(self, backend: ComputeBackend, save_dir: Path) -> None:
        self.backend = backend
        self.save_dir = SaveDir(save_dir)

    # -- snapshots -------------------------------------------------------------

    def current_snapshot(self, name: str) -> libvirt.virDomainSnapshot:
        dom = self.backend.lookup(name)
        if not dom.hasCurrentSnapshot(0):
            raise ServiceError(grpc.StatusCode.NOT_FOUND,
                               f"domain '{dom.name()}' has no current snapshot",
                               "NO_CURRENT_SNAPSHOT")
        return dom.snapshotCurrent(0)

    def snapshot(self, name: str, snapshot: str) -> libvirt.virDomainSnapshot:
        return self.backend.lookup(name).snapshotLookupByName(_name(snapshot, "snapshot"))

    def snapshot_parent(self, name: str, snapshot: str) -> libvirt.virDomainSnapshot:
        return self.snapshot(name, snapshot).getParent(0)

    def list_snapshots(self, name: str, flags: int) -> list[libvirt.virDomainSnapshot]:
        return list(self.backend.lookup(name).listAllSnapshots(flags))

    def snapshot_children(self, name: str, snapshot: str,
                          flags: int) -> list[libvirt.virDomainSnapshot]:
        return list(self.snapshot(name, snapshot).listAllChildren(flags))

    # -- checkpoints -----------------------------------------------------------

    def create_checkpoint(self, name: str, xml: str, redefine: bool, quiesce: bool,
                          redefine_validate: bool) -> libvirt.virDomainCheckpoint:
        if redefine_validate and not redefine:
            raise invalid("redefine_validate goes with redefine", "CONFLICTING_FLAGS")
        if redefine and not xml:
            raise invalid("redefine needs the checkpoint's XML", "MISSING_FIELD")
        dom = self.backend.lookup(name)
        flags = ((libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE if redefine else 0)
                 | (libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_QUIESCE if quiesce else 0)
                 | (libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE
                    if redefine_validate else 0))
        return self.backend._submit("checkpoint", dom.checkpointCreateXML,
                                    xml or "<domaincheckpoint/>", flags, root="domaincheckpoint")

    def checkpoint(self, name: str, checkpoint: str) -> libvirt.virDomainCheckpoint:
        return self.backend.lookup(name).checkpointLookupByName(
            _name(checkpoint, "checkpoint"), 0)

    def checkpoint_xml(self, cp: libvirt.virDomainCheckpoint, size: bool = False,
                       no_domain: bool = False, secure: bool = False) -> str:
        return str(cp.getXMLDesc((libvirt.VIR_DOMAIN_CHECKPOINT_XML_SIZE if size else 0)
                                 | (libvirt.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN
                                    if no_domain else 0)
                                 | (libvirt.VIR_DOMAIN_CHECKPOINT_XML_SECURE
                                    if secure else 0)))

    def checkpoint_parent(self, name: str, checkpoint: str) -> libvirt.virDomainCheckpoint:
        return self.checkpoint(name, checkpoint).getParent(0)

    def list_checkpoints(self, name: str, flags: int) -> list[libvirt.virDomainCheckpoint]:
        return list(self.backend.lookup(name).listAllCheckpoints(flags))

    def checkpoint_children(self, name: str, checkpoint: str,
                            flags: int) -> list[libvirt.virDomainCheckpoint]:
        return list(self.checkpoint(name, checkpoint).listAllChildren(flags))

    def delete_checkpoint(self, name: str, checkpoint: str, children: bool,
                          children_only: bool, metadata_only: bool) -> None:
        if children and children_only:
            raise invalid("children and children_only exclude each other",
                           "CONFLICTING_FLAGS")
        self.checkpoint(name, checkpoint).delete(
            (libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN if children else 0)
            | (libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN_ONLY if children_only else 0)
            | (libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY if metadata_only else 0))

    # -- backups ---------------------------------------------------------------

    def begin_backup(self, name: str, backup_xml: str, checkpoint_xml: str,
                     reuse_external: bool) -> None:
        documents.check(backup_xml, "backup_xml", root="domainbackup")
        if checkpoint_xml:
            documents.check(checkpoint_xml, "checkpoint_xml", root="domaincheckpoint")
            self.backend.sandbox.parse("checkpoint", checkpoint_xml)
        dom = must_run(self.backend.lookup(name))
        backup = ET.fromstring(backup_xml)
        if backup.get("mode", "push") != "push":
            raise invalid("only push-mode backups (to files in the save directory) are "
                           "offered", "PULL_MODE")
        listed = dict(self._backup_targets(backup, reuse_external))
        for disk in _backed_up_disks(dom):
            if disk not in listed:
                raise invalid(
                    f"the backup XML does not name disk '{disk}' of domain '{dom.name()}': "
                    f"give it a <target file='...'/> in {self.save_dir.root} or "
                    "backup='no'", "BACKUP_DISK_UNNAMED")
        with documents.submitted():
            dom.backupBegin(backup_xml, checkpoint_xml or None,
                            libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL
                            if reuse_external else 0)

    def _backup_targets(self, backup: ET.Element,
                        reuse_external: bool) -> Iterator[tuple[str, str]]:
        """(disk, target file) for each <disk> of the backup XML; every target is
        checked to be a file of the save directory."""
        for disk in backup.iterfind("disks/disk"):
            disk_name = disk.get("name") or ""
            if not disk_name:
                raise invalid("a <disk> of the backup XML has no name", "VIR_ERR_XML_ERROR")
            if disk.get("backup", "yes") == "no":
                yield disk_name, ""
                continue
            if disk.get("type", "file") != "file":
                raise invalid(f"disk '{disk_name}': only file targets are offered",
                               "BACKUP_TARGET")
            target = disk.find("target")
            path = target.get("file", "") if target is not None else ""
            if not path:
                raise invalid(f"disk '{disk_name}' needs a <target file='...'/> in "
                               f"{self.save_dir.root}", "BACKUP_TARGET")
            if reuse_external:
                self.save_dir.existing_file(path)
            else:
                self.save_dir.new_file(path)
            yield disk_name, path

    def backup_xml(self, name: str) -> str:
        return str(self.backend.lookup(name).backupGetXMLDesc(0))


def _backed_up_disks(dom: libvirt.virDomain) -> list[str]:
    """The targets of the domain's disks a backup would take by default: writable
    disks (not CD-ROMs, floppies or read-only ones)."""
    disks = []
    for disk in ET.fromstring(dom.XMLDesc(0)).iterfind("devices/disk"):
        target = disk.find("target")
        if (disk.get("device", "disk") == "disk" and disk.find("readonly") is None
                and target is not None and target.get("dev")):
            disks.append(str(target.get("dev")))
    return disks
