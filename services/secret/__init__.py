"""The secret service: libvirt's secret driver (virtsecretd) as virtmesh.secret.v1.

By default the driver runs embedded in the service process, its state under
``<state_dir>/secret``: no libvirt daemon holds the secrets.
"""

from services.common.daemon import ServiceSpec
from services.secret.servicer import SecretServicer
from virtmesh.secret.v1 import secret_service_pb2

SPEC = ServiceSpec(
    name="secret",
    proto=secret_service_pb2,
    driver="secret",
    embedded=True,
    port_offset=2,
    objects=("SECRET",),
    servicer_factory=SecretServicer,
)
