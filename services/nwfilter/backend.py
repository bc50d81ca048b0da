"""The nwfilter service's libvirt calls: lookups of filters and bindings."""

from __future__ import annotations

import grpc
import libvirt

from services.common import documents
from services.common.backend import Backend, by_name_or_uuid
from services.common.errors import ServiceError, require


class NWFilterBackend(Backend):
    def lookup(self, name: str) -> libvirt.virNWFilter:
        """A filter by name or by UUID string."""
        conn = self.conn
        return by_name_or_uuid(name, conn.nwfilterLookupByUUIDString, conn.nwfilterLookupByName,
                               libvirt.VIR_ERR_NO_NWFILTER)

    def list_filters(self) -> list[libvirt.virNWFilter]:
        return self.conn.listAllNWFilters(0)

    def xml(self, name: str) -> str:
        return self.lookup(name).XMLDesc()

    def undefine(self, name: str) -> None:
        self.lookup(name).undefine()

    def lookup_binding(self, port_dev: str) -> libvirt.virNWFilterBinding:
        return self.conn.nwfilterBindingLookupByPortDev(require(port_dev, "name"))

    def list_bindings(self) -> list[libvirt.virNWFilterBinding]:
        return self.conn.listAllNWFilterBindings(0)

    def binding_xml(self, port_dev: str) -> str:
        return self.lookup_binding(port_dev).XMLDesc()

    def delete_binding(self, port_dev: str) -> None:
        self.lookup_binding(port_dev).delete()

    def define(self, xml: str) -> libvirt.virNWFilter:
        return documents.submit(self.conn.nwfilterDefineXMLFlags, xml,
                                libvirt.VIR_NWFILTER_DEFINE_VALIDATE, root="filter",
                                inspect=_check_filter_name)

    def create_binding(self, xml: str) -> libvirt.virNWFilterBinding:
        return documents.submit(self.conn.nwfilterBindingCreateXML, xml,
                                libvirt.VIR_NWFILTER_BINDING_CREATE_VALIDATE,
                                root="filterbinding")


def _check_filter_name(document: documents.Document) -> None:
    """libvirt stores a filter as <name>.xml and reports a name with '/' as a failure
    to create that file; say what is wrong instead."""
    name = document.attributes.get("name", "")
    if "/" in name:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"filter name {name!r} must not contain '/'", "INVALID_NAME")
