"""NodeDeviceService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import libvirt

from services.common import paging
from services.common.backend import summaries
from services.common.config import Config
from services.common.events import EventHub, now
from services.common.libvirt_connection import LibvirtConnection
from services.nodedev import convert
from services.nodedev.backend import NodeDeviceBackend
from virtmesh.nodedev.v1 import nodedev_service_pb2 as pb
from virtmesh.nodedev.v1 import nodedev_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class NodeDeviceServicer(pb_grpc.NodeDeviceServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        self.backend = NodeDeviceBackend(connection)
        self.events: EventHub[pb.WatchNodeDeviceEventsResponse] = EventHub.fed_by(
            connection, config.max_event_watchers, self._register_events)

    def close(self) -> None:
        """The service is stopping: end event streams now rather than after the grace."""
        self.events.close_all("the service is shutting down")

    # -- events ---------------------------------------------------------------

    def _register_events(self, conn: libvirt.virConnect) -> None:
        def publish(dev: libvirt.virNodeDevice, **event: Any) -> None:
            self.events.publish(pb.WatchNodeDeviceEventsResponse(
                name=dev.name(), time=now(), **event))

        conn.nodeDeviceEventRegisterAny(
            None, libvirt.VIR_NODE_DEVICE_EVENT_ID_LIFECYCLE,
            lambda _c, dev, event, _detail, _o: publish(
                dev, lifecycle=pb.NodeDeviceLifecycleEvent(type=convert.lifecycle_event(event))),
            None)
        conn.nodeDeviceEventRegisterAny(
            None, libvirt.VIR_NODE_DEVICE_EVENT_ID_UPDATE,
            lambda _c, dev, _o: publish(dev, update=pb.NodeDeviceUpdateEvent()), None)

    def WatchNodeDeviceEvents(self, request: pb.WatchNodeDeviceEventsRequest,
                              context: Ctx) -> Iterator[pb.WatchNodeDeviceEventsResponse]:
        yield from self.events.watch(context, request.names, lambda: self.backend.conn)

    # -- devices --------------------------------------------------------------

    def ListNodeDevices(self, request: pb.ListNodeDevicesRequest,
                        context: Ctx) -> pb.ListNodeDevicesResponse:
        active = request.active if request.HasField("active") else None
        devices = self.backend.list_devices(convert.capability_flags(request.capabilities),
                                            active, request.parent)
        fingerprint = paging.fingerprint(sorted(request.capabilities), active, request.parent)
        chunk, token = paging.page(devices, lambda dev: dev.name(), request.page_size,
                                   request.page_token, fingerprint)
        return pb.ListNodeDevicesResponse(node_devices=summaries(chunk, convert.node_device),
                                          next_page_token=token)

    def GetNodeDevice(self, request: pb.GetNodeDeviceRequest,
                      context: Ctx) -> pb.GetNodeDeviceResponse:
        return pb.GetNodeDeviceResponse(
            node_device=convert.node_device(self.backend.lookup(request.name)))

    def GetNodeDeviceXML(self, request: pb.GetNodeDeviceXMLRequest,
                         context: Ctx) -> pb.GetNodeDeviceXMLResponse:
        dev = self.backend.lookup(request.name)
        return pb.GetNodeDeviceXMLResponse(name=dev.name(), xml=dev.XMLDesc(0))

    def CreateNodeDevice(self, request: pb.CreateNodeDeviceRequest,
                         context: Ctx) -> pb.CreateNodeDeviceResponse:
        dev = self.backend.create(request.xml, request.validate)
        return pb.CreateNodeDeviceResponse(node_device=convert.node_device(dev))

    def DestroyNodeDevice(self, request: pb.DestroyNodeDeviceRequest,
                          context: Ctx) -> pb.DestroyNodeDeviceResponse:
        self.backend.lookup(request.name).destroy()
        return pb.DestroyNodeDeviceResponse()

    def DefineNodeDevice(self, request: pb.DefineNodeDeviceRequest,
                         context: Ctx) -> pb.DefineNodeDeviceResponse:
        dev = self.backend.define(request.xml, request.validate)
        return pb.DefineNodeDeviceResponse(node_device=convert.node_device(dev))

    def UndefineNodeDevice(self, request: pb.UndefineNodeDeviceRequest,
                           context: Ctx) -> pb.UndefineNodeDeviceResponse:
        self.backend.lookup(request.name).undefine(0)
        return pb.UndefineNodeDeviceResponse()

    def StartNodeDevice(self, request: pb.StartNodeDeviceRequest,
                        context: Ctx) -> pb.StartNodeDeviceResponse:
        dev = self.backend.lookup(request.name)
        dev.create(0)
        return pb.StartNodeDeviceResponse(node_device=convert.node_device(dev))

    def SetNodeDeviceAutostart(self, request: pb.SetNodeDeviceAutostartRequest,
                               context: Ctx) -> pb.SetNodeDeviceAutostartResponse:
        self.backend.lookup(request.name).setAutostart(int(request.autostart))
        return pb.SetNodeDeviceAutostartResponse()

    def DetachNodeDevice(self, request: pb.DetachNodeDeviceRequest,
                         context: Ctx) -> pb.DetachNodeDeviceResponse:
        self.backend.pci_device(request.name).detachFlags(request.driver or None, 0)
        return pb.DetachNodeDeviceResponse()

    def ReattachNodeDevice(self, request: pb.ReattachNodeDeviceRequest,
                           context: Ctx) -> pb.ReattachNodeDeviceResponse:
        self.backend.pci_device(request.name).reAttach()
        return pb.ReattachNodeDeviceResponse()

    def ResetNodeDevice(self, request: pb.ResetNodeDeviceRequest,
                        context: Ctx) -> pb.ResetNodeDeviceResponse:
        self.backend.pci_device(request.name).reset()
        return pb.ResetNodeDeviceResponse()
