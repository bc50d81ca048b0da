"""virtmesh.admin.v1.AdminService at the gateway: the gateway's own process, or a
service behind it.

A request's ``name`` says which process answers: "" or "gateway" is this process;
a service's name ("compute") the service, to which the call is forwarded on its
main socket with the caller's identity, as the proxy forwards. Either way the call
is admitted here first like every gateway call (gateway/admission.py): authenticated,
limited, authorised on the object ``name`` (the permissions are ``server:*``: read
RPCs for read-only identities, changes for the admin role only) and, when it
changes something, audited. "" is judged and recorded as "gateway".

``GatewayControl`` is this process's ServerControl (services/common/admin.py). Each
answer is about one process and says its pid; client ids start with it. A gateway of
several worker processes aggregates by asking each worker: the clients of all of
them together, a disconnect sent to the worker whose pid starts the id, a change of
limits, log settings or a reload made in every one.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from gateway.admission import Access, admitted, refused
from gateway.backends import Backends, identity_metadata, stamped
from gateway.identity import Identity
from gateway.proxy import relayed
from gateway.routes import Route, driver_of, message_class, method_path, proxied_services
from services.common import admin
from services.common.clients import ClientInfo
from services.common.shared import ServiceError, call_kind
from virtmesh.admin.v1 import admin_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from gateway.server import Gateway

GATEWAY = "gateway"


class GatewayControl:
    """The gateway process's ServerControl."""

    name = GATEWAY

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.started = datetime.datetime.now(datetime.UTC)

    def info(self) -> admin.ServerInfo:
        return admin.ServerInfo(GATEWAY, self.started)

    def clients(self) -> list[ClientInfo]:
        return self.gateway.access.clients.clients()

    def disconnect(self, client_id: str) -> ClientInfo:
        return admin.disconnected(self.gateway.access.clients, client_id, GATEWAY)

    def limits(self) -> list[admin.Limit]:
        gateway, config = self.gateway, self.gateway.config
        limiter, health = gateway.limiter, gateway.health
        return [
            admin.Limit("max_client_requests", "calls in flight per identity",
                        lambda: limiter.max_client_requests,
                        lambda value: setattr(limiter, "max_client_requests", value),
                        limiter.most_in_flight),
            admin.Limit("max_health_watchers", "health Watch streams open at once",
                        lambda: health.max_watchers,
                        lambda value: setattr(health, "max_watchers", value),
                        lambda: health.watchers),
            admin.Limit("max_clients", "TCP connections (a gRPC option: fixed at start)",
                        lambda: config.max_clients),
            admin.Limit("max_streams_per_connection",
                        "calls open at once on one connection (a gRPC option: fixed at start)",
                        lambda: config.max_streams_per_connection),
            admin.Limit("max_message_bytes", "largest request or response (fixed at start)",
                        lambda: config.max_message_bytes),
        ]

    def reload(self) -> dict[str, str]:
        return self.gateway.reload(force=True)


class GatewayAdmin(pb_grpc.AdminServiceServicer):
    """Admits each call, then answers it for this process or forwards it to the named
    service."""

    def __init__(self, control: GatewayControl, backends: Backends, access: Access) -> None:
        self.local = admin.AdminServicer(control)
        self.backends = backends
        self.access = access
        self.services = {driver_of(service.full_name) for service in proxied_services()}
        self._routes: dict[tuple[str, str], Route] = {}

    def _route(self, driver: str, name: str) -> Route:
        """The call of method ``name`` on ``driver``'s socket, bytes in and out."""
        key = (driver, name)
        if key not in self._routes:
            method = admin.SERVICE.methods_by_name[name]
            path = method_path(method)
            self._routes[key] = Route(
                driver, path, method, call_kind(False, False), message_class(method.input_type),
                message_class(method.output_type),
                self.backends.channel(driver).unary_unary(path))
        return self._routes[key]

    async def _forward(self, driver: str, name: str, request: Message,
                       context: grpc.aio.ServicerContext, identity: Identity) -> Message:
        route = self._route(driver, name)
        try:
            reply = await route.call(request.SerializeToString(),
                                     timeout=context.time_remaining(),
                                     metadata=stamped(identity_metadata(identity)))
        except grpc.aio.AioRpcError as error:
            raise relayed(route, self.backends, error) from None
        return route.response_class.FromString(reply)

    async def answer(self, name: str, request: Any, context: grpc.aio.ServicerContext
                     ) -> Message:
        if not request.name:
            request.name = GATEWAY  # judged and recorded as the gateway

        async def answer(identity: Identity) -> Message:
            if request.name != GATEWAY:
                if request.name not in self.services:
                    raise refused(grpc.StatusCode.NOT_FOUND, f"no service {request.name!r} "
                                  "behind this gateway", "NO_SERVER")
                return await self._forward(request.name, name, request, context, identity)
            try:
                return getattr(self.local, name)(request)  # type: ignore[no-any-return]
            except ServiceError as error:
                raise refused(error.code, error.message, error.reason) from None

        return await admitted(self.access, admin.SERVICE.methods_by_name[name], context,
                              request, answer)

    # -- the RPCs: each is answer() under its name ---------------------------------

    async def GetServerInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.answer("GetServerInfo", request, context)

    async def ListClients(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.answer("ListClients", request, context)

    async def DisconnectClient(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.answer("DisconnectClient", request, context)

    async def GetLimits(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.answer("GetLimits", request, context)

    async def SetLimit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.answer("SetLimit", request, context)

    async def GetLogSettings(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.answer("GetLogSettings", request, context)

    async def SetLogSettings(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.answer("SetLogSettings", request, context)

    async def ReloadServer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.answer("ReloadServer", request, context)
