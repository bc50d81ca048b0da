"""NWFilterService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor. libvirt has no network
filter events, hence no Watch RPC.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import grpc
import libvirt

from services.common import paging
from services.common.backend import summaries
from services.common.config import Config
from services.common.libvirt_connection import LibvirtConnection
from services.nwfilter.backend import NWFilterBackend
from virtmesh.nwfilter.v1 import nwfilter_service_pb2 as pb
from virtmesh.nwfilter.v1 import nwfilter_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


def nwfilter(nwf: libvirt.virNWFilter) -> pb.NWFilter:
    root = ET.fromstring(nwf.XMLDesc())
    return pb.NWFilter(
        name=nwf.name(), uuid=nwf.UUIDString(), chain=root.get("chain", "root"),
        priority=int(root.get("priority", "0")), rule_count=len(root.findall("rule")),
        filter_refs=[ref.get("filter", "") for ref in root.findall("filterref")])


def binding(bound: libvirt.virNWFilterBinding) -> pb.NWFilterBinding:
    root = ET.fromstring(bound.XMLDesc())
    parameters: dict[str, list[str]] = {}
    for parameter in root.findall("filterref/parameter"):
        parameters.setdefault(parameter.get("name", ""), []).append(parameter.get("value", ""))
    mac = root.find("mac")
    return pb.NWFilterBinding(
        name=bound.portDev(), filter=bound.filterName(),
        owner_name=root.findtext("owner/name") or "", owner_uuid=root.findtext("owner/uuid") or "",
        mac=mac.get("address", "") if mac is not None else "",
        parameters={name: ",".join(values) for name, values in parameters.items()})


class NWFilterServicer(pb_grpc.NWFilterServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        self.backend = NWFilterBackend(connection)

    # -- filters --------------------------------------------------------------

    def ListNWFilters(self, request: pb.ListNWFiltersRequest,
                      context: Ctx) -> pb.ListNWFiltersResponse:
        chunk, token = paging.page(self.backend.conn.listAllNWFilters(0), lambda f: f.name(),
                                   request.page_size, request.page_token,
                                   paging.fingerprint("nwfilters"))
        return pb.ListNWFiltersResponse(nwfilters=summaries(chunk, nwfilter),
                                        next_page_token=token)

    def GetNWFilter(self, request: pb.GetNWFilterRequest, context: Ctx) -> pb.GetNWFilterResponse:
        return pb.GetNWFilterResponse(nwfilter=nwfilter(self.backend.lookup(request.name)))

    def GetNWFilterXML(self, request: pb.GetNWFilterXMLRequest,
                       context: Ctx) -> pb.GetNWFilterXMLResponse:
        return pb.GetNWFilterXMLResponse(xml=self.backend.lookup(request.name).XMLDesc())

    def DefineNWFilter(self, request: pb.DefineNWFilterRequest,
                       context: Ctx) -> pb.DefineNWFilterResponse:
        defined = self.backend.define(request.xml)
        return pb.DefineNWFilterResponse(nwfilter=nwfilter(defined))

    def UndefineNWFilter(self, request: pb.UndefineNWFilterRequest,
                         context: Ctx) -> pb.UndefineNWFilterResponse:
        self.backend.lookup(request.name).undefine()
        return pb.UndefineNWFilterResponse()

    # -- bindings -------------------------------------------------------------

    def CreateNWFilterBinding(self, request: pb.CreateNWFilterBindingRequest,
                              context: Ctx) -> pb.CreateNWFilterBindingResponse:
        created = self.backend.create_binding(request.xml)
        return pb.CreateNWFilterBindingResponse(binding=binding(created))

    def ListNWFilterBindings(self, request: pb.ListNWFilterBindingsRequest,
                             context: Ctx) -> pb.ListNWFilterBindingsResponse:
        chunk, token = paging.page(self.backend.conn.listAllNWFilterBindings(0),
                                   lambda b: b.portDev(), request.page_size, request.page_token,
                                   paging.fingerprint("bindings"))
        return pb.ListNWFilterBindingsResponse(bindings=summaries(chunk, binding),
                                               next_page_token=token)

    def GetNWFilterBinding(self, request: pb.GetNWFilterBindingRequest,
                           context: Ctx) -> pb.GetNWFilterBindingResponse:
        return pb.GetNWFilterBindingResponse(
            binding=binding(self.backend.lookup_binding(request.name)))

    def GetNWFilterBindingXML(self, request: pb.GetNWFilterBindingXMLRequest,
                              context: Ctx) -> pb.GetNWFilterBindingXMLResponse:
        return pb.GetNWFilterBindingXMLResponse(
            xml=self.backend.lookup_binding(request.name).XMLDesc())

    def DeleteNWFilterBinding(self, request: pb.DeleteNWFilterBindingRequest,
                              context: Ctx) -> pb.DeleteNWFilterBindingResponse:
        self.backend.lookup_binding(request.name).delete()
        return pb.DeleteNWFilterBindingResponse()
