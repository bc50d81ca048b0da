"""The iface service's libvirt calls: lookups by name or MAC, list filters, changes."""

from __future__ import annotations

import re

import grpc
import libvirt

from services.common import documents
from services.common.backend import Backend
from services.common.errors import ServiceError, require

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


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

    def xml(self, name: str, inactive: bool) -> tuple[str, str]:
        """The interface's name as libvirt reports it, and its XML."""
        iface = self.lookup(name)
        return iface.name(), iface.XMLDesc(libvirt.VIR_INTERFACE_XML_INACTIVE if inactive else 0)

    def undefine(self, name: str) -> None:
        self.lookup(name).undefine()

    def start(self, name: str) -> libvirt.virInterface:
        iface = self.lookup(name)
        iface.create(0)
        return iface

    def stop(self, name: str) -> None:
        self.lookup(name).destroy(0)

    def begin_change(self) -> None:
        self.conn.changeBegin(0)

    def commit_change(self) -> None:
        self.conn.changeCommit(0)

    def rollback_change(self) -> None:
        self.conn.changeRollback(0)
