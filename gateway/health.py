"""grpc.health.v1 on the gateway, answering for the services behind it too.

``Check("")`` is the gateway itself. ``Check("virtmesh.compute.v1.ComputeService")``
asks the compute service's own health service, so a probe through the gateway
sees a backend that is down or disconnected from libvirt as NOT_SERVING.

Health needs no identity (load balancers and kubelets probe it), so its Watch
streams, each of which probes its service every ``watch_interval``, are bounded:
one more than ``max_watchers`` (for all the gateway's workers together) gets
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.backends import Backends, Status
from gateway.limits import SharedCounts
from gateway.routes import driver_of

GATEWAY_SERVICE = "virtmesh.gateway.v1.GatewayService"
#: the health watches' count among the calls in flight per identity (no identity has
#: an empty authentication method)
_WATCHES = ("", "health watches")


class GatewayHealth(health_pb2_grpc.HealthServicer):
    def __init__(self, backends: Backends, services: set[str], probe_timeout: float = 2.0,
                 watch_interval: float = 1.0, max_watchers: int = 100,
                 shared: SharedCounts | None = None) -> None:
        self.backends = backends
        self.services = services
        self.probe_timeout = probe_timeout
        self.watch_interval = watch_interval
        self.max_watchers = max_watchers
        self.watchers = 0
        #: the watches of every worker of the gateway (gateway/workers.py), if several
        self.shared = shared
        self.serving = True

    async def status_of(self, service: str) -> int | None:
        """The service's health, or None for a name the gateway does not know."""
        if service in ("", GATEWAY_SERVICE):
            return Status.SERVING if self.serving else Status.NOT_SERVING
        driver = driver_of(service)
        if service not in self.services or driver is None:
            return None
        return (await self.backends.health(driver, service, self.probe_timeout)).status

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        status = await self.status_of(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service!r}")
        return Status(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:  # type: ignore[override]
        held = (self.shared.take(_WATCHES, self.max_watchers) if self.shared is not None
                else self.watchers if self.watchers >= self.max_watchers else -1)
        if held >= 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{held} health watches are open, the most allowed "
                                "(max_health_watchers); use Check, or retry later")
        self.watchers += 1
        try:
            last = None
            while True:
                status = await self.status_of(request.service)
                if status is None:
                    status = Status.SERVICE_UNKNOWN
                if status != last:
                    last = status
                    yield Status(status=status)
                await asyncio.sleep(self.watch_interval)
        finally:
            self.watchers -= 1
            if self.shared is not None:
                self.shared.give_back(_WATCHES)
