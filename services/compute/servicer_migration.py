"""The migration RPCs of ComputeService (migrating a domain, the bandwidth, downtime
and compression cache of its migrations, post-copy), a mixin of ComputeServicer.

MigrateDomain hands the backend a ``CallWatch``: the call's end aborts the migration's
job, as SaveDomain's (servicer_jobs.py).
"""

from __future__ import annotations

from typing import Any

import grpc

from services.common.call_end import CallWatch
from services.common.config import Config
from services.compute import convert_migration as conv
from services.compute.backend import ComputeBackend
from services.compute.backend_migration import MigrationBackend
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext


class MigrationServicer:
    """A base of ComputeServicer before JobsServicer: its ``__init__`` passes through
    the others' first, then adds the migration backend, which shares the jobs
    backend's guards."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.migration = MigrationBackend(backend, self.jobs)  # type: ignore[attr-defined]

    def MigrateDomain(self, request: pb.MigrateDomainRequest,
                      context: Ctx) -> pb.MigrateDomainResponse:
        self.migration.migrate(request.name, request.destination_uri,
                               conv.parameters(request.parameters),
                               conv.migrate_flags(request), CallWatch(context, "MigrateDomain"))
        return pb.MigrateDomainResponse()

    def GetDomainMigrationMaxSpeed(self, request: pb.GetDomainMigrationMaxSpeedRequest,
                                   context: Ctx) -> pb.GetDomainMigrationMaxSpeedResponse:
        return pb.GetDomainMigrationMaxSpeedResponse(
            bandwidth_mib_per_s=self.migration.max_speed(request.name, request.postcopy))

    def SetDomainMigrationMaxSpeed(self, request: pb.SetDomainMigrationMaxSpeedRequest,
                                   context: Ctx) -> pb.SetDomainMigrationMaxSpeedResponse:
        self.migration.set_max_speed(request.name, request.bandwidth_mib_per_s,
                                     request.postcopy)
        return pb.SetDomainMigrationMaxSpeedResponse()

    def GetDomainMigrationMaxDowntime(self, request: pb.GetDomainMigrationMaxDowntimeRequest,
                                      context: Ctx) -> pb.GetDomainMigrationMaxDowntimeResponse:
        return pb.GetDomainMigrationMaxDowntimeResponse(
            downtime_ms=self.migration.max_downtime(request.name))

    def SetDomainMigrationMaxDowntime(self, request: pb.SetDomainMigrationMaxDowntimeRequest,
                                      context: Ctx) -> pb.SetDomainMigrationMaxDowntimeResponse:
        self.migration.set_max_downtime(request.name, request.downtime_ms)
        return pb.SetDomainMigrationMaxDowntimeResponse()

    def GetDomainMigrationCompressionCache(
            self, request: pb.GetDomainMigrationCompressionCacheRequest,
            context: Ctx) -> pb.GetDomainMigrationCompressionCacheResponse:
        return pb.GetDomainMigrationCompressionCacheResponse(
            cache_bytes=self.migration.compression_cache(request.name))

    def SetDomainMigrationCompressionCache(
            self, request: pb.SetDomainMigrationCompressionCacheRequest,
            context: Ctx) -> pb.SetDomainMigrationCompressionCacheResponse:
        self.migration.set_compression_cache(request.name, request.cache_bytes)
        return pb.SetDomainMigrationCompressionCacheResponse()

    def StartDomainMigrationPostCopy(self, request: pb.StartDomainMigrationPostCopyRequest,
                                     context: Ctx) -> pb.StartDomainMigrationPostCopyResponse:
        self.migration.start_post_copy(request.name)
        return pb.StartDomainMigrationPostCopyResponse()
