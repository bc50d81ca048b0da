"""InterfaceService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor. libvirt has no
interface events, hence no event hub.
"""

from __future__ import annotations

import grpc
import libvirt

from services.common import paging
from services.common.backend import summaries
from services.common.config import Config
from services.common.errors import ServiceError
from services.common.libvirt_connection import LibvirtConnection
from services.iface.backend import InterfaceBackend, interface
from virtmesh.iface.v1 import iface_service_pb2 as pb
from virtmesh.iface.v1 import iface_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class InterfaceServicer(pb_grpc.InterfaceServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        self.backend = InterfaceBackend(connection)

    def ListInterfaces(self, request: pb.ListInterfacesRequest,
                       context: Ctx) -> pb.ListInterfacesResponse:
        active = request.active if request.HasField("active") else None
        chunk, token = paging.page(self.backend.list_interfaces(active),
                                   lambda iface: iface.name(), request.page_size,
                                   request.page_token, paging.fingerprint(active))
        return pb.ListInterfacesResponse(interfaces=summaries(chunk, interface),
                                         next_page_token=token)

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
        return pb.GetInterfaceResponse(interface=interface(found))

    def GetInterfaceXML(self, request: pb.GetInterfaceXMLRequest,
                        context: Ctx) -> pb.GetInterfaceXMLResponse:
        iface = self.backend.lookup(request.name)
        flags = libvirt.VIR_INTERFACE_XML_INACTIVE if request.inactive else 0
        return pb.GetInterfaceXMLResponse(name=iface.name(), xml=iface.XMLDesc(flags))

    def DefineInterface(self, request: pb.DefineInterfaceRequest,
                        context: Ctx) -> pb.DefineInterfaceResponse:
        iface = self.backend.define(request.xml)
        return pb.DefineInterfaceResponse(interface=interface(iface))

    def UndefineInterface(self, request: pb.UndefineInterfaceRequest,
                          context: Ctx) -> pb.UndefineInterfaceResponse:
        self.backend.lookup(request.name).undefine()
        return pb.UndefineInterfaceResponse()

    def StartInterface(self, request: pb.StartInterfaceRequest,
                       context: Ctx) -> pb.StartInterfaceResponse:
        iface = self.backend.lookup(request.name)
        iface.create(0)
        return pb.StartInterfaceResponse(interface=interface(iface))

    def StopInterface(self, request: pb.StopInterfaceRequest,
                      context: Ctx) -> pb.StopInterfaceResponse:
        self.backend.lookup(request.name).destroy(0)
        return pb.StopInterfaceResponse()

    def BeginInterfaceChange(self, request: pb.BeginInterfaceChangeRequest,
                             context: Ctx) -> pb.BeginInterfaceChangeResponse:
        self.backend.conn.changeBegin(0)
        return pb.BeginInterfaceChangeResponse()

    def CommitInterfaceChange(self, request: pb.CommitInterfaceChangeRequest,
                              context: Ctx) -> pb.CommitInterfaceChangeResponse:
        self.backend.conn.changeCommit(0)
        return pb.CommitInterfaceChangeResponse()

    def RollbackInterfaceChange(self, request: pb.RollbackInterfaceChangeRequest,
                                context: Ctx) -> pb.RollbackInterfaceChangeResponse:
        self.backend.conn.changeRollback(0)
        return pb.RollbackInterfaceChangeResponse()
