"""InterfaceService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor. libvirt has no
interface events, hence no Watch RPC.
"""

from __future__ import annotations

import grpc

from services.common.config import Config
from services.common.errors import ServiceError
from services.common.libvirt_connection import LibvirtConnection
from services.common.servicer import DriverServicer, optional_bools
from services.iface import convert
from services.iface.backend import InterfaceBackend
from virtmesh.iface.v1 import iface_service_pb2 as pb
from virtmesh.iface.v1 import iface_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class InterfaceServicer(DriverServicer[InterfaceBackend, None],
                        pb_grpc.InterfaceServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        super().__init__(InterfaceBackend(connection), config)

    def ListInterfaces(self, request: pb.ListInterfacesRequest,
                       context: Ctx) -> pb.ListInterfacesResponse:
        active = optional_bools(request, "active")["active"]
        interfaces, token = self.page(self.backend.list_interfaces(active),
                                      convert.interface_name, convert.interface, request,
                                      active)
        return pb.ListInterfacesResponse(interfaces=interfaces, next_page_token=token)

    def GetInterface(self, request: pb.GetInterfaceRequest,
                     context: Ctx) -> pb.GetInterfaceResponse:
        selector = request.WhichOneof("selector")
        if selector == "mac":
            found = self.backend.lookup_mac(request.mac)
        elif selector == "name":
            found = self.backend.lookup(request.name)
        else:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "name or mac is required",
                               "MISSING_FIELD")
        return pb.GetInterfaceResponse(interface=convert.interface(found))

    def GetInterfaceXML(self, request: pb.GetInterfaceXMLRequest,
                        context: Ctx) -> pb.GetInterfaceXMLResponse:
        name, xml = self.backend.xml(request.name, request.inactive)
        return pb.GetInterfaceXMLResponse(name=name, xml=xml)

    def DefineInterface(self, request: pb.DefineInterfaceRequest,
                        context: Ctx) -> pb.DefineInterfaceResponse:
        iface = self.backend.define(request.xml)
        return pb.DefineInterfaceResponse(interface=convert.interface(iface))

    def UndefineInterface(self, request: pb.UndefineInterfaceRequest,
                          context: Ctx) -> pb.UndefineInterfaceResponse:
        self.backend.undefine(request.name)
        return pb.UndefineInterfaceResponse()

    def StartInterface(self, request: pb.StartInterfaceRequest,
                       context: Ctx) -> pb.StartInterfaceResponse:
        iface = self.backend.start(request.name)
        return pb.StartInterfaceResponse(interface=convert.interface(iface))

    def StopInterface(self, request: pb.StopInterfaceRequest,
                      context: Ctx) -> pb.StopInterfaceResponse:
        self.backend.stop(request.name)
        return pb.StopInterfaceResponse()

    def BeginInterfaceChange(self, request: pb.BeginInterfaceChangeRequest,
                             context: Ctx) -> pb.BeginInterfaceChangeResponse:
        self.backend.begin_change()
        return pb.BeginInterfaceChangeResponse()

    def CommitInterfaceChange(self, request: pb.CommitInterfaceChangeRequest,
                              context: Ctx) -> pb.CommitInterfaceChangeResponse:
        self.backend.commit_change()
        return pb.CommitInterfaceChangeResponse()

    def RollbackInterfaceChange(self, request: pb.RollbackInterfaceChangeRequest,
                                context: Ctx) -> pb.RollbackInterfaceChangeResponse:
        self.backend.rollback_change()
        return pb.RollbackInterfaceChangeResponse()
