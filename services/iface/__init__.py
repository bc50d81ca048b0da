"""The iface service: libvirt's host interface driver (virtinterfaced) as
virtmesh.iface.v1."""

from services.common.daemon import ServiceSpec
from services.iface.servicer import InterfaceServicer
from virtmesh.iface.v1 import iface_service_pb2

SPEC = ServiceSpec(
    name="iface",
    proto=iface_service_pb2,
    driver="interface",
    embedded=False,
    port_offset=7,
    objects=("INTERFACE",),
    servicer_factory=InterfaceServicer,
)
