"""The storage service: libvirt's storage driver (virtstoraged) as virtmesh.storage.v1.

No ``busy`` hook: watch streams and volume transfers are calls in flight, which
already keep the service from exiting for being idle.
"""

from services.common.daemon import ServiceSpec
from services.storage.servicer import StorageServicer
from virtmesh.storage.v1 import storage_service_pb2

SPEC = ServiceSpec(
    name="storage",
    proto=storage_service_pb2,
    driver="storage",
    embedded=False,
    port_offset=3,
    objects=("STORAGE_POOL", "STORAGE_VOL"),
    servicer_factory=StorageServicer,
)
