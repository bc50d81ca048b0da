"""The secret service: libvirt's secret driver (virtsecretd) as virtmesh.secret.v1.

By default the service speaks to the host's libvirt daemon (``secret:///system``),
not to a driver embedded in its own process, for two reasons (docs/drivers.md,
"Why the secret service uses the host's daemon"):

- compute's embedded QEMU driver asks for a secret (a LUKS passphrase, a Ceph or
  iSCSI key) on ``secret:///system``, which from inside an embedded driver is the
  modular ``virtsecretd`` socket (the mesh publishes libvirtd's socket under that
  name): the secrets this service defines must be those, or no guest can use them;
- libvirt 9.0's embedded secret driver crashes its process on undefine and on
  ephemeral secrets (services/secret/backend.py probes for it).

``--uri secret:///embed?root=...`` still runs the driver embedded (a pod without
a libvirt daemon does), with those two calls refused where they would crash.
"""

from services.common.daemon import ServiceSpec
from services.secret.servicer import SecretServicer
from virtmesh.secret.v1 import secret_service_pb2

SPEC = ServiceSpec(
    name="secret",
    proto=secret_service_pb2,
    driver="secret",
    embedded=False,
    embeddable=True,
    port_offset=2,
    objects=("SECRET",),
    servicer_factory=SecretServicer,
)
