"""StorageService: proto requests in, backend calls, proto responses out.

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
from services.storage import convert
from services.storage.backend import StorageBackend
from virtmesh.storage.v1 import storage_service_pb2 as pb
from virtmesh.storage.v1 import storage_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class StorageServicer(pb_grpc.StorageServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        self.backend = StorageBackend(connection, config.max_message_bytes)
        self.events: EventHub[pb.WatchStoragePoolEventsResponse] = EventHub.fed_by(
            connection, config.max_event_watchers, self._register_events)

    def close(self) -> None:
        """The service is stopping: end event streams now rather than after the grace."""
        self.events.close_all("the service is shutting down")

    def stopped(self) -> None:
        """The last call has ended: let go of the parse sandbox."""
        self.backend.close()

    # -- events -----------------------------------------------------------------

    def _register_events(self, conn: libvirt.virConnect) -> None:
        def publish(pool: libvirt.virStoragePool,
                    lifecycle: pb.StoragePoolLifecycleEvent | None = None,
                    refresh: pb.StoragePoolRefreshEvent | None = None) -> None:
            self.events.publish(pb.WatchStoragePoolEventsResponse(
                name=pool.name(), uuid=pool.UUIDString(), time=now(), lifecycle=lifecycle,
                refresh=refresh))

        conn.storagePoolEventRegisterAny(
            None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE,
            lambda _c, pool, event, _detail, _o: publish(pool, lifecycle=(
                pb.StoragePoolLifecycleEvent(type=convert.LIFECYCLE_EVENTS.get(  # type: ignore[arg-type]
                    event, pb.STORAGE_POOL_LIFECYCLE_EVENT_TYPE_UNSPECIFIED)))), None)
        conn.storagePoolEventRegisterAny(
            None, libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH,
            lambda _c, pool, _o: publish(pool, refresh=pb.StoragePoolRefreshEvent()), None)

    def WatchStoragePoolEvents(self, request: pb.WatchStoragePoolEventsRequest,
                               context: Ctx) -> Iterator[pb.WatchStoragePoolEventsResponse]:
        yield from self.events.watch(context, request.names, lambda: self.backend.conn)

    # -- pools ------------------------------------------------------------------

    def ListStoragePools(self, request: pb.ListStoragePoolsRequest,
                         context: Ctx) -> pb.ListStoragePoolsResponse:
        filters = {name: getattr(request, name) if request.HasField(name) else None
                   for name in ("active", "persistent", "autostart")}
        types = sorted(set(request.types))
        pools = self.backend.list_pools(filters, types)
        chunk, token = paging.page(pools, lambda pool: pool.name(), request.page_size,
                                   request.page_token,
                                   paging.fingerprint(sorted(filters.items()), types))
        return pb.ListStoragePoolsResponse(
            storage_pools=summaries(chunk, convert.storage_pool), next_page_token=token)

    def GetStoragePool(self, request: pb.GetStoragePoolRequest,
                       context: Ctx) -> pb.GetStoragePoolResponse:
        return pb.GetStoragePoolResponse(
            storage_pool=convert.storage_pool(self.backend.pool(request.name)))

    def GetStoragePoolXML(self, request: pb.GetStoragePoolXMLRequest,
                          context: Ctx) -> pb.GetStoragePoolXMLResponse:
        flags = libvirt.VIR_STORAGE_XML_INACTIVE if request.inactive else 0
        return pb.GetStoragePoolXMLResponse(xml=self.backend.pool(request.name).XMLDesc(flags))

    def DefineStoragePool(self, request: pb.DefineStoragePoolRequest,
                          context: Ctx) -> pb.DefineStoragePoolResponse:
        pool = self.backend.define_pool(request.xml)
        return pb.DefineStoragePoolResponse(storage_pool=convert.storage_pool(pool))

    def CreateStoragePool(self, request: pb.CreateStoragePoolRequest,
                          context: Ctx) -> pb.CreateStoragePoolResponse:
        pool = self.backend.create_pool(request.xml, request.build)
        return pb.CreateStoragePoolResponse(storage_pool=convert.storage_pool(pool))

    def BuildStoragePool(self, request: pb.BuildStoragePoolRequest,
                         context: Ctx) -> pb.BuildStoragePoolResponse:
        self.backend.build_pool(request.name, request.overwrite, request.no_overwrite)
        return pb.BuildStoragePoolResponse()

    def StartStoragePool(self, request: pb.StartStoragePoolRequest,
                         context: Ctx) -> pb.StartStoragePoolResponse:
        pool = self.backend.pool(request.name)
        pool.create(libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD if request.build else 0)
        return pb.StartStoragePoolResponse(storage_pool=convert.storage_pool(pool))

    def StopStoragePool(self, request: pb.StopStoragePoolRequest,
                        context: Ctx) -> pb.StopStoragePoolResponse:
        self.backend.pool(request.name).destroy()
        return pb.StopStoragePoolResponse()

    def DeleteStoragePool(self, request: pb.DeleteStoragePoolRequest,
                          context: Ctx) -> pb.DeleteStoragePoolResponse:
        self.backend.pool(request.name).delete(0)
        return pb.DeleteStoragePoolResponse()

    def UndefineStoragePool(self, request: pb.UndefineStoragePoolRequest,
                            context: Ctx) -> pb.UndefineStoragePoolResponse:
        self.backend.pool(request.name).undefine()
        return pb.UndefineStoragePoolResponse()

    def RefreshStoragePool(self, request: pb.RefreshStoragePoolRequest,
                           context: Ctx) -> pb.RefreshStoragePoolResponse:
        self.backend.pool(request.name).refresh(0)
        return pb.RefreshStoragePoolResponse()

    def SetStoragePoolAutostart(self, request: pb.SetStoragePoolAutostartRequest,
                                context: Ctx) -> pb.SetStoragePoolAutostartResponse:
        self.backend.pool(request.name).setAutostart(int(request.autostart))
        return pb.SetStoragePoolAutostartResponse()

    # -- volumes ----------------------------------------------------------------

    def ListStorageVolumes(self, request: pb.ListStorageVolumesRequest,
                           context: Ctx) -> pb.ListStorageVolumesResponse:
        pool = self.backend.pool(request.pool)
        chunk, token = paging.page(pool.listAllVolumes(0), lambda vol: vol.name(),
                                   request.page_size, request.page_token,
                                   paging.fingerprint(pool.UUIDString()))
        pool_name = pool.name()
        return pb.ListStorageVolumesResponse(
            storage_volumes=summaries(chunk, lambda vol: convert.storage_volume(vol, pool_name)),
            next_page_token=token)

    def GetStorageVolume(self, request: pb.GetStorageVolumeRequest,
                         context: Ctx) -> pb.GetStorageVolumeResponse:
        vol = self.backend.volume(request.pool, request.name)
        return pb.GetStorageVolumeResponse(storage_volume=convert.storage_volume(vol))

    def GetStorageVolumeXML(self, request: pb.GetStorageVolumeXMLRequest,
                            context: Ctx) -> pb.GetStorageVolumeXMLResponse:
        vol = self.backend.volume(request.pool, request.name)
        return pb.GetStorageVolumeXMLResponse(xml=vol.XMLDesc(0))

    def CreateStorageVolume(self, request: pb.CreateStorageVolumeRequest,
                            context: Ctx) -> pb.CreateStorageVolumeResponse:
        vol = self.backend.create_volume(request.pool, request.xml, request.prealloc_metadata)
        return pb.CreateStorageVolumeResponse(storage_volume=convert.storage_volume(vol))

    def CloneStorageVolume(self, request: pb.CloneStorageVolumeRequest,
                           context: Ctx) -> pb.CloneStorageVolumeResponse:
        vol = self.backend.clone_volume(request)
        return pb.CloneStorageVolumeResponse(storage_volume=convert.storage_volume(vol))

    def DeleteStorageVolume(self, request: pb.DeleteStorageVolumeRequest,
                            context: Ctx) -> pb.DeleteStorageVolumeResponse:
        self.backend.volume(request.pool, request.name).delete(0)
        return pb.DeleteStorageVolumeResponse()

    def WipeStorageVolume(self, request: pb.WipeStorageVolumeRequest,
                          context: Ctx) -> pb.WipeStorageVolumeResponse:
        self.backend.wipe(self.backend.volume(request.pool, request.name), request.algorithm)
        return pb.WipeStorageVolumeResponse()

    def ResizeStorageVolume(self, request: pb.ResizeStorageVolumeRequest,
                            context: Ctx) -> pb.ResizeStorageVolumeResponse:
        vol = self.backend.volume(request.pool, request.name)
        self.backend.resize(vol, request.capacity_bytes, request.allocate, request.delta,
                            request.shrink)
        return pb.ResizeStorageVolumeResponse(storage_volume=convert.storage_volume(vol))

    def UploadStorageVolume(self, request_iterator: Iterator[pb.UploadStorageVolumeRequest],
                            context: Ctx) -> pb.UploadStorageVolumeResponse:
        vol, written = self.backend.upload(request_iterator)
        return pb.UploadStorageVolumeResponse(bytes_written=written,
                                              storage_volume=convert.storage_volume(vol))

    def DownloadStorageVolume(self, request: pb.DownloadStorageVolumeRequest,
                              context: Ctx) -> Iterator[pb.DownloadStorageVolumeResponse]:
        vol = self.backend.volume(request.pool, request.name)
        yield from self.backend.download(vol, request.offset, request.length)
