"""libvirt values <-> storage protobuf messages.

libvirt's enums start at 0 with a real value; ours start with *_UNSPECIFIED, so
the tables pair them by name rather than by number.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import grpc
import libvirt

from services.common.convert import libvirt_to_proto, proto_to_libvirt
from services.common.errors import ServiceError
from services.common.events import now
from virtmesh.storage.v1 import storage_service_pb2 as pb

POOL_STATES = libvirt_to_proto(pb.StoragePoolState, "STORAGE_POOL_STATE_", "VIR_STORAGE_POOL_")
VOLUME_TYPES = libvirt_to_proto(pb.StorageVolumeType, "STORAGE_VOLUME_TYPE_",
                                "VIR_STORAGE_VOL_")
LIFECYCLE_EVENTS = libvirt_to_proto(pb.StoragePoolLifecycleEventType,
                                    "STORAGE_POOL_LIFECYCLE_EVENT_TYPE_",
                                    "VIR_STORAGE_POOL_EVENT_")
#: proto algorithm -> libvirt's; UNSPECIFIED is libvirt's default, zeros
WIPE_ALGORITHMS = {
    **proto_to_libvirt(pb.WipeAlgorithm, "WIPE_ALGORITHM_", "VIR_STORAGE_VOL_WIPE_ALG_"),
    pb.WIPE_ALGORITHM_UNSPECIFIED: libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO,
}


def wipe_algorithm(algorithm: pb.WipeAlgorithm.ValueType) -> int:
    if algorithm not in WIPE_ALGORITHMS:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown wipe algorithm {algorithm}", "UNKNOWN_WIPE_ALGORITHM")
    return WIPE_ALGORITHMS[algorithm]


def pool_name(pool: libvirt.virStoragePool) -> str:
    return pool.name()


def volume_name(vol: libvirt.virStorageVol) -> str:
    return vol.name()


def storage_pool(pool: libvirt.virStoragePool) -> pb.StoragePool:
    state, capacity, allocation, available = pool.info()
    root = ET.fromstring(pool.XMLDesc(0))
    persistent = bool(pool.isPersistent())
    return pb.StoragePool(
        name=pool.name(), uuid=pool.UUIDString(),
        state=POOL_STATES.get(state, pb.STORAGE_POOL_STATE_UNSPECIFIED),
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
    physical = _physical(vol)
    target_format = root.find("target/format")
    return pb.StorageVolume(
        pool=pool or vol.storagePoolLookupByVolume().name(), name=vol.name(), key=vol.key(),
        path=root.findtext("target/path") or vol.path(),
        type=VOLUME_TYPES.get(kind, pb.STORAGE_VOLUME_TYPE_UNSPECIFIED),
        format=target_format.get("type", "") if target_format is not None else "",
        capacity_bytes=capacity, allocation_bytes=allocation, physical_bytes=physical)


def _physical(vol: libvirt.virStorageVol) -> int | None:
    """The volume's physical size; None where the driver cannot tell."""
    try:
        return vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        return None


def pool_sources(xml: str) -> pb.FindStoragePoolSourcesResponse:
    """The summary of libvirt's <sources> document, and the document."""
    sources = [pb.StoragePoolSource(
        hosts=[host.get("name", "") for host in source.findall("host")],
        dir=_attribute(source.find("dir"), "path"),
        devices=[device.get("path", "") for device in source.findall("device")],
        name=source.findtext("name") or "", format=_attribute(source.find("format"), "type"))
        for source in ET.fromstring(xml).findall("source")]
    return pb.FindStoragePoolSourcesResponse(sources=sources, xml=xml)


def pool_capabilities(xml: str) -> pb.GetStoragePoolCapabilitiesResponse:
    """The summary of libvirt's <storagepoolCapabilities>, and the document."""
    def values(pool: ET.Element, options: str, enum: str) -> list[str]:
        return [value.text or "" for value in pool.findall(f"{options}/enum[@name='{enum}']/value")]

    pool_types = [pb.StoragePoolTypeCapability(
        type=pool.get("type", ""), supported=pool.get("supported") == "yes",
        source_formats=values(pool, "poolOptions", "sourceFormatType"),
        default_source_format=_attribute(pool.find("poolOptions/defaultFormat"), "type"),
        volume_formats=values(pool, "volOptions", "targetFormatType"),
        default_volume_format=_attribute(pool.find("volOptions/defaultFormat"), "type"))
        for pool in ET.fromstring(xml).findall("pool")]
    return pb.GetStoragePoolCapabilitiesResponse(pool_types=pool_types, xml=xml)


def _attribute(element: ET.Element | None, name: str) -> str:
    return element.get(name, "") if element is not None else ""


def pool_event(pool: libvirt.virStoragePool, kind: str,
               *details: int) -> pb.WatchStoragePoolEventsResponse:
    """The Watch response for what StorageBackend.register_events emits."""
    if kind == "lifecycle":
        lifecycle = pb.StoragePoolLifecycleEvent(type=LIFECYCLE_EVENTS.get(
            details[0], pb.STORAGE_POOL_LIFECYCLE_EVENT_TYPE_UNSPECIFIED))
        return pb.WatchStoragePoolEventsResponse(name=pool.name(), uuid=pool.UUIDString(),
                                                 time=now(), lifecycle=lifecycle)
    return pb.WatchStoragePoolEventsResponse(name=pool.name(), uuid=pool.UUIDString(),
                                             time=now(), refresh=pb.StoragePoolRefreshEvent())
