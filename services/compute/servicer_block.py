"""The disk, interface and block job RPCs of ComputeService (sizes, statistics, peeks,
resizing, I/O throttling, copy, commit, pull, rebase), a mixin of ComputeServicer."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.config import Config
from services.compute import convert_block as conv
from services.compute.backend import ComputeBackend
from services.compute.backend_block import BlockBackend
from services.compute.convert_tuning import changes, parameters, scope_flags
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext


class BlockServicer:
    """A base of ComputeServicer: its ``__init__`` passes through this one's, which
    adds the block backend."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.block = BlockBackend(backend)

    # -- sizes, statistics and peeks ------------------------------------------------

    def GetDomainBlockInfo(self, request: pb.GetDomainBlockInfoRequest,
                           context: Ctx) -> pb.GetDomainBlockInfoResponse:
        capacity, allocation, physical = self.block.block_info(request.name, request.disk)
        return pb.GetDomainBlockInfoResponse(capacity_bytes=capacity,
                                             allocation_bytes=allocation,
                                             physical_bytes=physical)

    def GetDomainBlockStats(self, request: pb.GetDomainBlockStatsRequest,
                            context: Ctx) -> pb.GetDomainBlockStatsResponse:
        return pb.GetDomainBlockStatsResponse(parameters=conv.block_stats(
            self.block.block_stats(request.name, request.disk)))

    def GetDomainInterfaceStats(self, request: pb.GetDomainInterfaceStatsRequest,
                                context: Ctx) -> pb.GetDomainInterfaceStatsResponse:
        return conv.interface_stats(self.block.interface_stats(request.name, request.device))

    def GetDomainMemoryStats(self, request: pb.GetDomainMemoryStatsRequest,
                             context: Ctx) -> pb.GetDomainMemoryStatsResponse:
        return pb.GetDomainMemoryStatsResponse(
            stats=conv.memory_stats(self.block.memory_stats(request.name)))

    def PeekDomainBlock(self, request: pb.PeekDomainBlockRequest,
                        context: Ctx) -> pb.PeekDomainBlockResponse:
        return pb.PeekDomainBlockResponse(data=self.block.block_peek(
            request.name, request.disk, request.offset, request.size))

    def PeekDomainMemory(self, request: pb.PeekDomainMemoryRequest,
                         context: Ctx) -> pb.PeekDomainMemoryResponse:
        return pb.PeekDomainMemoryResponse(data=self.block.memory_peek(
            request.name, request.address, request.size, request.physical))

    def ResizeDomainBlock(self, request: pb.ResizeDomainBlockRequest,
                          context: Ctx) -> pb.ResizeDomainBlockResponse:
        self.block.resize(request.name, request.disk, request.size_bytes, request.shrink)
        return pb.ResizeDomainBlockResponse()

    # -- I/O throttling ---------------------------------------------------------------

    def GetDomainBlockIoTune(self, request: pb.GetDomainBlockIoTuneRequest,
                             context: Ctx) -> pb.GetDomainBlockIoTuneResponse:
        values = self.block.io_tune(request.name, request.disk, scope_flags(request.scope))
        return pb.GetDomainBlockIoTuneResponse(parameters=parameters(values))

    def SetDomainBlockIoTune(self, request: pb.SetDomainBlockIoTuneRequest,
                             context: Ctx) -> pb.SetDomainBlockIoTuneResponse:
        self.block.set_io_tune(request.name, request.disk, changes(request.parameters),
                               scope_flags(request.scope))
        return pb.SetDomainBlockIoTuneResponse()

    # -- block jobs ---------------------------------------------------------------------

    def CopyDomainBlock(self, request: pb.CopyDomainBlockRequest,
                        context: Ctx) -> pb.CopyDomainBlockResponse:
        self.block.copy(request.name, request.disk, request.destination_xml,
                        request.destination_file.path, request.destination_file.format,
                        request.bandwidth_bytes, conv.copy_flags(request))
        return pb.CopyDomainBlockResponse()

    def CommitDomainBlock(self, request: pb.CommitDomainBlockRequest,
                          context: Ctx) -> pb.CommitDomainBlockResponse:
        self.block.commit(request.name, request.disk, request.base, request.top,
                          request.bandwidth_bytes, conv.commit_flags(request))
        return pb.CommitDomainBlockResponse()

    def PullDomainBlock(self, request: pb.PullDomainBlockRequest,
                        context: Ctx) -> pb.PullDomainBlockResponse:
        self.block.pull(request.name, request.disk, request.bandwidth_bytes)
        return pb.PullDomainBlockResponse()

    def RebaseDomainBlock(self, request: pb.RebaseDomainBlockRequest,
                          context: Ctx) -> pb.RebaseDomainBlockResponse:
        self.block.rebase(request.name, request.disk, request.base, request.bandwidth_bytes,
                          conv.rebase_flags(request))
        return pb.RebaseDomainBlockResponse()

    def AbortDomainBlockJob(self, request: pb.AbortDomainBlockJobRequest,
                            context: Ctx) -> pb.AbortDomainBlockJobResponse:
        self.block.abort_job(request.name, request.disk, conv.abort_flags(request))
        return pb.AbortDomainBlockJobResponse()

    def SetDomainBlockJobSpeed(self, request: pb.SetDomainBlockJobSpeedRequest,
                               context: Ctx) -> pb.SetDomainBlockJobSpeedResponse:
        self.block.set_job_speed(request.name, request.disk, request.bandwidth_bytes)
        return pb.SetDomainBlockJobSpeedResponse()

    def GetDomainBlockJobInfo(self, request: pb.GetDomainBlockJobInfoRequest,
                              context: Ctx) -> pb.GetDomainBlockJobInfoResponse:
        return conv.block_job(self.block.job_info(request.name, request.disk))

    def SetDomainBlockThreshold(self, request: pb.SetDomainBlockThresholdRequest,
                                context: Ctx) -> pb.SetDomainBlockThresholdResponse:
        self.block.set_threshold(request.name, request.disk, request.threshold_bytes)
        return pb.SetDomainBlockThresholdResponse()
