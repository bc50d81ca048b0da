"""The secret service: libvirt's secret driver (virtsecretd) as virtmesh.secret.v1.

By default the driver runs embedded in the service process, its state under
``<state_dir>/secret``: no libvirt daemon holds the secrets.
"""

from services.common.daemon import ServiceSpec
from services.secret.servicer import SecretServicer
from virtmesh.secret.v1 import secret_service_pb2, secret_service_pb2_grpc

SPEC = ServiceSpec(
    name="secret",
    default_uri="secret:///embed?root={state_dir}/secret",
    descriptor=secret_service_pb2.DESCRIPTOR.services_by_name["SecretService"],
    add_to_server=secret_service_pb2_grpc.add_SecretServiceServicer_to_server,
    servicer_factory=SecretServicer,
)
