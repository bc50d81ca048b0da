"""StorageService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import grpc

from services.common.config import Config
from services.common.errors import ServiceError
from services.common.libvirt_connection import LibvirtConnection
from services.common.servicer import DriverServicer, optional_bools
from services.storage import convert
from services.storage.backend import StorageBackend
from virtmesh.storage.v1 import storage_service_pb2 as pb
from virtmesh.storage.v1 import storage_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class StorageServicer(DriverServicer[StorageBackend, pb.WatchStoragePoolEventsResponse],
                      pb_grpc.StorageServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        backend = StorageBackend(connection, config.max_message_bytes)
        super().__init__(backend, config, backend.register_events, convert.pool_event)

    async def WatchStoragePoolEvents(self, request: pb.WatchStoragePoolEventsRequest,
                                    context: grpc.aio.ServicerContext
                                    ) -> AsyncIterator[pb.WatchStoragePoolEventsResponse]:
        async for event in self.watch(request, context, pb.WatchStoragePoolEventsResponse):
            yield event

    # -- pools ------------------------------------------------------------------

    def ListStoragePools(self, request: pb.ListStoragePoolsRequest,
                         context: Ctx) -> pb.ListStoragePoolsResponse:
        filters = optional_bools(request, "active", "persistent", "autostart")
        types = sorted(set(request.types))
        pools, token = self.page(self.backend.list_pools(filters, types), convert.pool_name,
                                 convert.storage_pool, request, sorted(filters.items()), types)
        return pb.ListStoragePoolsResponse(storage_pools=pools, next_page_token=token)

    def GetStoragePool(self, request: pb.GetStoragePoolRequest,
                       context: Ctx) -> pb.GetStoragePoolResponse:
        return pb.GetStoragePoolResponse(
            storage_pool=convert.storage_pool(self.backend.pool(request.name)))

    def GetStoragePoolXML(self, request: pb.GetStoragePoolXMLRequest,
                          context: Ctx) -> pb.GetStoragePoolXMLResponse:
        return pb.GetStoragePoolXMLResponse(
            xml=self.backend.pool_xml(request.name, request.inactive))

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
        pool = self.backend.start_pool(request.name, request.build)
        return pb.StartStoragePoolResponse(storage_pool=convert.storage_pool(pool))

    def StopStoragePool(self, request: pb.StopStoragePoolRequest,
                        context: Ctx) -> pb.StopStoragePoolResponse:
        self.backend.stop_pool(request.name)
        return pb.StopStoragePoolResponse()

    def DeleteStoragePool(self, request: pb.DeleteStoragePoolRequest,
                          context: Ctx) -> pb.DeleteStoragePoolResponse:
        self.backend.delete_pool(request.name)
        return pb.DeleteStoragePoolResponse()

    def UndefineStoragePool(self, request: pb.UndefineStoragePoolRequest,
                            context: Ctx) -> pb.UndefineStoragePoolResponse:
        self.backend.undefine_pool(request.name)
        return pb.UndefineStoragePoolResponse()

    def RefreshStoragePool(self, request: pb.RefreshStoragePoolRequest,
                           context: Ctx) -> pb.RefreshStoragePoolResponse:
        self.backend.refresh_pool(request.name)
        return pb.RefreshStoragePoolResponse()

    def SetStoragePoolAutostart(self, request: pb.SetStoragePoolAutostartRequest,
                                context: Ctx) -> pb.SetStoragePoolAutostartResponse:
        self.backend.set_pool_autostart(request.name, request.autostart)
        return pb.SetStoragePoolAutostartResponse()

    def FindStoragePoolSources(self, request: pb.FindStoragePoolSourcesRequest,
                               context: Ctx) -> pb.FindStoragePoolSourcesResponse:
        return convert.pool_sources(self.backend.find_pool_sources(
            request.type, request.host, request.port, request.initiator_iqn))

    def GetStoragePoolCapabilities(self, request: pb.GetStoragePoolCapabilitiesRequest,
                                   context: Ctx) -> pb.GetStoragePoolCapabilitiesResponse:
        return convert.pool_capabilities(self.backend.pool_capabilities())

    def LookupStoragePoolByTargetPath(
            self, request: pb.LookupStoragePoolByTargetPathRequest,
            context: Ctx) -> pb.LookupStoragePoolByTargetPathResponse:
        pool = self.backend.pool_by_target_path(request.path)
        return pb.LookupStoragePoolByTargetPathResponse(storage_pool=convert.storage_pool(pool))

    # -- volumes ----------------------------------------------------------------

    def ListStorageVolumes(self, request: pb.ListStorageVolumesRequest,
                           context: Ctx) -> pb.ListStorageVolumesResponse:
        pool_name, pool_uuid, volumes = self.backend.list_volumes(request.pool)
        summaries, token = self.page(volumes, convert.volume_name,
                                     lambda vol: convert.storage_volume(vol, pool_name), request,
                                     pool_uuid)
        return pb.ListStorageVolumesResponse(storage_volumes=summaries, next_page_token=token)

    def GetStorageVolume(self, request: pb.GetStorageVolumeRequest,
                         context: Ctx) -> pb.GetStorageVolumeResponse:
        vol = self.backend.volume(request.pool, request.name)
        return pb.GetStorageVolumeResponse(storage_volume=convert.storage_volume(vol))

    def GetStorageVolumeXML(self, request: pb.GetStorageVolumeXMLRequest,
                            context: Ctx) -> pb.GetStorageVolumeXMLResponse:
        return pb.GetStorageVolumeXMLResponse(
            xml=self.backend.volume_xml(request.pool, request.name))

    def CreateStorageVolume(self, request: pb.CreateStorageVolumeRequest,
                            context: Ctx) -> pb.CreateStorageVolumeResponse:
        vol = self.backend.create_volume(request.pool, request.xml, request.prealloc_metadata)
        return pb.CreateStorageVolumeResponse(storage_volume=convert.storage_volume(vol))

    def CloneStorageVolume(self, request: pb.CloneStorageVolumeRequest,
                           context: Ctx) -> pb.CloneStorageVolumeResponse:
        vol = self.backend.clone_volume(request.pool, request.name, request.target_pool,
                                        request.new_name, request.xml,
                                        request.prealloc_metadata, request.reflink)
        return pb.CloneStorageVolumeResponse(storage_volume=convert.storage_volume(vol))

    def DeleteStorageVolume(self, request: pb.DeleteStorageVolumeRequest,
                            context: Ctx) -> pb.DeleteStorageVolumeResponse:
        self.backend.delete_volume(request.pool, request.name)
        return pb.DeleteStorageVolumeResponse()

    def WipeStorageVolume(self, request: pb.WipeStorageVolumeRequest,
                          context: Ctx) -> pb.WipeStorageVolumeResponse:
        vol = self.backend.volume(request.pool, request.name)
        self.backend.wipe(vol, convert.wipe_algorithm(request.algorithm))
        return pb.WipeStorageVolumeResponse()

    def ResizeStorageVolume(self, request: pb.ResizeStorageVolumeRequest,
                            context: Ctx) -> pb.ResizeStorageVolumeResponse:
        vol = self.backend.resize(request.pool, request.name, request.capacity_bytes,
                                  request.allocate, request.delta, request.shrink)
        return pb.ResizeStorageVolumeResponse(storage_volume=convert.storage_volume(vol))

    def UploadStorageVolume(self, request_iterator: Iterator[pb.UploadStorageVolumeRequest],
                            context: Ctx) -> pb.UploadStorageVolumeResponse:
        first = next(request_iterator, None)
        if first is None:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "the upload stream is empty; its first message must name the "
                               "volume", "EMPTY_UPLOAD")
        chunks = itertools.chain((first.data,), (request.data for request in request_iterator))
        vol, written = self.backend.upload(first.pool, first.name, first.offset, first.length,
                                           _ended_or_cancelled(chunks, context, first.length))
        return pb.UploadStorageVolumeResponse(bytes_written=written,
                                              storage_volume=convert.storage_volume(vol))

    def DownloadStorageVolume(self, request: pb.DownloadStorageVolumeRequest,
                              context: Ctx) -> Iterator[pb.DownloadStorageVolumeResponse]:
        vol = self.backend.volume(request.pool, request.name)
        # closing: a cancelled call closes this generator, which must abort libvirt's
        # stream at once rather than whenever the backend's generator is collected
        with contextlib.closing(self.backend.download(vol, request.offset,
                                                      request.length)) as chunks:
            for offset, data in chunks:
                yield pb.DownloadStorageVolumeResponse(data=data, offset=offset)


#: how long the end of an upload's messages may take to show a cancel instead
UPLOAD_END_SETTLE = 0.5


def _ended_or_cancelled(chunks: Iterator[bytes], context: Ctx,
                        announced: int) -> Iterator[bytes]:
    """``chunks``; at their end, grpc.RpcError (the backend then aborts libvirt's
    stream) if the caller in fact cancelled.

    grpc Python's server ends the request iterator alike when the client half-closes
    and when it cancels, until it has processed the cancel a moment later: taking a
    cancel for the end would make libvirt keep a partial upload as complete. An
    upload that sent all the bytes it announced is complete at once; any other waits
    up to UPLOAD_END_SETTLE for the cancel to show."""
    received = 0
    for data in chunks:
        received += len(data)
        yield data
    if announced and received >= announced:
        return
    settled = time.monotonic() + UPLOAD_END_SETTLE
    while context.is_active():
        if time.monotonic() >= settled:
            return
        time.sleep(0.01)
    raise grpc.RpcError("the caller cancelled the upload")
