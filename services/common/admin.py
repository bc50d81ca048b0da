"""virtmesh.admin.v1.AdminService: a process administered while it runs, as virt-admin
administers a libvirt daemon.

``AdminServicer`` answers every RPC from a ``ServerControl``, the small surface a
process offers: what it is, its clients, its limits, what it can read again. Log
settings are the same in every process (services/common/logs.py). The servicer's
methods are quick and never block, so the same object is a service's servicer
and what the grpc.aio gateway (gateway/admin_service.py) calls once it has admitted
a call for its own process. Errors are ServiceErrors: the services'
ErrorInterceptor and the gateway turn them into statuses.

The last part, ``DaemonControl`` and ``ClientsInterceptor``, is the control of the
services' daemon (services/common/daemon.py): the AdminServicer's methods are
blocking ones there, run on its threads like any other.

Libvirt-free: the gateway imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import inspect
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import logs, paging
from services.common.clients import ClientInfo, ClientRegistry, aio_call_ender
from services.common.interceptors import identity_from, with_behavior
from services.common.shared import ServiceError
from services.common.version import VERSION
from virtmesh.admin.v1 import admin_service_pb2 as pb
from virtmesh.admin.v1 import admin_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"]
add_to_server = pb_grpc.add_AdminServiceServicer_to_server


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    name: str
    started: datetime.datetime
    #: the libvirt URI; "" for a process without libvirt (the gateway)
    libvirt_uri: str = ""
    #: None: no libvirt connection at all
    libvirt_connected: bool | None = None


@dataclasses.dataclass
class Limit:
    """One limit a process has: how to read it, and to change it while it runs."""

    name: str
    description: str
    get: Callable[[], int]
    #: None: fixed at start
    set: Callable[[int], None] | None = None
    #: how much of it is in use; None: not counted
    in_use: Callable[[], int] | None = None
    #: the most it may be raised to while the process runs (what was allocated at
    #: start); None: no ceiling
    ceiling: int | None = None


class ServerControl(Protocol):
    """What a process offers the admin API."""

    #: the process's name: "gateway", "compute", ...
    name: str

    def info(self) -> ServerInfo: ...

    def clients(self) -> list[ClientInfo]: ...

    def disconnect(self, client_id: str) -> ClientInfo:
        """End the client's calls in flight (ServiceError NOT_FOUND for an unknown id)."""
        ...

    def limits(self) -> list[Limit]: ...

    def reload(self) -> dict[str, str]:
        """Read again what can be: what was read again -> "" or why it was not."""
        ...


def disconnected(registry: ClientRegistry, client_id: str, by: str) -> ClientInfo:
    """``registry.disconnect`` as a ServerControl's disconnect: NOT_FOUND for an
    unknown id, and a log line saying whom."""
    try:
        client = registry.disconnect(client_id, f"disconnected by an administrator ({by})")
    except KeyError:
        raise ServiceError(grpc.StatusCode.NOT_FOUND, f"no client {client_id!r}",
                           "NO_CLIENT") from None
    log.warning("client %s (%s, %s) disconnected: %d calls in flight ended", client.id,
                client.identity or "unknown identity", client.peer, len(client.methods))
    return client


def _timestamp(moment: datetime.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def client_message(info: ClientInfo) -> pb.Client:
    return pb.Client(id=info.id, identity=info.identity, auth=info.auth, peer=info.peer,
                     since=_timestamp(info.since), calls_in_flight=len(info.methods),
                     methods=info.methods, pid=info.pid)


def _limit(limit: Limit) -> pb.Limit:
    return pb.Limit(name=limit.name, value=limit.get(),
                    in_use=limit.in_use() if limit.in_use else -1,
                    settable=limit.set is not None, description=limit.description)


def _level(name: str) -> pb.LogLevel.ValueType:
    return pb.LogLevel.Value(f"LOG_LEVEL_{name}") if name in logs.LEVELS \
        else pb.LOG_LEVEL_UNSPECIFIED


def _level_name(level: pb.LogLevel.ValueType) -> str | None:
    """None for UNSPECIFIED."""
    return pb.LogLevel.Name(level).removeprefix("LOG_LEVEL_") if level else None


def log_settings() -> pb.LogSettings:
    level, filters = logs.log_settings()
    return pb.LogSettings(level=_level(level),
                          filters={name: _level(value) for name, value in filters.items()},
                          pid=os.getpid())


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Every RPC of the admin API for one process. ``context`` is unused: the gateway
    calls these methods without one."""

    def __init__(self, control: ServerControl) -> None:
        self.control = control

    def _mine(self, request: Any) -> None:
        if request.name not in ("", self.control.name):
            raise ServiceError(grpc.StatusCode.NOT_FOUND,
                               f"this is {self.control.name!r}, not {request.name!r}",
                               "NO_SERVER")

    def GetServerInfo(self, request: pb.GetServerInfoRequest,
                      context: Any = None) -> pb.GetServerInfoResponse:
        self._mine(request)
        info = self.control.info()
        state = (pb.LIBVIRT_STATE_NONE if info.libvirt_connected is None
                 else pb.LIBVIRT_STATE_CONNECTED if info.libvirt_connected
                 else pb.LIBVIRT_STATE_DISCONNECTED)
        response = pb.GetServerInfoResponse(
            name=info.name, version=VERSION, pid=os.getpid(),
            start_time=_timestamp(info.started), threads=threading.active_count(),
            libvirt_uri=info.libvirt_uri, libvirt_state=state, hostname=socket.gethostname())
        response.uptime.FromTimedelta(datetime.datetime.now(datetime.UTC) - info.started)
        return response

    def ListClients(self, request: pb.ListClientsRequest,
                    context: Any = None) -> pb.ListClientsResponse:
        self._mine(request)
        chunk, token = paging.page(self.control.clients(), lambda info: info.id,
                                   request.page_size, request.page_token,
                                   paging.fingerprint("clients"))
        return pb.ListClientsResponse(clients=map(client_message, chunk), next_page_token=token)

    def DisconnectClient(self, request: pb.DisconnectClientRequest,
                         context: Any = None) -> pb.DisconnectClientResponse:
        self._mine(request)
        return pb.DisconnectClientResponse(client=client_message(
            self.control.disconnect(request.client_id)))

    def GetLimits(self, request: pb.GetLimitsRequest,
                  context: Any = None) -> pb.GetLimitsResponse:
        self._mine(request)
        limits = sorted(self.control.limits(), key=lambda limit: limit.name)
        return pb.GetLimitsResponse(limits=map(_limit, limits), pid=os.getpid())

    def SetLimit(self, request: pb.SetLimitRequest,
                 context: Any = None) -> pb.SetLimitResponse:
        self._mine(request)
        limit = next((limit for limit in self.control.limits() if limit.name == request.limit),
                     None)
        if limit is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND,
                               f"{self.control.name} has no limit {request.limit!r}", "NO_LIMIT")
        if request.value < 1:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{limit.name} must be at least 1", "BAD_LIMIT")
        if limit.set is None:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{limit.name} is fixed at start: change the setting and "
                               "restart", "LIMIT_FIXED")
        if limit.ceiling is not None and request.value > limit.ceiling:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{limit.name} cannot go above {limit.ceiling}, what was "
                               "allocated at start: change the setting and restart",
                               "LIMIT_ABOVE_START")
        before = limit.get()
        limit.set(request.value)
        log.info("limit %s changed from %d to %d", limit.name, before, request.value)
        return pb.SetLimitResponse(limit=_limit(limit))

    def GetLogSettings(self, request: pb.GetLogSettingsRequest,
                       context: Any = None) -> pb.GetLogSettingsResponse:
        self._mine(request)
        return pb.GetLogSettingsResponse(settings=log_settings())

    def SetLogSettings(self, request: pb.SetLogSettingsRequest,
                       context: Any = None) -> pb.SetLogSettingsResponse:
        self._mine(request)
        filters = {name: _level_name(level) for name, level in request.filters.items()}
        try:
            logs.set_log_settings(_level_name(request.level), filters, request.clear_filters)
        except ValueError as error:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error),
                               "BAD_LOG_SETTINGS") from None
        return pb.SetLogSettingsResponse(settings=log_settings())

    def ReloadServer(self, request: pb.ReloadServerRequest,
                     context: Any = None) -> pb.ReloadServerResponse:
        self._mine(request)
        results = self.control.reload()
        return pb.ReloadServerResponse(
            reloaded=[what for what, error in results.items() if not error],
            failures=[pb.ReloadFailure(what=what, message=error)
                      for what, error in results.items() if error], pid=os.getpid())


# -- the services' daemon (services/common/daemon.py) ---------------------------------


class ClientsInterceptor(grpc.aio.ServerInterceptor):
    """Registers every call (health probes aside) of one socket of a service in
    ``registry``: its client is the identity the gateway vouched for (trusted on the
    main socket only) on this socket, since every peer of a UNIX socket is "unix:".
    Placed outside the daemon's Pipeline, where every method is a coroutine on the
    loop (a blocking one bridged to a thread), so each call can be ended by aborting it
    and cancelling its task (clients.aio_call_ender); a blocking call's thread then
    finishes its libvirt call unseen."""

    def __init__(self, registry: ClientRegistry, socket_path: str,
                 trust_identity: bool) -> None:
        self.registry = registry
        self.peer = f"unix:{socket_path}"
        self.trust_identity = trust_identity
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith("/grpc.health.v1.Health/"):
            return handler
        # wrapped once per method: gRPC asks for the handler on every call
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped[method] = (handler, self._wrap(method, handler))
        return wrapped[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:

        def registered(context: grpc.aio.ServicerContext
                       ) -> contextlib.AbstractContextManager[Any]:
            identity = identity_from(context.invocation_metadata()) \
                if self.trust_identity else ""
            task = asyncio.current_task()
            assert task is not None
            return self.registry.call(f"{self.peer} {identity}", self.peer, method,
                                      aio_call_ender(context, task), identity)

        def wrap(behavior: Any) -> Any:
            if handler.response_streaming:
                async def stream(request: Any, context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[Any]:
                    with registered(context):
                        result = behavior(request, context)
                        if inspect.isawaitable(result):  # writes with context.write
                            await result
                            return
                        async with contextlib.aclosing(result) as responses:
                            async for response in responses:
                                yield response

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with registered(context):
                    return await behavior(request, context)

            return unary

        return with_behavior(handler, wrap)


def _attribute(owner: Any, name: str) -> dict[str, Any]:
    """A Limit's get and set of an attribute of ``owner``."""
    return {"get": lambda: int(getattr(owner, name)),
            "set": lambda value: setattr(owner, name, value)}


class DaemonControl:
    """The ServerControl of a sync service daemon (``services.common.daemon.Daemon``,
    not imported: it imports this module)."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.name: str = daemon.spec.name
        self.started = datetime.datetime.now(datetime.UTC)
        self.registry = ClientRegistry()

    def interceptor(self, socket_path: Any, trust_identity: bool) -> ClientsInterceptor:
        """The interceptor registering the calls of one socket (outermost)."""
        return ClientsInterceptor(self.registry, str(socket_path), trust_identity)

    def info(self) -> ServerInfo:
        connection = self.daemon.connection
        return ServerInfo(self.name, self.started, connection.uri, connection.connected)

    def clients(self) -> list[ClientInfo]:
        return self.registry.clients()

    def disconnect(self, client_id: str) -> ClientInfo:
        return disconnected(self.registry, client_id, self.name)

    def limits(self) -> list[Limit]:
        daemon = self.daemon
        config, servicer = daemon.config, daemon.servicer
        hub, unary, read_only = servicer.events, daemon.unary_calls, daemon.read_only_calls
        workers, streams = daemon.workers, daemon.stream_calls

        def set_workers(value: int) -> None:
            # the pool also holds the streams' threads; more start as calls need them,
            # fewer: no new ones start until the count is below the new size
            workers.size = value + streams.limit

        found = [
            Limit("max_workers", "threads for blocking calls (started as calls need them)",
                  lambda: int(workers.size - streams.limit), set_workers),
            Limit("max_event_watchers", "event watch streams open at once (coroutines)",
                  in_use=lambda: int(hub.subscriber_count), **_attribute(hub, "max_subscribers")),
            Limit("max_calls", "blocking unary calls admitted at once on the main socket "
                  "(running or waiting for a thread; max_workers x 4 at start)",
                  in_use=lambda: int(unary.count), **_attribute(unary, "limit")),
            Limit("max_read_only_calls", "the same on the read-only socket (max_workers / 2 "
                  "at start)", in_use=lambda: int(read_only.count),
                  **_attribute(read_only, "limit")),
            Limit("max_message_bytes", "largest request or response (fixed at start)",
                  lambda: int(config.max_message_bytes)),
        ]
        sessions = getattr(servicer, "sessions", None)
        if sessions is not None:  # compute: console, channel and graphics sessions
            found.append(Limit("max_sessions", "console, channel and graphics sessions (each "
                               "holds a thread; at most the start value, whose threads are "
                               "reserved)", in_use=lambda: int(sessions.open),
                               ceiling=config.max_sessions, **_attribute(sessions, "limit")))
        return found

    def reload(self) -> dict[str, str]:
        """A service holds no TLS material or identities, and reads its settings at
        start: nothing to read again."""
        return {}
