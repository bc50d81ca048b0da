"""The network service: libvirt's network driver (virtnetworkd) as virtmesh.network.v1."""

from services.common.daemon import ServiceSpec
from services.network.servicer import NetworkServicer
from virtmesh.network.v1 import network_service_pb2, network_service_pb2_grpc


def _busy(servicer: NetworkServicer) -> bool:
    """Never idle out while anyone watches network events."""
    return servicer.events.subscriber_count > 0


SPEC = ServiceSpec(
    name="network",
    default_uri="network:///system",
    descriptor=network_service_pb2.DESCRIPTOR.services_by_name["NetworkService"],
    add_to_server=network_service_pb2_grpc.add_NetworkServiceServicer_to_server,
    servicer_factory=NetworkServicer,
    busy=_busy,
)
