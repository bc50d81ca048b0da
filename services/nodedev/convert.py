"""libvirt node devices <-> nodedev protobuf messages.

NodeDeviceCapability names are libvirt's capability names upper-cased; libvirt's
list flags spell five of them differently.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable

import grpc
import libvirt

from services.common.convert import libvirt_to_proto, proto_to_libvirt
from services.common.errors import ServiceError
from services.common.events import now
from virtmesh.nodedev.v1 import nodedev_service_pb2 as pb

_FLAG_SPELLINGS = {"PCI": "PCI_DEV", "USB_DEVICE": "USB_DEV", "USB": "USB_INTERFACE",
                   "CCW": "CCW_DEV", "CSS": "CSS_DEV"}
#: NodeDeviceCapability -> libvirt's VIR_CONNECT_LIST_NODE_DEVICES_CAP_* flag
CAPABILITY_FLAGS = proto_to_libvirt(pb.NodeDeviceCapability, "NODE_DEVICE_CAPABILITY_",
                                    "VIR_CONNECT_LIST_NODE_DEVICES_CAP_", _FLAG_SPELLINGS)
#: libvirt's virNodeDeviceEventLifecycleType -> NodeDeviceLifecycleEventType
LIFECYCLE_EVENTS = libvirt_to_proto(pb.NodeDeviceLifecycleEventType,
                                    "NODE_DEVICE_LIFECYCLE_EVENT_TYPE_", "VIR_NODE_DEVICE_EVENT_")


def capability_flags(capabilities: Iterable[pb.NodeDeviceCapability.ValueType]) -> int:
    """libvirt's list flags for devices with any of ``capabilities``."""
    flags = 0
    for capability in capabilities:
        if capability not in CAPABILITY_FLAGS:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"unknown node device capability {capability}",
                               "INVALID_CAPABILITY")
        flags |= CAPABILITY_FLAGS[capability]
    return flags


def device_name(dev: libvirt.virNodeDevice) -> str:
    return dev.name()


def device_event(dev: libvirt.virNodeDevice, kind: str,
                 *details: int) -> pb.WatchNodeDeviceEventsResponse:
    """The Watch response for what NodeDeviceBackend.register_events emits."""
    if kind == "lifecycle":
        lifecycle = pb.NodeDeviceLifecycleEvent(type=LIFECYCLE_EVENTS.get(
            details[0], pb.NODE_DEVICE_LIFECYCLE_EVENT_TYPE_UNSPECIFIED))
        return pb.WatchNodeDeviceEventsResponse(name=dev.name(), time=now(),
                                                lifecycle=lifecycle)
    return pb.WatchNodeDeviceEventsResponse(name=dev.name(), time=now(),
                                            update=pb.NodeDeviceUpdateEvent())


def _unless_unsupported(call: Callable[[], int]) -> bool | None:
    """None where the driver cannot tell (libvirt < 7.3 and the test driver have no
    notion of active, persistent or autostart devices)."""
    try:
        return bool(call())
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        return None


def node_device(dev: libvirt.virNodeDevice) -> pb.NodeDevice:
    root = ET.fromstring(dev.XMLDesc(0))
    return pb.NodeDevice(
        name=dev.name(), parent=root.findtext("parent") or "", capabilities=dev.listCaps(),
        driver=root.findtext("driver/name") or "", path=root.findtext("path") or "",
        active=_unless_unsupported(dev.isActive),
        persistent=_unless_unsupported(dev.isPersistent),
        autostart=_unless_unsupported(dev.autostart))
