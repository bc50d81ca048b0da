"""The driver services behind the gateway: one channel each, the metadata of a call
made for a caller, and how to ask a service's health.

Every part of the gateway that talks to a service (forwarding, the gateway API's
fan-out, its health service, activation) uses these channels and this one probe.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.identity import Identity
from services.common import logs
from services.common.shared import GROUPS_KEY, IDENTITY_KEY

Status = health_pb2.HealthCheckResponse
Metadata = tuple[tuple[str, Any], ...]


def stamped(metadata: Any) -> Metadata:
    """``metadata`` with the request id of the call being served as its only one."""
    request_id = logs.request_id.get()
    kept = tuple((key, value) for key, value in metadata or () if key != logs.REQUEST_ID_KEY)
    return (*kept, (logs.REQUEST_ID_KEY, request_id)) if request_id else kept


def _ascii(text: str) -> str:
    """Metadata values are printable ASCII: anything else is backslash-escaped."""
    return text.encode("unicode_escape").decode("ascii")


def identity_metadata(identity: Identity) -> Metadata:
    """Who a call to a service is made for: the services log it and trust it."""
    return _identity_metadata(identity.name, identity.groups)


@functools.lru_cache(maxsize=4096)
def _identity_metadata(name: str, groups: frozenset[str]) -> Metadata:
    return ((IDENTITY_KEY, _ascii(name)), (GROUPS_KEY, _ascii(",".join(sorted(groups)))))


@dataclasses.dataclass(frozen=True)
class Health:
    """A service's answer to grpc.health.v1 Check, or why it gave none."""

    #: the service's status; NOT_SERVING when it could not be asked
    status: int
    #: its response headers (services/common/daemon.py: version, start time)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    #: "CODE: details" of the failed Check; "" when the service answered
    error: str = ""

    @property
    def serving(self) -> bool:
        return self.status == Status.SERVING


class Backends:
    """One long-lived channel per driver service, created on first use."""

    def __init__(self, socket_dir: Path, max_message_bytes: int) -> None:
        self.socket_dir = socket_dir
        self._options = [("grpc.max_receive_message_length", max_message_bytes),
                         ("grpc.max_send_message_length", max_message_bytes),
                         ("grpc.enable_retries", 0),
                         # Local sockets: after a failed connect, try again within a
                         # second (not gRPC's up to 2 minutes), e.g. once activated.
                         ("grpc.initial_reconnect_backoff_ms", 200),
                         ("grpc.max_reconnect_backoff_ms", 1000)]
        self._channels: dict[str, grpc.aio.Channel] = {}

    def socket(self, driver: str) -> Path:
        return self.socket_dir / f"{driver}.sock"

    def target(self, driver: str) -> str:
        return f"unix:{self.socket(driver)}"

    def channel(self, driver: str) -> grpc.aio.Channel:
        channel = self._channels.get(driver)
        if channel is None:
            channel = grpc.aio.insecure_channel(self.target(driver), options=self._options)
            self._channels[driver] = channel
        return channel

    async def health(self, driver: str, service: str = "", timeout: float = 2.0) -> Health:
        """The health of ``service`` ("": the process) as ``driver``'s service says."""
        stub = health_pb2_grpc.HealthStub(self.channel(driver))
        call = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            return Health(Status.NOT_SERVING, error=f"{error.code().name}: {error.details()}")
        headers = {key: str(value) for key, value in await call.initial_metadata() or ()}
        return Health(reply.status, headers)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
