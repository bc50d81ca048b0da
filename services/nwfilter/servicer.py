"""NWFilterService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor. libvirt has no network
filter events, hence no Watch RPC.
"""

from __future__ import annotations

import grpc

from services.common.config import Config
from services.common.libvirt_connection import LibvirtConnection
from services.common.servicer import DriverServicer
from services.nwfilter import convert
from services.nwfilter.backend import NWFilterBackend
from virtmesh.nwfilter.v1 import nwfilter_service_pb2 as pb
from virtmesh.nwfilter.v1 import nwfilter_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class NWFilterServicer(DriverServicer[NWFilterBackend, None], pb_grpc.NWFilterServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        super().__init__(NWFilterBackend(connection), config)

    # -- filters --------------------------------------------------------------

    def ListNWFilters(self, request: pb.ListNWFiltersRequest,
                      context: Ctx) -> pb.ListNWFiltersResponse:
        nwfilters, token = self.page(self.backend.list_filters(), convert.nwfilter_name,
                                     convert.nwfilter, request, "nwfilters")
        return pb.ListNWFiltersResponse(nwfilters=nwfilters, next_page_token=token)

    def GetNWFilter(self, request: pb.GetNWFilterRequest, context: Ctx) -> pb.GetNWFilterResponse:
        return pb.GetNWFilterResponse(nwfilter=convert.nwfilter(self.backend.lookup(request.name)))

    def GetNWFilterXML(self, request: pb.GetNWFilterXMLRequest,
                       context: Ctx) -> pb.GetNWFilterXMLResponse:
        return pb.GetNWFilterXMLResponse(xml=self.backend.xml(request.name))

    def DefineNWFilter(self, request: pb.DefineNWFilterRequest,
                       context: Ctx) -> pb.DefineNWFilterResponse:
        defined = self.backend.define(request.xml)
        return pb.DefineNWFilterResponse(nwfilter=convert.nwfilter(defined))

    def UndefineNWFilter(self, request: pb.UndefineNWFilterRequest,
                         context: Ctx) -> pb.UndefineNWFilterResponse:
        self.backend.undefine(request.name)
        return pb.UndefineNWFilterResponse()

    # -- bindings -------------------------------------------------------------

    def CreateNWFilterBinding(self, request: pb.CreateNWFilterBindingRequest,
                              context: Ctx) -> pb.CreateNWFilterBindingResponse:
        created = self.backend.create_binding(request.xml)
        return pb.CreateNWFilterBindingResponse(binding=convert.binding(created))

    def ListNWFilterBindings(self, request: pb.ListNWFilterBindingsRequest,
                             context: Ctx) -> pb.ListNWFilterBindingsResponse:
        bindings, token = self.page(self.backend.list_bindings(), convert.binding_port,
                                    convert.binding, request, "bindings")
        return pb.ListNWFilterBindingsResponse(bindings=bindings, next_page_token=token)

    def GetNWFilterBinding(self, request: pb.GetNWFilterBindingRequest,
                           context: Ctx) -> pb.GetNWFilterBindingResponse:
        return pb.GetNWFilterBindingResponse(
            binding=convert.binding(self.backend.lookup_binding(request.name)))

    def GetNWFilterBindingXML(self, request: pb.GetNWFilterBindingXMLRequest,
                              context: Ctx) -> pb.GetNWFilterBindingXMLResponse:
        return pb.GetNWFilterBindingXMLResponse(xml=self.backend.binding_xml(request.name))

    def DeleteNWFilterBinding(self, request: pb.DeleteNWFilterBindingRequest,
                              context: Ctx) -> pb.DeleteNWFilterBindingResponse:
        self.backend.delete_binding(request.name)
        return pb.DeleteNWFilterBindingResponse()
