"""The nwfilter service's libvirt calls: lookups of filters and bindings."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import grpc
import libvirt

from services.common.backend import Backend, by_name_or_uuid
from services.common.errors import ServiceError, require


class NWFilterBackend(Backend):
    def lookup(self, name: str) -> libvirt.virNWFilter:
        """A filter by name or by UUID string."""
        conn = self.conn
        return by_name_or_uuid(name, conn.nwfilterLookupByUUIDString, conn.nwfilterLookupByName,
                               libvirt.VIR_ERR_NO_NWFILTER)

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
