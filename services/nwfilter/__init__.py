"""The nwfilter service: libvirt's network filter driver (virtnwfilterd) as
virtmesh.nwfilter.v1, served by the host's libvirt daemon (the driver programs the
host's ebtables/iptables rules, so it cannot run embedded)."""

from services.common.daemon import ServiceSpec
from services.nwfilter.servicer import NWFilterServicer
from virtmesh.nwfilter.v1 import nwfilter_service_pb2

SPEC = ServiceSpec(
    name="nwfilter",
    proto=nwfilter_service_pb2,
    driver="nwfilter",
    embedded=False,
    port_offset=5,
    objects=("NWFILTER", "NWFILTER_BINDING"),
    servicer_factory=NWFilterServicer,
)
