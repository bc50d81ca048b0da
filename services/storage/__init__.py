"""The storage service: libvirt's storage driver (virtstoraged) as virtmesh.storage.v1.

No ``busy`` hook: watch streams and volume transfers are calls in flight, which
already keep the service from exiting for being idle.
"""

from services.common.daemon import ServiceSpec
from services.storage.servicer import StorageServicer
from virtmesh.storage.v1 import storage_service_pb2, storage_service_pb2_grpc

SPEC = ServiceSpec(
    name="storage",
    default_uri="storage:///system",
    descriptor=storage_service_pb2.DESCRIPTOR.services_by_name["StorageService"],
    add_to_server=storage_service_pb2_grpc.add_StorageServiceServicer_to_server,
    servicer_factory=StorageServicer,
)
