"""ComputeService: proto requests in, backend calls, proto responses out.

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
from services.common.errors import require
from services.common.events import EventHub, now
from services.common.libvirt_connection import LibvirtConnection
from services.common.version import VERSION
from services.compute import convert
from services.compute.backend import ComputeBackend, scope_flags
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext

_SHUTDOWN_FLAGS = {
    pb.POWER_METHOD_UNSPECIFIED: libvirt.VIR_DOMAIN_SHUTDOWN_DEFAULT,
    pb.POWER_METHOD_ACPI: libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
    pb.POWER_METHOD_GUEST_AGENT: libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT,
    pb.POWER_METHOD_SIGNAL: libvirt.VIR_DOMAIN_SHUTDOWN_SIGNAL,
}
_REBOOT_FLAGS = {
    pb.POWER_METHOD_UNSPECIFIED: libvirt.VIR_DOMAIN_REBOOT_DEFAULT,
    pb.POWER_METHOD_ACPI: libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN,
    pb.POWER_METHOD_GUEST_AGENT: libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT,
    pb.POWER_METHOD_SIGNAL: libvirt.VIR_DOMAIN_REBOOT_SIGNAL,
}


class ComputeServicer(pb_grpc.ComputeServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        self.backend = ComputeBackend(connection)
        self.events: EventHub[pb.WatchDomainEventsResponse] = EventHub.fed_by(
            connection, config.max_event_watchers, self._register_events)

    def close(self) -> None:
        """The service is stopping: end event streams now rather than after the grace."""
        self.events.close_all("the service is shutting down")

    def stopped(self) -> None:
        """The last call has ended: let go of the parse sandbox."""
        self.backend.close()

    # -- events ---------------------------------------------------------------

    def _register_events(self, conn: libvirt.virConnect) -> None:
        def publish(dom: libvirt.virDomain, **event: Any) -> None:
            self.events.publish(pb.WatchDomainEventsResponse(
                name=dom.name(), uuid=dom.UUIDString(), time=now(), **event))

        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            lambda _c, dom, event, detail, _o: publish(
                dom, lifecycle=convert.lifecycle_event(event, detail)), None)
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
            lambda _c, dom, _o: publish(dom, reboot=pb.RebootEvent()), None)
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
            lambda _c, dom, dev, _o: publish(dom, device_added=pb.DeviceAddedEvent(device=dev)),
            None)
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
            lambda _c, dom, dev, _o: publish(
                dom, device_removed=pb.DeviceRemovedEvent(device=dev)), None)

    def WatchDomainEvents(self, request: pb.WatchDomainEventsRequest,
                          context: Ctx) -> Iterator[pb.WatchDomainEventsResponse]:
        yield from self.events.watch(context, request.names, lambda: self.backend.conn)

    # -- domains --------------------------------------------------------------

    def ListDomains(self, request: pb.ListDomainsRequest, context: Ctx) -> pb.ListDomainsResponse:
        filters = {name: getattr(request, name) if request.HasField(name) else None
                   for name in ("active", "persistent", "autostart")}
        domains = self.backend.list_domains(**filters)
        if request.states:
            states = set(request.states)
            domains = [dom for dom in domains if convert.domain_state(dom.state()[0]) in states]
        fingerprint = paging.fingerprint(sorted(filters.items()), sorted(request.states))
        chunk, token = paging.page(domains, lambda dom: dom.name(), request.page_size,
                                   request.page_token, fingerprint)
        return pb.ListDomainsResponse(domains=summaries(chunk, convert.domain),
                                      next_page_token=token)

    def GetDomain(self, request: pb.GetDomainRequest, context: Ctx) -> pb.GetDomainResponse:
        return pb.GetDomainResponse(domain=convert.domain(self.backend.lookup(request.name)))

    def GetDomainXML(self, request: pb.GetDomainXMLRequest,
                     context: Ctx) -> pb.GetDomainXMLResponse:
        flags = ((libvirt.VIR_DOMAIN_XML_INACTIVE if request.inactive else 0)
                 | (libvirt.VIR_DOMAIN_XML_SECURE if request.secure else 0)
                 | (libvirt.VIR_DOMAIN_XML_MIGRATABLE if request.migratable else 0))
        return pb.GetDomainXMLResponse(xml=self.backend.lookup(request.name).XMLDesc(flags))

    def DefineDomain(self, request: pb.DefineDomainRequest,
                     context: Ctx) -> pb.DefineDomainResponse:
        dom = self.backend.define(request.xml)
        return pb.DefineDomainResponse(domain=convert.domain(dom))

    def UndefineDomain(self, request: pb.UndefineDomainRequest,
                       context: Ctx) -> pb.UndefineDomainResponse:
        self.backend.undefine(self.backend.lookup(request.name), request.managed_save,
                              request.snapshots_metadata, request.nvram, request.keep_nvram)
        return pb.UndefineDomainResponse()

    def CreateDomain(self, request: pb.CreateDomainRequest,
                     context: Ctx) -> pb.CreateDomainResponse:
        dom = self.backend.create(request.xml, request.paused)
        return pb.CreateDomainResponse(domain=convert.domain(dom))

    def StartDomain(self, request: pb.StartDomainRequest,
                    context: Ctx) -> pb.StartDomainResponse:
        dom = self.backend.lookup(request.name)
        self.backend.start(dom, request.paused, request.force_boot)
        return pb.StartDomainResponse(domain=convert.domain(dom))

    def ShutdownDomain(self, request: pb.ShutdownDomainRequest,
                       context: Ctx) -> pb.ShutdownDomainResponse:
        self.backend.lookup(request.name).shutdownFlags(_SHUTDOWN_FLAGS[request.method])
        return pb.ShutdownDomainResponse()

    def RebootDomain(self, request: pb.RebootDomainRequest,
                     context: Ctx) -> pb.RebootDomainResponse:
        self.backend.lookup(request.name).reboot(_REBOOT_FLAGS[request.method])
        return pb.RebootDomainResponse()

    def ResetDomain(self, request: pb.ResetDomainRequest, context: Ctx) -> pb.ResetDomainResponse:
        self.backend.lookup(request.name).reset(0)
        return pb.ResetDomainResponse()

    def DestroyDomain(self, request: pb.DestroyDomainRequest,
                      context: Ctx) -> pb.DestroyDomainResponse:
        flags = libvirt.VIR_DOMAIN_DESTROY_GRACEFUL if request.graceful else 0
        self.backend.lookup(request.name).destroyFlags(flags)
        return pb.DestroyDomainResponse()

    def SuspendDomain(self, request: pb.SuspendDomainRequest,
                      context: Ctx) -> pb.SuspendDomainResponse:
        self.backend.lookup(request.name).suspend()
        return pb.SuspendDomainResponse()

    def ResumeDomain(self, request: pb.ResumeDomainRequest,
                     context: Ctx) -> pb.ResumeDomainResponse:
        self.backend.lookup(request.name).resume()
        return pb.ResumeDomainResponse()

    def SetDomainAutostart(self, request: pb.SetDomainAutostartRequest,
                           context: Ctx) -> pb.SetDomainAutostartResponse:
        self.backend.lookup(request.name).setAutostart(int(request.autostart))
        return pb.SetDomainAutostartResponse()

    def SetDomainVcpus(self, request: pb.SetDomainVcpusRequest,
                       context: Ctx) -> pb.SetDomainVcpusResponse:
        dom = self.backend.lookup(request.name)
        flags = scope_flags(request.scope.live, request.scope.config)
        if request.maximum:
            flags |= libvirt.VIR_DOMAIN_VCPU_MAXIMUM
        dom.setVcpusFlags(request.count, flags)
        return pb.SetDomainVcpusResponse()

    def SetDomainMemory(self, request: pb.SetDomainMemoryRequest,
                        context: Ctx) -> pb.SetDomainMemoryResponse:
        dom = self.backend.lookup(request.name)
        flags = scope_flags(request.scope.live, request.scope.config)
        if request.maximum:
            flags |= libvirt.VIR_DOMAIN_MEM_MAXIMUM
        dom.setMemoryFlags(request.memory_kib, flags)
        return pb.SetDomainMemoryResponse()

    def AttachDevice(self, request: pb.AttachDeviceRequest,
                     context: Ctx) -> pb.AttachDeviceResponse:
        self._change_device(request, attach=True)
        return pb.AttachDeviceResponse()

    def DetachDevice(self, request: pb.DetachDeviceRequest,
                     context: Ctx) -> pb.DetachDeviceResponse:
        self._change_device(request, attach=False)
        return pb.DetachDeviceResponse()

    def _change_device(self, request: pb.AttachDeviceRequest | pb.DetachDeviceRequest,
                       attach: bool) -> None:
        dom = self.backend.lookup(request.name)
        self.backend.change_device(dom, attach, request.xml,
                                   scope_flags(request.scope.live, request.scope.config))

    # -- snapshots ------------------------------------------------------------

    def CreateSnapshot(self, request: pb.CreateSnapshotRequest,
                       context: Ctx) -> pb.CreateSnapshotResponse:
        dom = self.backend.lookup(request.name)
        flags = ((libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY if request.disk_only else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA if request.no_metadata else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC if request.atomic else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE if request.quiesce else 0))
        snap = self.backend.create_snapshot(dom, request.xml, flags)
        return pb.CreateSnapshotResponse(snapshot=convert.snapshot(snap))

    def ListSnapshots(self, request: pb.ListSnapshotsRequest,
                      context: Ctx) -> pb.ListSnapshotsResponse:
        snaps = self.backend.lookup(request.name).listAllSnapshots(0)
        chunk, token = paging.page(snaps, lambda snap: snap.getName(), request.page_size,
                                   request.page_token, paging.fingerprint(request.name))
        return pb.ListSnapshotsResponse(snapshots=summaries(chunk, convert.snapshot),
                                        next_page_token=token)

    def GetSnapshot(self, request: pb.GetSnapshotRequest, context: Ctx) -> pb.GetSnapshotResponse:
        snap = self.backend.lookup(request.name).snapshotLookupByName(
            require(request.snapshot, "snapshot"))
        return pb.GetSnapshotResponse(snapshot=convert.snapshot(snap))

    def RevertToSnapshot(self, request: pb.RevertToSnapshotRequest,
                         context: Ctx) -> pb.RevertToSnapshotResponse:
        dom = self.backend.lookup(request.name)
        snap = dom.snapshotLookupByName(require(request.snapshot, "snapshot"))
        flags = ((libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING if request.running else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED if request.paused else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE if request.force else 0))
        dom.revertToSnapshot(snap, flags)
        return pb.RevertToSnapshotResponse()

    def DeleteSnapshot(self, request: pb.DeleteSnapshotRequest,
                       context: Ctx) -> pb.DeleteSnapshotResponse:
        snap = self.backend.lookup(request.name).snapshotLookupByName(
            require(request.snapshot, "snapshot"))
        flags = ((libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN if request.children else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
                    if request.metadata_only else 0))
        snap.delete(flags)
        return pb.DeleteSnapshotResponse()

    # -- statistics and host --------------------------------------------------

    def GetDomainStats(self, request: pb.GetDomainStatsRequest,
                       context: Ctx) -> pb.GetDomainStatsResponse:
        groups = 0
        for group in request.groups or convert.STAT_GROUPS:
            groups |= convert.STAT_GROUPS.get(group, 0)
        records = self.backend.stats(list(request.names), groups, request.active_only,
                                     request.nowait)
        return pb.GetDomainStatsResponse(
            stats=[convert.domain_stats(dom, record) for dom, record in records])

    def GetCapabilities(self, request: pb.GetCapabilitiesRequest,
                        context: Ctx) -> pb.GetCapabilitiesResponse:
        return pb.GetCapabilitiesResponse(xml=self.backend.conn.getCapabilities())

    def GetDomainCapabilities(self, request: pb.GetDomainCapabilitiesRequest,
                              context: Ctx) -> pb.GetDomainCapabilitiesResponse:
        xml = self.backend.conn.getDomainCapabilities(
            request.emulator or None, request.arch or None, request.machine or None,
            request.virt_type or None, 0)
        return pb.GetDomainCapabilitiesResponse(xml=xml)

    def GetNodeInfo(self, request: pb.GetNodeInfoRequest, context: Ctx) -> pb.GetNodeInfoResponse:
        model, memory_mib, cpus, mhz, nodes, sockets, cores, threads = (
            self.backend.conn.getInfo())
        return pb.GetNodeInfoResponse(model=model, memory_kib=memory_mib * 1024, cpus=cpus,
                                      mhz=mhz, nodes=nodes, sockets=sockets, cores=cores,
                                      threads=threads)

    def GetVersion(self, request: pb.GetVersionRequest, context: Ctx) -> pb.GetVersionResponse:
        conn = self.backend.conn
        return pb.GetVersionResponse(
            virtmesh_version=VERSION,
            libvirt_version=convert.version_string(conn.getLibVersion()),
            hypervisor_type=conn.getType(),
            hypervisor_version=convert.version_string(conn.getVersion()),
            uri=conn.getURI())
