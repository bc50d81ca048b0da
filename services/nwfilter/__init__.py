"""The nwfilter service: libvirt's network filter driver (virtnwfilterd) as
virtmesh.nwfilter.v1, served by the host's libvirt daemon (the driver programs the
host's ebtables/iptables rules, so it cannot run embedded)."""

from services.common.daemon import ServiceSpec
from services.nwfilter.servicer import NWFilterServicer
from virtmesh.nwfilter.v1 import nwfilter_service_pb2, nwfilter_service_pb2_grpc

SPEC = ServiceSpec(
    name="nwfilter",
    default_uri="nwfilter:///system",
    descriptor=nwfilter_service_pb2.DESCRIPTOR.services_by_name["NWFilterService"],
    add_to_server=nwfilter_service_pb2_grpc.add_NWFilterServiceServicer_to_server,
    servicer_factory=NWFilterServicer,
)
