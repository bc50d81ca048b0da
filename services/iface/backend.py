"""The iface service's libvirt calls: lookups by name or MAC, list filters, summaries."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import grpc
import libvirt

from services.common import documents
from services.common.backend import Backend
from services.common.errors import ServiceError, require
from virtmesh.iface.v1 import iface_service_pb2 as pb

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def interface(iface: libvirt.virInterface) -> pb.Interface:
    root = ET.fromstring(iface.XMLDesc(0))
    return pb.Interface(name=iface.name(), mac=(iface.MACString() or "").lower(),
                        active=bool(iface.isActive()), type=root.get("type", ""))


class InterfaceBackend(Backend):

    def lookup(self, name: str) -> libvirt.virInterface:
        return self.conn.interfaceLookupByName(require(name, "name"))

    def lookup_mac(self, mac: str) -> libvirt.virInterface:
        if not _MAC.fullmatch(mac):
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"mac '{mac}' is not a MAC address like 52:54:00:12:34:56",
                               "INVALID_MAC")
        return self.conn.interfaceLookupByMACString(mac.lower())

    def list_interfaces(self, active: bool | None) -> list[libvirt.virInterface]:
        flags = 0
        if active is not None:
            flags = (libvirt.VIR_CONNECT_LIST_INTERFACES_ACTIVE if active
                     else libvirt.VIR_CONNECT_LIST_INTERFACES_INACTIVE)
        return self.conn.listAllInterfaces(flags)

    def define(self, xml: str) -> libvirt.virInterface:
        return documents.submit(self.conn.interfaceDefineXML, xml,
                                libvirt.VIR_INTERFACE_DEFINE_VALIDATE, root="interface")
