"""libvirt values <-> network protobuf messages.

The update command and section enums share libvirt's numbering, but a client may
send any number: only the values both sides know get through to libvirt.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import grpc
import libvirt
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import ServiceError
from virtmesh.network.v1 import network_service_pb2 as pb

#: UpdateCommand -> virNetworkUpdateCommand
UPDATE_COMMANDS: dict[int, int] = {
    value: getattr(libvirt, f"VIR_NETWORK_UPDATE_COMMAND_{name.removeprefix('UPDATE_COMMAND_')}")
    for name, value in pb.UpdateCommand.items() if value
}
#: NetworkSection -> virNetworkUpdateSection
SECTIONS: dict[int, int] = {
    value: getattr(libvirt, f"VIR_{name}") for name, value in pb.NetworkSection.items() if value
}
#: virNetworkEventLifecycleType -> NetworkEventType
EVENT_TYPES: dict[int, pb.NetworkEventType.ValueType] = {
    getattr(libvirt, f"VIR_NETWORK_EVENT_{name.removeprefix('NETWORK_EVENT_TYPE_')}"): value
    for name, value in pb.NetworkEventType.items() if value
}
_ADDRESS_TYPES = {libvirt.VIR_IP_ADDR_TYPE_IPV4: pb.IP_ADDRESS_TYPE_IPV4,
                  libvirt.VIR_IP_ADDR_TYPE_IPV6: pb.IP_ADDRESS_TYPE_IPV6}


def _known(table: dict[int, int], value: int, field: str, enum: Any) -> int:
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


def port(network_name: str, xml: str) -> pb.NetworkPort:
    root = ET.fromstring(xml)
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


def event_type(event: int) -> pb.NetworkEventType.ValueType:
    return EVENT_TYPES.get(event, pb.NETWORK_EVENT_TYPE_UNSPECIFIED)
