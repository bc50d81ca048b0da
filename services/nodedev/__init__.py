"""The nodedev service: libvirt's node device driver (virtnodedevd) as
virtmesh.nodedev.v1."""

from services.common.daemon import ServiceSpec
from services.nodedev.servicer import NodeDeviceServicer
from virtmesh.nodedev.v1 import nodedev_service_pb2, nodedev_service_pb2_grpc


def _busy(servicer: NodeDeviceServicer) -> bool:
    """Never idle out while anyone watches device events."""
    return servicer.events.subscriber_count > 0


SPEC = ServiceSpec(
    name="nodedev",
    default_uri="nodedev:///system",
    descriptor=nodedev_service_pb2.DESCRIPTOR.services_by_name["NodeDeviceService"],
    add_to_server=nodedev_service_pb2_grpc.add_NodeDeviceServiceServicer_to_server,
    servicer_factory=NodeDeviceServicer,
    busy=_busy,
)
