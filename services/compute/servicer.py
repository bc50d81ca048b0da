"""ComputeService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol, TypeVar

import grpc

from services.common import paging
from services.common.config import Config
from services.common.libvirt_connection import LibvirtConnection
from services.common.qemu_caps import SharedCache
from services.common.relay import MAX_CHUNK, Session, Slots, relay
from services.common.servicer import DriverServicer, optional_bools
from services.common.shared import ServiceError
from services.common.version import VERSION
from services.compute import convert, convert_checkpoints
from services.compute.backend import ComputeBackend, Listed
from services.compute.servicer_agent import AgentServicer
from services.compute.servicer_block import BlockServicer
from services.compute.servicer_checkpoints import CheckpointsServicer
from services.compute.servicer_devices import DevicesServicer
from services.compute.servicer_host import HostServicer
from services.compute.servicer_jobs import JobsServicer
from services.compute.servicer_lifecycle import LifecycleServicer
from services.compute.servicer_migration import MigrationServicer
from services.compute.servicer_qemu import QemuServicer
from services.compute.servicer_tuning import TuningServicer
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class _HasData(Protocol):
    name: str
    data: bytes


R = TypeVar("R", bound=_HasData)
M = TypeVar("M")


def _first(requests: Iterator[R], what: str) -> R:
    """A session's first message, which names the domain."""
    first = next(requests, None)
    if first is None:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"the {what} stream is empty; its first message must name the "
                           "domain", "EMPTY_STREAM")
    return first


def _data(first: _HasData, requests: Iterator[_HasData]) -> Iterator[bytes]:
    """The bytes of a session's messages, the first one's included."""
    for request in itertools.chain((first,), requests):
        if len(request.data) > MAX_CHUNK:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"a message carries at most {MAX_CHUNK} bytes", "CHUNK_TOO_LARGE")
        yield request.data


class ComputeServicer(HostServicer, MigrationServicer, JobsServicer, AgentServicer,
                      TuningServicer, BlockServicer, LifecycleServicer, DevicesServicer,
                      QemuServicer, CheckpointsServicer,
                      DriverServicer[ComputeBackend, pb.WatchDomainEventsResponse],
                      pb_grpc.ComputeServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        backend = ComputeBackend(connection, SharedCache.from_setting(config.caps_cache))
        super().__init__(backend, config, backend.register_events,
                         functools.partial(convert.domain_event, explain=backend.explain_event))
        #: sorted domain listings kept for the pages after the first (ListDomains)
        self.listings: paging.Listings[Listed] = paging.Listings()
        self.sessions = Slots(config.max_sessions, "console, channel and graphics sessions",
                              "max_sessions")

    async def WatchDomainEvents(self, request: pb.WatchDomainEventsRequest,
                               context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[pb.WatchDomainEventsResponse]:
        async for event in self.watch(request, context, pb.WatchDomainEventsResponse):
            yield event

    # -- domains --------------------------------------------------------------

    def ListDomains(self, request: pb.ListDomainsRequest, context: Ctx) -> pb.ListDomainsResponse:
        filters = optional_bools(request, "active", "persistent", "autostart")
        wanted = set(request.states) or None

        def listing() -> list[Listed]:
            listed = self.backend.list_domains_flagged(**filters)
            if wanted is None:
                return listed
            return convert.in_listed_states(listed, self.backend.domain_states(listed), wanted)

        chunk, token = self.listings.page(
            listing, convert.listed_name, request.page_size, request.page_token,
            paging.fingerprint(sorted(filters.items()), sorted(request.states)),
            scope=self.backend.conn)
        states = self.backend.domain_states(chunk)
        if wanted is not None:  # a state may have changed since the listing
            chunk = convert.in_listed_states(chunk, states, wanted)
        response = pb.ListDomainsResponse(next_page_token=token)
        convert.add_listed_domains(response.domains, chunk, states)
        return response

    def GetDomain(self, request: pb.GetDomainRequest, context: Ctx) -> pb.GetDomainResponse:
        dom = self.backend.lookup(request.name)
        return pb.GetDomainResponse(domain=convert.domain(dom, self.backend.explain),
                                    updated=self.lifecycle.is_updated(dom))

    def LookupDomainById(self, request: pb.LookupDomainByIdRequest,
                         context: Ctx) -> pb.LookupDomainByIdResponse:
        dom = self.backend.lookup_by_id(request.id)
        return pb.LookupDomainByIdResponse(domain=convert.domain(dom, self.backend.explain))

    def GetDomainXML(self, request: pb.GetDomainXMLRequest,
                     context: Ctx) -> pb.GetDomainXMLResponse:
        return pb.GetDomainXMLResponse(xml=self.backend.xml(
            request.name, request.inactive, request.secure, request.migratable))

    def DefineDomain(self, request: pb.DefineDomainRequest,
                     context: Ctx) -> pb.DefineDomainResponse:
        dom = self.backend.define(request.xml)
        return pb.DefineDomainResponse(domain=convert.domain(dom))

    def UndefineDomain(self, request: pb.UndefineDomainRequest,
                       context: Ctx) -> pb.UndefineDomainResponse:
        self.backend.undefine(request.name, request.managed_save, request.snapshots_metadata,
                              request.nvram, request.keep_nvram)
        return pb.UndefineDomainResponse()

    def CreateDomain(self, request: pb.CreateDomainRequest,
                     context: Ctx) -> pb.CreateDomainResponse:
        dom = self.backend.create(request.xml, request.paused)
        return pb.CreateDomainResponse(domain=convert.domain(dom))

    def StartDomain(self, request: pb.StartDomainRequest,
                    context: Ctx) -> pb.StartDomainResponse:
        dom = self.backend.start(request.name, request.paused, request.force_boot)
        return pb.StartDomainResponse(domain=convert.domain(dom))

    def ShutdownDomain(self, request: pb.ShutdownDomainRequest,
                       context: Ctx) -> pb.ShutdownDomainResponse:
        dom = self.backend.lookup(request.name)  # before the method: NOT_FOUND comes first
        self.backend.shutdown(dom, convert.SHUTDOWN_FLAGS[request.method])
        return pb.ShutdownDomainResponse()

    def RebootDomain(self, request: pb.RebootDomainRequest,
                     context: Ctx) -> pb.RebootDomainResponse:
        dom = self.backend.lookup(request.name)
        self.backend.reboot(dom, convert.REBOOT_FLAGS[request.method])
        return pb.RebootDomainResponse()

    def ResetDomain(self, request: pb.ResetDomainRequest, context: Ctx) -> pb.ResetDomainResponse:
        self.backend.reset(request.name)
        return pb.ResetDomainResponse()

    def DestroyDomain(self, request: pb.DestroyDomainRequest,
                      context: Ctx) -> pb.DestroyDomainResponse:
        self.backend.destroy(request.name, request.graceful)
        return pb.DestroyDomainResponse()

    def SuspendDomain(self, request: pb.SuspendDomainRequest,
                      context: Ctx) -> pb.SuspendDomainResponse:
        self.backend.suspend(request.name)
        return pb.SuspendDomainResponse()

    def ResumeDomain(self, request: pb.ResumeDomainRequest,
                     context: Ctx) -> pb.ResumeDomainResponse:
        self.backend.resume(request.name)
        return pb.ResumeDomainResponse()

    def SetDomainAutostart(self, request: pb.SetDomainAutostartRequest,
                           context: Ctx) -> pb.SetDomainAutostartResponse:
        self.backend.set_autostart(request.name, request.autostart)
        return pb.SetDomainAutostartResponse()

    def SetDomainVcpus(self, request: pb.SetDomainVcpusRequest,
                       context: Ctx) -> pb.SetDomainVcpusResponse:
        self.backend.set_vcpus(request.name, request.count, request.scope.live,
                               request.scope.config, request.maximum)
        return pb.SetDomainVcpusResponse()

    def SetDomainMemory(self, request: pb.SetDomainMemoryRequest,
                        context: Ctx) -> pb.SetDomainMemoryResponse:
        self.backend.set_memory(request.name, request.memory_kib, request.scope.live,
                                request.scope.config, request.maximum)
        return pb.SetDomainMemoryResponse()

    def AttachDevice(self, request: pb.AttachDeviceRequest,
                     context: Ctx) -> pb.AttachDeviceResponse:
        self.backend.change_device(request.name, True, request.xml, request.scope.live,
                                   request.scope.config)
        return pb.AttachDeviceResponse()

    def DetachDevice(self, request: pb.DetachDeviceRequest,
                     context: Ctx) -> pb.DetachDeviceResponse:
        self.backend.change_device(request.name, False, request.xml, request.scope.live,
                                   request.scope.config)
        return pb.DetachDeviceResponse()

    # -- snapshots ------------------------------------------------------------

    def CreateSnapshot(self, request: pb.CreateSnapshotRequest,
                       context: Ctx) -> pb.CreateSnapshotResponse:
        snap = self.backend.create_snapshot(request.name, request.xml, request.disk_only,
                                            request.no_metadata, request.atomic,
                                            request.quiesce, request.live,
                                            request.reuse_external, request.halt)
        if request.no_metadata:  # libvirt keeps nothing of it to describe: its name only
            return pb.CreateSnapshotResponse(snapshot=pb.Snapshot(
                name=convert.snapshot_name(snap)))
        return pb.CreateSnapshotResponse(snapshot=convert.snapshot(snap))

    def ListSnapshots(self, request: pb.ListSnapshotsRequest,
                      context: Ctx) -> pb.ListSnapshotsResponse:
        flags = convert_checkpoints.snapshot_list_flags(request.roots, request.filter)
        snapshots, token = self._page(self.backend.list_snapshots(request.name, flags),
                                      convert.snapshot_name, convert.snapshot, request,
                                      request.filter.topological, request.name, flags)
        return pb.ListSnapshotsResponse(snapshots=snapshots, next_page_token=token)

    def GetSnapshot(self, request: pb.GetSnapshotRequest, context: Ctx) -> pb.GetSnapshotResponse:
        snap = self.backend.snapshot(request.name, request.snapshot)
        return pb.GetSnapshotResponse(snapshot=convert.snapshot(snap))

    def RevertToSnapshot(self, request: pb.RevertToSnapshotRequest,
                         context: Ctx) -> pb.RevertToSnapshotResponse:
        self.backend.revert_to_snapshot(request.name, request.snapshot, request.running,
                                        request.paused, request.force)
        return pb.RevertToSnapshotResponse()

    def DeleteSnapshot(self, request: pb.DeleteSnapshotRequest,
                       context: Ctx) -> pb.DeleteSnapshotResponse:
        self.backend.delete_snapshot(request.name, request.snapshot, request.children,
                                     request.metadata_only)
        return pb.DeleteSnapshotResponse()

    # -- console and graphics -------------------------------------------------

    def OpenDomainConsole(self, request_iterator: Iterator[pb.OpenDomainConsoleRequest],
                          context: Ctx) -> Iterator[pb.OpenDomainConsoleResponse]:
        first = _first(request_iterator, "console")
        return self._session(first, request_iterator, context, pb.OpenDomainConsoleResponse,
                             "device", lambda: self.backend.open_console(
                                 first.name, first.device, first.force))

    def OpenDomainChannel(self, request_iterator: Iterator[pb.OpenDomainChannelRequest],
                          context: Ctx) -> Iterator[pb.OpenDomainChannelResponse]:
        first = _first(request_iterator, "channel")
        return self._session(first, request_iterator, context, pb.OpenDomainChannelResponse,
                             "channel", lambda: (self.backend.open_channel(
                                 first.name, first.channel, first.force), first.channel))

    def OpenDomainGraphics(self, request_iterator: Iterator[pb.OpenDomainGraphicsRequest],
                           context: Ctx) -> Iterator[pb.OpenDomainGraphicsResponse]:
        first = _first(request_iterator, "graphics connection")
        return self._session(first, request_iterator, context, pb.OpenDomainGraphicsResponse,
                             "protocol", lambda: self.backend.open_graphics(
                                 first.name, first.index, first.skip_auth))

    def _session(self, first: _HasData, requests: Iterator[_HasData], context: Ctx,
                 response: Callable[..., M], label: str,
                 open_session: Callable[[], tuple[Session, str]]) -> Iterator[M]:
        """One of the service's bounded sessions: a first response naming what was
        opened (``label``), then the device's bytes while the client's go to it."""
        with self.sessions.held():
            session, opened = open_session()
            yield response(**{label: opened})
            for data in relay(session, _data(first, requests), context.add_callback):
                yield response(data=data)

    def GetDomainScreenshot(self, request: pb.GetDomainScreenshotRequest,
                            context: Ctx) -> Iterator[pb.GetDomainScreenshotResponse]:
        mime, chunks = self.backend.screenshot(request.name, request.screen)
        yield pb.GetDomainScreenshotResponse(mime_type=mime)
        with contextlib.closing(chunks):  # a cancelled call aborts libvirt's stream at once
            for data in chunks:
                yield pb.GetDomainScreenshotResponse(data=data)

    def SendDomainKey(self, request: pb.SendDomainKeyRequest,
                      context: Ctx) -> pb.SendDomainKeyResponse:
        code_set, codes = convert.key_codes(request.code_set, request.keys)
        self.backend.send_key(request.name, code_set, request.hold_time_ms, codes)
        return pb.SendDomainKeyResponse()

    def GetDomainDisplay(self, request: pb.GetDomainDisplayRequest,
                         context: Ctx) -> pb.GetDomainDisplayResponse:
        return pb.GetDomainDisplayResponse(
            displays=[convert.display(found) for found in self.backend.displays(request.name)])

    # -- statistics and host --------------------------------------------------

    def GetDomainStats(self, request: pb.GetDomainStatsRequest,
                       context: Ctx) -> pb.GetDomainStatsResponse:
        records = self.backend.stats(list(request.names), convert.stat_groups(request.groups),
                                     request.active_only, request.nowait)
        response = pb.GetDomainStatsResponse()
        convert.add_domain_stats(response.stats, records)
        return response

    def GetCapabilities(self, request: pb.GetCapabilitiesRequest,
                        context: Ctx) -> pb.GetCapabilitiesResponse:
        answer = self.backend.capabilities()
        if request.etag == answer.etag:
            return pb.GetCapabilitiesResponse(etag=answer.etag, unchanged=True)
        return pb.GetCapabilitiesResponse(xml=answer.xml, etag=answer.etag)

    def GetDomainCapabilities(self, request: pb.GetDomainCapabilitiesRequest,
                              context: Ctx) -> pb.GetDomainCapabilitiesResponse:
        answer = self.backend.domain_capabilities(request.emulator, request.arch,
                                                  request.machine, request.virt_type)
        if request.etag == answer.etag:
            return pb.GetDomainCapabilitiesResponse(etag=answer.etag, unchanged=True)
        return pb.GetDomainCapabilitiesResponse(xml=answer.xml, etag=answer.etag)

    def GetNodeInfo(self, request: pb.GetNodeInfoRequest, context: Ctx) -> pb.GetNodeInfoResponse:
        return convert.node_info(self.backend.node_info())

    def GetVersion(self, request: pb.GetVersionRequest, context: Ctx) -> pb.GetVersionResponse:
        versions = self.backend.versions()
        return pb.GetVersionResponse(
            virtmesh_version=VERSION,
            libvirt_version=convert.version_string(versions.libvirt),
            hypervisor_type=versions.hypervisor_type,
            hypervisor_version=convert.version_string(versions.hypervisor),
            uri=versions.uri)
