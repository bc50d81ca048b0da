"""The nwfilter service's libvirt calls: lookups of filters and bindings."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import grpc
import libvirt

from services.common.errors import ServiceError, require
from services.common.libvirt_connection import LibvirtConnection


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class NWFilterBackend:
    def __init__(self, connection: LibvirtConnection) -> None:
        self.connection = connection

    @property
    def conn(self) -> libvirt.virConnect:
        return self.connection.conn

    def lookup(self, name: str) -> libvirt.virNWFilter:
        """A filter by name or by UUID string."""
        require(name, "name")
        conn = self.conn
        if _is_uuid(name):
            try:
                return conn.nwfilterLookupByUUIDString(name)
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_NWFILTER:
                    raise
        return conn.nwfilterLookupByName(name)

    def lookup_binding(self, port_dev: str) -> libvirt.virNWFilterBinding:
        return self.conn.nwfilterBindingLookupByPortDev(require(port_dev, "name"))

    def define(self, xml: str, validate: bool) -> libvirt.virNWFilter:
        _check_filter_name(require(xml, "xml"))
        flags = libvirt.VIR_NWFILTER_DEFINE_VALIDATE if validate else 0
        return self.conn.nwfilterDefineXMLFlags(xml, flags)

    def create_binding(self, xml: str, validate: bool) -> libvirt.virNWFilterBinding:
        flags = libvirt.VIR_NWFILTER_BINDING_CREATE_VALIDATE if validate else 0
        return self.conn.nwfilterBindingCreateXML(require(xml, "xml"), flags)


def _check_filter_name(xml: str) -> None:
    """libvirt stores a filter as <name>.xml and reports a name with '/' as a failure
    to create that file; say what is wrong instead. Malformed XML is libvirt's to report."""
    try:
        name = ET.fromstring(xml).get("name") or ""
    except ET.ParseError:
        return
    if "/" in name:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"filter name {name!r} must not contain '/'", "INVALID_NAME")
