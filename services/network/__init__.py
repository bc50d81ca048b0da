"""The network service: libvirt's network driver (virtnetworkd) as virtmesh.network.v1."""

from services.common.daemon import ServiceSpec
from services.network.servicer import NetworkServicer
from virtmesh.network.v1 import network_service_pb2

SPEC = ServiceSpec(
    name="network",
    proto=network_service_pb2,
    driver="network",
    embedded=False,
    port_offset=4,
    objects=("NETWORK", "NETWORK_PORT"),
    servicer_factory=NetworkServicer,
)
