"""NodeDeviceService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.common.config import Config
from services.common.libvirt_connection import LibvirtConnection
from services.common.servicer import DriverServicer, optional_bools
from services.nodedev import convert
from services.nodedev.backend import NodeDeviceBackend
from virtmesh.nodedev.v1 import nodedev_service_pb2 as pb
from virtmesh.nodedev.v1 import nodedev_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class NodeDeviceServicer(DriverServicer[NodeDeviceBackend, pb.WatchNodeDeviceEventsResponse],
                         pb_grpc.NodeDeviceServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        backend = NodeDeviceBackend(connection)
        super().__init__(backend, config, backend.register_events, convert.device_event)

    async def WatchNodeDeviceEvents(self, request: pb.WatchNodeDeviceEventsRequest,
                                   context: grpc.aio.ServicerContext
                                   ) -> AsyncIterator[pb.WatchNodeDeviceEventsResponse]:
        async for event in self.watch(request, context, pb.WatchNodeDeviceEventsResponse):
            yield event

    # -- devices --------------------------------------------------------------

    def ListNodeDevices(self, request: pb.ListNodeDevicesRequest,
                        context: Ctx) -> pb.ListNodeDevicesResponse:
        active = optional_bools(request, "active")["active"]
        devices = self.backend.list_devices(convert.capability_flags(request.capabilities),
                                            active, request.parent)
        node_devices, token = self.page(devices, convert.device_name, convert.node_device,
                                        request, sorted(request.capabilities), active,
                                        request.parent)
        return pb.ListNodeDevicesResponse(node_devices=node_devices, next_page_token=token)

    def GetNodeDevice(self, request: pb.GetNodeDeviceRequest,
                      context: Ctx) -> pb.GetNodeDeviceResponse:
        return pb.GetNodeDeviceResponse(
            node_device=convert.node_device(self.backend.lookup(request.name)))

    def GetNodeDeviceXML(self, request: pb.GetNodeDeviceXMLRequest,
                         context: Ctx) -> pb.GetNodeDeviceXMLResponse:
        name, xml = self.backend.xml(request.name)
        return pb.GetNodeDeviceXMLResponse(name=name, xml=xml)

    def CreateNodeDevice(self, request: pb.CreateNodeDeviceRequest,
                         context: Ctx) -> pb.CreateNodeDeviceResponse:
        dev = self.backend.create(request.xml, request.validate)
        return pb.CreateNodeDeviceResponse(node_device=convert.node_device(dev))

    def DestroyNodeDevice(self, request: pb.DestroyNodeDeviceRequest,
                          context: Ctx) -> pb.DestroyNodeDeviceResponse:
        self.backend.destroy(request.name)
        return pb.DestroyNodeDeviceResponse()

    def DefineNodeDevice(self, request: pb.DefineNodeDeviceRequest,
                         context: Ctx) -> pb.DefineNodeDeviceResponse:
        dev = self.backend.define(request.xml, request.validate)
        return pb.DefineNodeDeviceResponse(node_device=convert.node_device(dev))

    def UndefineNodeDevice(self, request: pb.UndefineNodeDeviceRequest,
                           context: Ctx) -> pb.UndefineNodeDeviceResponse:
        self.backend.undefine(request.name)
        return pb.UndefineNodeDeviceResponse()

    def StartNodeDevice(self, request: pb.StartNodeDeviceRequest,
                        context: Ctx) -> pb.StartNodeDeviceResponse:
        dev = self.backend.start(request.name)
        return pb.StartNodeDeviceResponse(node_device=convert.node_device(dev))

    def SetNodeDeviceAutostart(self, request: pb.SetNodeDeviceAutostartRequest,
                               context: Ctx) -> pb.SetNodeDeviceAutostartResponse:
        self.backend.set_autostart(request.name, request.autostart)
        return pb.SetNodeDeviceAutostartResponse()

    def DetachNodeDevice(self, request: pb.DetachNodeDeviceRequest,
                         context: Ctx) -> pb.DetachNodeDeviceResponse:
        self.backend.detach(request.name, request.driver)
        return pb.DetachNodeDeviceResponse()

    def ReattachNodeDevice(self, request: pb.ReattachNodeDeviceRequest,
                           context: Ctx) -> pb.ReattachNodeDeviceResponse:
        self.backend.reattach(request.name)
        return pb.ReattachNodeDeviceResponse()

    def ResetNodeDevice(self, request: pb.ResetNodeDeviceRequest,
                        context: Ctx) -> pb.ResetNodeDeviceResponse:
        self.backend.reset(request.name)
        return pb.ResetNodeDeviceResponse()

    def LookupSCSIHostByWWN(self, request: pb.LookupSCSIHostByWWNRequest,
                            context: Ctx) -> pb.LookupSCSIHostByWWNResponse:
        dev = self.backend.scsi_host(request.wwnn, request.wwpn)
        return pb.LookupSCSIHostByWWNResponse(node_device=convert.node_device(dev))
