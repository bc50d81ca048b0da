"""libvirt values <-> network protobuf messages.

The update command and section enums share libvirt's numbering, but a client may
send any number: only the values both sides know get through to libvirt.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import grpc
import libvirt
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.convert import libvirt_to_proto, proto_to_libvirt
from services.common.errors import ServiceError
from services.common.events import now
from virtmesh.network.v1 import network_service_pb2 as pb

#: UpdateCommand -> virNetworkUpdateCommand
UPDATE_COMMANDS = proto_to_libvirt(pb.UpdateCommand, "UPDATE_COMMAND_",
                                   "VIR_NETWORK_UPDATE_COMMAND_")
#: NetworkSection -> virNetworkUpdateSection
SECTIONS = proto_to_libvirt(pb.NetworkSection, "", "VIR_")
#: virNetworkEventLifecycleType -> NetworkEventType
EVENT_TYPES = libvirt_to_proto(pb.NetworkEventType, "NETWORK_EVENT_TYPE_", "VIR_NETWORK_EVENT_")
#: BandwidthLimits field -> the suffix of libvirt's port parameter ("inbound.average")
_LIMITS = {"average_kibps": "average", "peak_kibps": "peak", "burst_kib": "burst",
           "floor_kibps": "floor"}
_DIRECTIONS = ("inbound", "outbound")
#: libvirt's port parameters: VIR_NETWORK_PORT_BANDWIDTH_*
_PORT_PARAMETERS = frozenset(value for key, value in vars(libvirt).items()
                             if key.startswith("VIR_NETWORK_PORT_BANDWIDTH_"))
_ADDRESS_TYPES = libvirt_to_proto(pb.IPAddressType, "IP_ADDRESS_TYPE_", "VIR_IP_ADDR_TYPE_")


def _known(table: Mapping[Any, int], value: int, field: str, enum: Any) -> int:
    if value not in table:
        choices = ", ".join(name for name, number in enum.items() if number)
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{field} must be one of {choices} (got {value})",
                           "INVALID_ENUM_VALUE")
    return table[value]


def update_command(value: int) -> int:
    return _known(UPDATE_COMMANDS, value, "command", pb.UpdateCommand)


def section(value: int) -> int:
    return _known(SECTIONS, value, "section", pb.NetworkSection)


def network_name(net: libvirt.virNetwork) -> str:
    return net.name()


def port_uuid(port: libvirt.virNetworkPort) -> str:
    """Ports have no name: they are known by UUID."""
    return port.UUIDString()


def network(net: libvirt.virNetwork) -> pb.Network:
    # The bridge from the XML: virNetworkGetBridgeName fails for networks without one.
    bridge = ET.fromstring(net.XMLDesc(0)).find("bridge")
    persistent = bool(net.isPersistent())
    return pb.Network(
        name=net.name(), uuid=net.UUIDString(),
        bridge=bridge.get("name", "") if bridge is not None else "",
        active=bool(net.isActive()), persistent=persistent,
        autostart=persistent and bool(net.autostart()),
    )


def _pci_address(element: ET.Element | None) -> str:
    if element is None:
        return ""
    parts = [int(element.get(key, "0"), 0) for key in ("domain", "bus", "slot", "function")]
    return "{:04x}:{:02x}:{:02x}.{:x}".format(*parts)


def port(network_name: str, found: libvirt.virNetworkPort) -> pb.NetworkPort:
    root = ET.fromstring(found.XMLDesc(0))
    plug = root.find("plug")
    plug_type = plug.get("type", "") if plug is not None else ""
    device = ""
    if plug is not None:
        device = (plug.get("bridge") or plug.get("dev")
                  or _pci_address(plug.find("address")))
    mac = root.find("mac")
    return pb.NetworkPort(
        network=network_name, uuid=root.findtext("uuid") or "",
        owner_name=root.findtext("owner/name") or "", owner_uuid=root.findtext("owner/uuid") or "",
        mac=mac.get("address", "") if mac is not None else "",
        port_group=root.findtext("group") or "", plug_type=plug_type, plug_device=device,
    )


def lease(record: dict[str, Any]) -> pb.DHCPLease:
    """One of virNetworkGetDHCPLeases' records; libvirt leaves absent values None."""
    return pb.DHCPLease(
        interface=record.get("iface") or "",
        expiry_time=Timestamp(seconds=int(record.get("expirytime") or 0)),
        type=_ADDRESS_TYPES.get(record.get("type", -1), pb.IP_ADDRESS_TYPE_UNSPECIFIED),
        mac=record.get("mac") or "", iaid=record.get("iaid") or "",
        ip_address=record.get("ipaddr") or "", prefix=int(record.get("prefix") or 0),
        hostname=record.get("hostname") or "", client_id=record.get("clientid") or "",
    )


def network_event(net: libvirt.virNetwork, kind: str, event: int,
                  detail: int) -> pb.WatchNetworkEventsResponse:
    """The Watch response for what NetworkBackend.register_events emits (its only
    ``kind`` is lifecycle)."""
    return pb.WatchNetworkEventsResponse(
        name=net.name(), uuid=net.UUIDString(), time=now(),
        type=EVENT_TYPES.get(event, pb.NETWORK_EVENT_TYPE_UNSPECIFIED))


def bandwidth(parameters: Mapping[str, int]) -> pb.PortBandwidth:
    """libvirt's port parameters as a PortBandwidth."""
    found = pb.PortBandwidth()
    for direction in _DIRECTIONS:
        for field, suffix in _LIMITS.items():
            if f"{direction}.{suffix}" in parameters:
                setattr(getattr(found, direction), field, parameters[f"{direction}.{suffix}"])
    return found


def port_parameters(changes: pb.PortBandwidth) -> dict[str, int]:
    """The libvirt port parameters of the limits set in ``changes``."""
    parameters = {}
    for direction in _DIRECTIONS:
        limits = getattr(changes, direction)
        for field, suffix in _LIMITS.items():
            if limits.HasField(field):
                key = f"{direction}.{suffix}"
                if key not in _PORT_PARAMETERS:
                    raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"libvirt has no {key} port parameter",
                                       "UNKNOWN_PARAMETER")
                parameters[key] = getattr(limits, field)
    return parameters
