"""The iface service: libvirt's host interface driver (virtinterfaced) as
virtmesh.iface.v1."""

from services.common.daemon import ServiceSpec
from services.iface.servicer import InterfaceServicer
from virtmesh.iface.v1 import iface_service_pb2, iface_service_pb2_grpc

SPEC = ServiceSpec(
    name="iface",
    default_uri="interface:///system",
    descriptor=iface_service_pb2.DESCRIPTOR.services_by_name["InterfaceService"],
    add_to_server=iface_service_pb2_grpc.add_InterfaceServiceServicer_to_server,
    servicer_factory=InterfaceServicer,
)
