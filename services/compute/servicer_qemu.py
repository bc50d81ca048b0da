"""The QEMU passthrough RPCs of ComputeService (a guest agent command, a monitor
command, QEMU's monitor events), a mixin of ComputeServicer.

WatchQemuMonitorEvents is a plain coroutine stream with a bounded queue: its events
are not numbered and cannot be resumed (WatchDomainEvents' can); a watcher that falls
MAX_QUEUED events behind is ended with RESOURCE_EXHAUSTED, one whose libvirt
connection went away with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.config import Config
from services.common.shared import ServiceError
from services.compute.backend import ComputeBackend
from services.compute.backend_qemu import QemuBackend
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext
#: events a watcher may have waiting before it is ended
MAX_QUEUED = 256
#: how often a quiet watch looks whether its libvirt connection is still there (s)
CONNECTION_CHECK = 2.0


class QemuServicer:
    """A base of ComputeServicer: its ``__init__`` passes through this one's, which
    adds the QEMU passthrough backend."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.qemu = QemuBackend(backend)

    def QemuAgentCommand(self, request: pb.QemuAgentCommandRequest,
                         context: Ctx) -> pb.QemuAgentCommandResponse:
        timeout = request.timeout_seconds if request.HasField("timeout_seconds") else None
        return pb.QemuAgentCommandResponse(
            result=self.qemu.agent_command(request.name, request.command, timeout))

    def QemuMonitorCommand(self, request: pb.QemuMonitorCommandRequest,
                           context: Ctx) -> pb.QemuMonitorCommandResponse:
        return pb.QemuMonitorCommandResponse(
            result=self.qemu.monitor_command(request.name, request.command, request.hmp))

    async def WatchQemuMonitorEvents(self, request: pb.WatchQemuMonitorEventsRequest,
                                     context: grpc.aio.ServicerContext
                                     ) -> AsyncIterator[pb.WatchQemuMonitorEventsResponse]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[pb.WatchQemuMonitorEventsResponse] = asyncio.Queue(MAX_QUEUED)
        behind = False

        def deliver(message: pb.WatchQemuMonitorEventsResponse) -> None:
            nonlocal behind
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                behind = True

        def emit(name: str, uuid: str, event: str, seconds: int, micros: int,
                 details: str) -> None:  # on libvirt's event loop thread
            message = pb.WatchQemuMonitorEventsResponse(
                name=name, uuid=uuid, event=event, details=details,
                time=Timestamp(seconds=seconds, nanos=micros * 1000))
            loop.call_soon_threadsafe(deliver, message)

        def register() -> tuple[Any, int]:
            return (self.qemu.watch_monitor_events(request.name, request.event, emit),
                    self.qemu.connection_id())

        stop, conn_id = await asyncio.to_thread(register)
        try:
            await context.send_initial_metadata(())
            while True:
                if behind:
                    raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"this watcher fell {MAX_QUEUED} events behind",
                                       "WATCHER_BEHIND")
                try:
                    message = await asyncio.wait_for(queue.get(), CONNECTION_CHECK)
                except TimeoutError:
                    if not self.qemu.still_connected(conn_id):
                        raise ServiceError(grpc.StatusCode.UNAVAILABLE,
                                           "the libvirt connection was lost; watch again "
                                           "once it is back", "LIBVIRT_DISCONNECTED") from None
                    continue
                yield message
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(stop)
