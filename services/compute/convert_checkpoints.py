"""libvirt values <-> the compute protobuf messages of checkpoints, backups and the
snapshot tree: list filters as libvirt's flags, checkpoint summaries, list order."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any, TypeVar

import grpc
import libvirt
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.backend import list_flags
from services.common.shared import ServiceError
from virtmesh.compute.v1 import compute_service_pb2 as pb

T = TypeVar("T")

#: SnapshotKind -> virDomainSnapshotListFlags
SNAPSHOT_KINDS: dict[int, int] = {
    pb.SNAPSHOT_KIND_INACTIVE: libvirt.VIR_DOMAIN_SNAPSHOT_LIST_INACTIVE,
    pb.SNAPSHOT_KIND_ACTIVE: libvirt.VIR_DOMAIN_SNAPSHOT_LIST_ACTIVE,
    pb.SNAPSHOT_KIND_DISK_ONLY: libvirt.VIR_DOMAIN_SNAPSHOT_LIST_DISK_ONLY,
}


def _optional(message: Any, field: str) -> bool | None:
    return bool(getattr(message, field)) if message.HasField(field) else None


def snapshot_list_flags(tree: bool, flt: pb.SnapshotFilter) -> int:
    """virDomainSnapshotListFlags; ``tree``: ListSnapshots' roots or
    ListSnapshotChildren's descendants (one bit in libvirt)."""
    return (list_flags(
        (_optional(flt, "leaves"), libvirt.VIR_DOMAIN_SNAPSHOT_LIST_LEAVES,
         libvirt.VIR_DOMAIN_SNAPSHOT_LIST_NO_LEAVES),
        (_optional(flt, "metadata"), libvirt.VIR_DOMAIN_SNAPSHOT_LIST_METADATA,
         libvirt.VIR_DOMAIN_SNAPSHOT_LIST_NO_METADATA),
        (_optional(flt, "external"), libvirt.VIR_DOMAIN_SNAPSHOT_LIST_EXTERNAL,
         libvirt.VIR_DOMAIN_SNAPSHOT_LIST_INTERNAL))
        | (libvirt.VIR_DOMAIN_SNAPSHOT_LIST_ROOTS if tree else 0)
        | (libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL if flt.topological else 0)
        | _kinds(flt.kinds))


def _kinds(kinds: Sequence[int]) -> int:
    flags = 0
    for kind in kinds:
        if kind not in SNAPSHOT_KINDS:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"filter.kinds: {kind} is not a snapshot kind", "INVALID_ENUM")
        flags |= SNAPSHOT_KINDS[kind]
    return flags


def checkpoint_list_flags(tree: bool, leaves: bool | None, topological: bool) -> int:
    """virDomainCheckpointListFlags; ``tree``: roots or descendants (one bit)."""
    return (list_flags((leaves, libvirt.VIR_DOMAIN_CHECKPOINT_LIST_LEAVES,
                        libvirt.VIR_DOMAIN_CHECKPOINT_LIST_NO_LEAVES))
            | (libvirt.VIR_DOMAIN_CHECKPOINT_LIST_ROOTS if tree else 0)
            | (libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL if topological else 0))


def ordered(items: Sequence[T], name: Any, topological: bool) -> list[tuple[str, T]]:
    """(page key, item): the name, or in topological order libvirt's position (a page
    sorts by key, so libvirt's order survives paging)."""
    if topological:
        return [(f"{index:08d}", item) for index, item in enumerate(items)]
    return [(str(name(item)), item) for item in items]


def key(pair: tuple[str, Any]) -> str:
    return pair[0]


def checkpoint(xml: str) -> pb.Checkpoint:
    """A checkpoint's summary from its XML."""
    root = ET.fromstring(xml)
    disks = [pb.CheckpointDisk(name=disk.get("name") or "",
                               checkpoint=disk.get("checkpoint") or "",
                               bitmap=disk.get("bitmap") or "",
                               size_bytes=int(disk.get("size") or 0))
             for disk in root.iterfind("disks/disk")]
    return pb.Checkpoint(
        name=root.findtext("name") or "", parent=root.findtext("parent/name") or "",
        create_time=Timestamp(seconds=int(root.findtext("creationTime") or 0)),
        description=root.findtext("description") or "", disks=disks, xml=xml)
