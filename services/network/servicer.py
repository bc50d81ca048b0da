"""NetworkService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.common import paging
from services.common.config import Config
from services.common.libvirt_connection import LibvirtConnection
from services.common.servicer import DriverServicer, optional_bools
from services.network import convert
from services.network.backend import NetworkBackend
from virtmesh.network.v1 import network_service_pb2 as pb
from virtmesh.network.v1 import network_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class NetworkServicer(DriverServicer[NetworkBackend, pb.WatchNetworkEventsResponse],
                      pb_grpc.NetworkServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        backend = NetworkBackend(connection)
        super().__init__(backend, config, backend.register_events, convert.network_event)

    async def WatchNetworkEvents(self, request: pb.WatchNetworkEventsRequest,
                                context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[pb.WatchNetworkEventsResponse]:
        async for event in self.watch(request, context, pb.WatchNetworkEventsResponse):
            yield event

    # -- networks -------------------------------------------------------------

    def ListNetworks(self, request: pb.ListNetworksRequest,
                     context: Ctx) -> pb.ListNetworksResponse:
        filters = optional_bools(request, "active", "persistent", "autostart")
        networks, token = self.page(self.backend.list_networks(**filters), convert.network_name,
                                    convert.network, request, sorted(filters.items()))
        return pb.ListNetworksResponse(networks=networks, next_page_token=token)

    def GetNetwork(self, request: pb.GetNetworkRequest, context: Ctx) -> pb.GetNetworkResponse:
        return pb.GetNetworkResponse(network=convert.network(self.backend.lookup(request.name)))

    def GetNetworkXML(self, request: pb.GetNetworkXMLRequest,
                      context: Ctx) -> pb.GetNetworkXMLResponse:
        name, xml = self.backend.xml(request.name, request.inactive)
        return pb.GetNetworkXMLResponse(name=name, xml=xml)

    def DefineNetwork(self, request: pb.DefineNetworkRequest,
                      context: Ctx) -> pb.DefineNetworkResponse:
        net = self.backend.define(request.xml)
        return pb.DefineNetworkResponse(network=convert.network(net))

    def CreateNetwork(self, request: pb.CreateNetworkRequest,
                      context: Ctx) -> pb.CreateNetworkResponse:
        net = self.backend.create(request.xml)
        return pb.CreateNetworkResponse(network=convert.network(net))

    def StartNetwork(self, request: pb.StartNetworkRequest,
                     context: Ctx) -> pb.StartNetworkResponse:
        net = self.backend.start(request.name)
        return pb.StartNetworkResponse(network=convert.network(net))

    def StopNetwork(self, request: pb.StopNetworkRequest, context: Ctx) -> pb.StopNetworkResponse:
        self.backend.stop(request.name)
        return pb.StopNetworkResponse()

    def UndefineNetwork(self, request: pb.UndefineNetworkRequest,
                        context: Ctx) -> pb.UndefineNetworkResponse:
        self.backend.undefine(request.name)
        return pb.UndefineNetworkResponse()

    def SetNetworkAutostart(self, request: pb.SetNetworkAutostartRequest,
                            context: Ctx) -> pb.SetNetworkAutostartResponse:
        self.backend.set_autostart(request.name, request.autostart)
        return pb.SetNetworkAutostartResponse()

    def UpdateNetwork(self, request: pb.UpdateNetworkRequest,
                      context: Ctx) -> pb.UpdateNetworkResponse:
        command = convert.update_command(request.command)
        section = convert.section(request.section)
        parent = request.parent_index if request.HasField("parent_index") else None
        self.backend.update(request.name, command, section, parent, request.xml, request.live,
                            request.config)
        return pb.UpdateNetworkResponse()

    def ListDHCPLeases(self, request: pb.ListDHCPLeasesRequest,
                       context: Ctx) -> pb.ListDHCPLeasesResponse:
        name, uuid, records = self.backend.leases(request.name, request.mac)
        leases = [convert.lease(record) for record in records]
        chunk, token = paging.page(leases, lambda lease: lease.ip_address, request.page_size,
                                   request.page_token,
                                   paging.fingerprint(uuid, request.mac.lower()))
        return pb.ListDHCPLeasesResponse(name=name, leases=chunk, next_page_token=token)

    # -- ports ----------------------------------------------------------------

    def CreateNetworkPort(self, request: pb.CreateNetworkPortRequest,
                          context: Ctx) -> pb.CreateNetworkPortResponse:
        name, created = self.backend.create_port(request.name, request.xml, request.reclaim)
        return pb.CreateNetworkPortResponse(port=convert.port(name, created))

    def ListNetworkPorts(self, request: pb.ListNetworkPortsRequest,
                         context: Ctx) -> pb.ListNetworkPortsResponse:
        name, uuid, ports = self.backend.list_ports(request.name)
        chunk, token = paging.page(ports, convert.port_uuid, request.page_size,
                                   request.page_token, paging.fingerprint(uuid))
        return pb.ListNetworkPortsResponse(
            name=name, ports=[convert.port(name, port) for port in chunk], next_page_token=token)

    def GetNetworkPort(self, request: pb.GetNetworkPortRequest,
                       context: Ctx) -> pb.GetNetworkPortResponse:
        name, found = self.backend.port(request.name, request.port)
        return pb.GetNetworkPortResponse(port=convert.port(name, found))

    def GetNetworkPortXML(self, request: pb.GetNetworkPortXMLRequest,
                          context: Ctx) -> pb.GetNetworkPortXMLResponse:
        name, port, xml = self.backend.port_xml(request.name, request.port)
        return pb.GetNetworkPortXMLResponse(name=name, port=port, xml=xml)

    def DeleteNetworkPort(self, request: pb.DeleteNetworkPortRequest,
                          context: Ctx) -> pb.DeleteNetworkPortResponse:
        self.backend.delete_port(request.name, request.port)
        return pb.DeleteNetworkPortResponse()

    def GetNetworkBridgeName(self, request: pb.GetNetworkBridgeNameRequest,
                             context: Ctx) -> pb.GetNetworkBridgeNameResponse:
        name, bridge = self.backend.bridge_name(request.name)
        return pb.GetNetworkBridgeNameResponse(name=name, bridge=bridge)

    def GetNetworkPortParameters(self, request: pb.GetNetworkPortParametersRequest,
                                 context: Ctx) -> pb.GetNetworkPortParametersResponse:
        name, port, parameters = self.backend.port_parameters(request.name, request.port)
        return pb.GetNetworkPortParametersResponse(name=name, port=port,
                                                   bandwidth=convert.bandwidth(parameters))

    def SetNetworkPortParameters(self, request: pb.SetNetworkPortParametersRequest,
                                 context: Ctx) -> pb.SetNetworkPortParametersResponse:
        name, port, parameters = self.backend.set_port_parameters(
            request.name, request.port, convert.port_parameters(request.bandwidth))
        return pb.SetNetworkPortParametersResponse(name=name, port=port,
                                                   bandwidth=convert.bandwidth(parameters))
