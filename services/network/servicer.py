"""NetworkService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import libvirt

from services.common import paging
from services.common.backend import summaries
from services.common.config import Config
from services.common.events import EventHub, now
from services.common.libvirt_connection import LibvirtConnection
from services.network import convert
from services.network.backend import NetworkBackend
from virtmesh.network.v1 import network_service_pb2 as pb
from virtmesh.network.v1 import network_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class NetworkServicer(pb_grpc.NetworkServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        self.backend = NetworkBackend(connection)
        self.events: EventHub[pb.WatchNetworkEventsResponse] = EventHub.fed_by(
            connection, config.max_event_watchers, self._register_events)

    def close(self) -> None:
        """The service is stopping: end event streams now rather than after the grace."""
        self.events.close_all("the service is shutting down")

    # -- events ---------------------------------------------------------------

    def _register_events(self, conn: libvirt.virConnect) -> None:
        def publish(_conn: libvirt.virConnect, net: libvirt.virNetwork, event: int,
                    _detail: int, _opaque: object) -> None:
            self.events.publish(pb.WatchNetworkEventsResponse(
                name=net.name(), uuid=net.UUIDString(), time=now(),
                type=convert.event_type(event)))

        conn.networkEventRegisterAny(None, libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE, publish, None)

    def WatchNetworkEvents(self, request: pb.WatchNetworkEventsRequest,
                           context: Ctx) -> Iterator[pb.WatchNetworkEventsResponse]:
        yield from self.events.watch(context, request.names, lambda: self.backend.conn)

    # -- networks -------------------------------------------------------------

    def ListNetworks(self, request: pb.ListNetworksRequest,
                     context: Ctx) -> pb.ListNetworksResponse:
        filters = {name: getattr(request, name) if request.HasField(name) else None
                   for name in ("active", "persistent", "autostart")}
        networks = self.backend.list_networks(**filters)
        chunk, token = paging.page(networks, lambda net: net.name(), request.page_size,
                                   request.page_token, paging.fingerprint(sorted(filters.items())))
        return pb.ListNetworksResponse(networks=summaries(chunk, convert.network),
                                       next_page_token=token)

    def GetNetwork(self, request: pb.GetNetworkRequest, context: Ctx) -> pb.GetNetworkResponse:
        return pb.GetNetworkResponse(network=convert.network(self.backend.lookup(request.name)))

    def GetNetworkXML(self, request: pb.GetNetworkXMLRequest,
                      context: Ctx) -> pb.GetNetworkXMLResponse:
        net = self.backend.lookup(request.name)
        flags = libvirt.VIR_NETWORK_XML_INACTIVE if request.inactive else 0
        return pb.GetNetworkXMLResponse(name=net.name(), xml=net.XMLDesc(flags))

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
        net = self.backend.lookup(request.name)
        net.create()
        return pb.StartNetworkResponse(network=convert.network(net))

    def StopNetwork(self, request: pb.StopNetworkRequest, context: Ctx) -> pb.StopNetworkResponse:
        self.backend.lookup(request.name).destroy()
        return pb.StopNetworkResponse()

    def UndefineNetwork(self, request: pb.UndefineNetworkRequest,
                        context: Ctx) -> pb.UndefineNetworkResponse:
        self.backend.lookup(request.name).undefine()
        return pb.UndefineNetworkResponse()

    def SetNetworkAutostart(self, request: pb.SetNetworkAutostartRequest,
                            context: Ctx) -> pb.SetNetworkAutostartResponse:
        self.backend.lookup(request.name).setAutostart(int(request.autostart))
        return pb.SetNetworkAutostartResponse()

    def UpdateNetwork(self, request: pb.UpdateNetworkRequest,
                      context: Ctx) -> pb.UpdateNetworkResponse:
        command = convert.update_command(request.command)
        section = convert.section(request.section)
        net = self.backend.lookup(request.name)
        parent = request.parent_index if request.HasField("parent_index") else None
        self.backend.update(net, command, section, parent, request.xml, request.live,
                            request.config)
        return pb.UpdateNetworkResponse()

    def ListDHCPLeases(self, request: pb.ListDHCPLeasesRequest,
                       context: Ctx) -> pb.ListDHCPLeasesResponse:
        net = self.backend.lookup(request.name)
        leases = [convert.lease(record) for record in self.backend.leases(net, request.mac)]
        chunk, token = paging.page(leases, lambda lease: lease.ip_address, request.page_size,
                                   request.page_token,
                                   paging.fingerprint(net.UUIDString(), request.mac.lower()))
        return pb.ListDHCPLeasesResponse(name=net.name(), leases=chunk, next_page_token=token)

    # -- ports ----------------------------------------------------------------

    def CreateNetworkPort(self, request: pb.CreateNetworkPortRequest,
                          context: Ctx) -> pb.CreateNetworkPortResponse:
        net = self.backend.lookup(request.name)
        created = self.backend.create_port(net, request.xml, request.reclaim)
        return pb.CreateNetworkPortResponse(port=convert.port(net.name(), created.XMLDesc(0)))

    def ListNetworkPorts(self, request: pb.ListNetworkPortsRequest,
                         context: Ctx) -> pb.ListNetworkPortsResponse:
        net = self.backend.lookup(request.name)
        ports = net.listAllPorts(0)
        chunk, token = paging.page(ports, lambda port: port.UUIDString(), request.page_size,
                                   request.page_token, paging.fingerprint(net.UUIDString()))
        return pb.ListNetworkPortsResponse(
            name=net.name(), ports=[convert.port(net.name(), port.XMLDesc(0)) for port in chunk],
            next_page_token=token)

    def GetNetworkPort(self, request: pb.GetNetworkPortRequest,
                       context: Ctx) -> pb.GetNetworkPortResponse:
        net = self.backend.lookup(request.name)
        found = self.backend.port(net, request.port)
        return pb.GetNetworkPortResponse(port=convert.port(net.name(), found.XMLDesc(0)))

    def GetNetworkPortXML(self, request: pb.GetNetworkPortXMLRequest,
                          context: Ctx) -> pb.GetNetworkPortXMLResponse:
        net = self.backend.lookup(request.name)
        found = self.backend.port(net, request.port)
        return pb.GetNetworkPortXMLResponse(name=net.name(), port=found.UUIDString(),
                                            xml=found.XMLDesc(0))

    def DeleteNetworkPort(self, request: pb.DeleteNetworkPortRequest,
                          context: Ctx) -> pb.DeleteNetworkPortResponse:
        self.backend.port(self.backend.lookup(request.name), request.port).delete(0)
        return pb.DeleteNetworkPortResponse()
