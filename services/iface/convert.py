"""libvirt host interfaces -> iface protobuf messages."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from virtmesh.iface.v1 import iface_service_pb2 as pb


def interface_name(iface: libvirt.virInterface) -> str:
    return iface.name()


def interface(iface: libvirt.virInterface) -> pb.Interface:
    root = ET.fromstring(iface.XMLDesc(0))
    return pb.Interface(name=iface.name(), mac=(iface.MACString() or "").lower(),
                        active=bool(iface.isActive()), type=root.get("type", ""))
