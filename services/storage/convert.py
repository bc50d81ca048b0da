"""libvirt values <-> storage protobuf messages.

libvirt's enums start at 0 with a real value; ours start with *_UNSPECIFIED, so
the tables pair them by name rather than by number.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from virtmesh.storage.v1 import storage_service_pb2 as pb


def _by_name(enum: Any, proto_prefix: str, libvirt_prefix: str) -> dict[int, int]:
    """libvirt value -> proto value for every proto name libvirt also has."""
    return {getattr(libvirt, libvirt_prefix + name.removeprefix(proto_prefix)): value
            for name, value in enum.items()
            if value and hasattr(libvirt, libvirt_prefix + name.removeprefix(proto_prefix))}


POOL_STATES = _by_name(pb.StoragePoolState, "STORAGE_POOL_STATE_", "VIR_STORAGE_POOL_")
VOLUME_TYPES = _by_name(pb.StorageVolumeType, "STORAGE_VOLUME_TYPE_", "VIR_STORAGE_VOL_")
LIFECYCLE_EVENTS = _by_name(pb.StoragePoolLifecycleEventType,
                            "STORAGE_POOL_LIFECYCLE_EVENT_TYPE_", "VIR_STORAGE_POOL_EVENT_")
#: proto algorithm -> libvirt's; UNSPECIFIED is libvirt's default, zeros
WIPE_ALGORITHMS: dict[int, int] = {value: getattr(libvirt, "VIR_STORAGE_VOL_WIPE_ALG_"
                                  + name.removeprefix("WIPE_ALGORITHM_"))
                   for name, value in pb.WipeAlgorithm.items() if value}
WIPE_ALGORITHMS[pb.WIPE_ALGORITHM_UNSPECIFIED] = libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO


def storage_pool(pool: libvirt.virStoragePool) -> pb.StoragePool:
    state, capacity, allocation, available = pool.info()
    root = ET.fromstring(pool.XMLDesc(0))
    persistent = bool(pool.isPersistent())
    return pb.StoragePool(
        name=pool.name(), uuid=pool.UUIDString(),
        state=POOL_STATES.get(state, pb.STORAGE_POOL_STATE_UNSPECIFIED),  # type: ignore[arg-type]
        type=root.get("type", ""), capacity_bytes=capacity, allocation_bytes=allocation,
        available_bytes=available, persistent=persistent,
        autostart=bool(pool.autostart()) if persistent else False,
        target_path=root.findtext("target/path") or "")


def storage_volume(vol: libvirt.virStorageVol, pool: str = "") -> pb.StorageVolume:
    """The volume's summary; ``pool`` is its pool's name when the caller knows it (a
    listing), which saves a lookup per volume. Name and key are local to libvirt-python;
    the path comes from the XML, which is fetched anyway."""
    kind, capacity, allocation = vol.info()
    root = ET.fromstring(vol.XMLDesc(0))
    target_format = root.find("target/format")
    return pb.StorageVolume(
        pool=pool or vol.storagePoolLookupByVolume().name(), name=vol.name(), key=vol.key(),
        path=root.findtext("target/path") or vol.path(),
        type=VOLUME_TYPES.get(kind, pb.STORAGE_VOLUME_TYPE_UNSPECIFIED),  # type: ignore[arg-type]
        format=target_format.get("type", "") if target_format is not None else "",
        capacity_bytes=capacity, allocation_bytes=allocation)
