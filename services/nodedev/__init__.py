"""The nodedev service: libvirt's node device driver (virtnodedevd) as
virtmesh.nodedev.v1."""

from services.common.daemon import ServiceSpec
from services.nodedev.servicer import NodeDeviceServicer
from virtmesh.nodedev.v1 import nodedev_service_pb2

SPEC = ServiceSpec(
    name="nodedev",
    proto=nodedev_service_pb2,
    driver="nodedev",
    embedded=False,
    port_offset=6,
    objects=("NODE_DEVICE",),
    servicer_factory=NodeDeviceServicer,
)
