"""The nodedev service's libvirt calls: lookups, list filters, flag assembly."""

from __future__ import annotations

import re
from collections.abc import Callable

import grpc
import libvirt

from services.common import documents, event_callbacks
from services.common.backend import Backend
from services.common.errors import ServiceError, require


def _parent(dev: libvirt.virNodeDevice) -> str | None:
    """The device's parent; None when it has none or went away meanwhile."""
    try:
        return dev.parent()
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_NO_NODE_DEVICE:
            raise
        return None


#: a world wide name as libvirt's virValidateWWN accepts it
_WWN = re.compile(r"(0x)?[0-9a-fA-F]{16}")
#: what libvirt's remote client says when the daemon failed without an error: the
#: node device driver's SCSI host lookup finding nothing
_NO_CAUSE = "An error occurred, but the cause is unknown"


class NodeDeviceBackend(Backend):

    def lookup(self, name: str) -> libvirt.virNodeDevice:
        return self.conn.nodeDeviceLookupByName(require(name, "name"))

    def list_devices(self, capability_flags: int, active: bool | None,
                     parent: str) -> list[libvirt.virNodeDevice]:
        flags = capability_flags
        if active is not None:
            flags |= (libvirt.VIR_CONNECT_LIST_NODE_DEVICES_ACTIVE if active
                      else libvirt.VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE)
        if parent:
            self.lookup(parent)  # NOT_FOUND rather than an empty list
        devices = self.conn.listAllDevices(flags)
        return [dev for dev in devices if _parent(dev) == parent] if parent else devices

    # Schema validation only when asked for, unlike every other define: libvirt 9.0's
    # nodedev.rng refuses the vHBA document libvirt documents for creating one (no
    # <name>, no <host> in the scsi_host capability). The node device driver runs in
    # the host's libvirtd, never embedded in this process.
    def create(self, xml: str, validate: bool) -> libvirt.virNodeDevice:
        flags = libvirt.VIR_NODE_DEVICE_CREATE_XML_VALIDATE if validate else 0
        return documents.submit(self.conn.nodeDeviceCreateXML, xml, flags, root="device")

    def define(self, xml: str, validate: bool) -> libvirt.virNodeDevice:
        flags = libvirt.VIR_NODE_DEVICE_DEFINE_XML_VALIDATE if validate else 0
        return documents.submit(self.conn.nodeDeviceDefineXML, xml, flags, root="device")

    def pci_device(self, name: str) -> libvirt.virNodeDevice:
        """A PCI device, checked here so that every libvirt URI gives the same answer
        (the node device driver would say only that it cannot detach at all)."""
        dev = self.lookup(name)
        if "pci" not in dev.listCaps():
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"node device '{name}' is not a PCI device", "NOT_A_PCI_DEVICE")
        return dev

    def scsi_host(self, wwnn: str, wwpn: str) -> libvirt.virNodeDevice:
        """The SCSI host with this pair of world wide names."""
        for field, wwn in (("wwnn", wwnn), ("wwpn", wwpn)):
            if not _WWN.fullmatch(wwn):
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"{field} must be 16 hexadecimal digits (got '{wwn}')",
                                   "INVALID_WWN")
        try:
            return self.conn.nodeDeviceLookupSCSIHostByWWN(wwnn, wwpn, 0)
        except libvirt.libvirtError as error:
            if (error.get_error_code(), error.get_error_message()) != (
                    libvirt.VIR_ERR_INTERNAL_ERROR, _NO_CAUSE):
                raise
        raise ServiceError(grpc.StatusCode.NOT_FOUND,
                           f"no SCSI host has wwnn {wwnn} and wwpn {wwpn}",
                           "VIR_ERR_NO_NODE_DEVICE")

    def register_events(self, conn: libvirt.virConnect, emit: Callable[..., None]) -> None:
        """Emit (device, "lifecycle", event, detail) and (device, "update")."""
        event_callbacks.register(conn.nodeDeviceEventRegisterAny, {
            libvirt.VIR_NODE_DEVICE_EVENT_ID_LIFECYCLE: "lifecycle",
            libvirt.VIR_NODE_DEVICE_EVENT_ID_UPDATE: "update",
        }, emit)

    def xml(self, name: str) -> tuple[str, str]:
        """The device's name and its XML."""
        dev = self.lookup(name)
        return dev.name(), dev.XMLDesc(0)

    def destroy(self, name: str) -> None:
        self.lookup(name).destroy()

    def undefine(self, name: str) -> None:
        self.lookup(name).undefine(0)

    def start(self, name: str) -> libvirt.virNodeDevice:
        dev = self.lookup(name)
        dev.create(0)
        return dev

    def set_autostart(self, name: str, autostart: bool) -> None:
        self.lookup(name).setAutostart(int(autostart))

    def detach(self, name: str, driver: str) -> None:
        """Detach a PCI device from the host for assignment (``driver``: libvirt's
        choice when empty)."""
        self.pci_device(name).detachFlags(driver or None, 0)

    def reattach(self, name: str) -> None:
        self.pci_device(name).reAttach()

    def reset(self, name: str) -> None:
        self.pci_device(name).reset()
