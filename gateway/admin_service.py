"""virtmesh.admin.v1.AdminService at the gateway: the gateway's own process, or a
service behind it.

A request's ``name`` says which process answers: "" or "gateway" is this process;
a service's name ("compute") the service, to which the call is forwarded on its
main socket with the caller's identity, as the proxy forwards. Either way the call
is admitted here first like every gateway call (gateway/admission.py): authenticated,
limited, authorised on the object ``name`` (the permissions are ``server:*``: read
RPCs for read-only identities, changes for the admin role only) and, when it
changes something, audited. "" is judged and recorded as "gateway".

``GatewayControl`` is this process's ServerControl (services/common/admin.py). A
gateway of several worker processes (gateway/workers.py) answers as one: the worker
the caller reached asks the others over their private sockets (``WorkerAdmin``, mode
0600, nothing admitted there: the caller was admitted by the worker it reached) for
their clients (listed together; ids start with the worker's pid), sends a disconnect
to each until one has the client, and makes a change of limits, log settings or a
reload in every worker. Reads of limits, log settings and server info are the
reached worker's (they are the same in every worker; pid says which answered).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from gateway.admission import Access, admitted, refused
from gateway.backends import Backends, identity_metadata, stamped
from gateway.identity import Identity
from gateway.proxy import relayed
from gateway.routes import Route, driver_of, message_class, method_path, proxied_services
from services.common import admin, paging
from services.common.clients import ClientInfo
from services.common.shared import ServiceError, call_kind, error_status
from virtmesh.admin.v1 import admin_service_pb2 as pb
from virtmesh.admin.v1 import admin_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from gateway.server import Gateway

GATEWAY = "gateway"
#: the changes every worker makes
_EVERY_WORKER = ("SetLimit", "SetLogSettings", "ReloadServer")
#: seconds a worker has to answer another worker
_PEER_TIMEOUT = 5.0


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


class _ByName(pb_grpc.AdminServiceServicer):
    """Every AdminService RPC as ``answer(its name, request, context)``."""

    async def answer(self, name: str, request: Any, context: grpc.aio.ServicerContext
                     ) -> Any:
        raise NotImplementedError

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


class GatewayAdmin(_ByName):
    """Admits each call, then answers it for this process or forwards it to the named
    service."""

    def __init__(self, local: admin.AdminServicer, backends: Backends, access: Access,
                 peers: Sequence[Path] = ()) -> None:
        self.local = local
        #: the other workers' private sockets
        self.peers = [pb_grpc.AdminServiceStub(grpc.aio.insecure_channel(f"unix:{path}"))
                      for path in peers]
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
                if self.peers and name == "ListClients":
                    return await self._all_clients(request)
                if self.peers and name == "DisconnectClient":
                    return await self._disconnect_anywhere(request)
                local = getattr(self.local, name)(request)
                if self.peers and name in _EVERY_WORKER:
                    await self._in_every_worker(name, request)
                return local  # type: ignore[no-any-return]
            except ServiceError as error:
                raise refused(error.code, error.message, error.reason) from None

        return await admitted(self.access, admin.SERVICE.methods_by_name[name], context,
                              request, answer)

    async def _ask_peers(self, name: str, request: Message) -> list[Any]:
        """Each other worker's answer, or its error."""
        return await asyncio.gather(*(getattr(peer, name)(request, timeout=_PEER_TIMEOUT)
                                      for peer in self.peers), return_exceptions=True)

    async def _all_clients(self, request: pb.ListClientsRequest) -> pb.ListClientsResponse:
        answers = await asyncio.gather(self._local_clients(),
                                       *(self._peer_clients(peer) for peer in self.peers))
        everyone = [client for clients in answers for client in clients]
        chunk, token = paging.page(everyone, lambda client: client.id, request.page_size,
                                   request.page_token, paging.fingerprint("clients"))
        return pb.ListClientsResponse(clients=chunk, next_page_token=token)

    async def _local_clients(self) -> list[pb.Client]:
        return list(map(admin.client_message, self.local.control.clients()))

    async def _peer_clients(self, peer: pb_grpc.AdminServiceStub) -> list[pb.Client]:
        try:
            return await _every_page(lambda token: peer.ListClients(pb.ListClientsRequest(
                name=GATEWAY, page_size=1000, page_token=token), timeout=_PEER_TIMEOUT))
        except grpc.aio.AioRpcError as error:
            raise _worker_failed("ListClients", error) from None

    async def _disconnect_anywhere(self, request: pb.DisconnectClientRequest
                                   ) -> pb.DisconnectClientResponse:
        try:
            return self.local.DisconnectClient(request)
        except ServiceError as error:
            if error.code != grpc.StatusCode.NOT_FOUND:
                raise
            missing = error
        for answer in await self._ask_peers("DisconnectClient", request):
            if isinstance(answer, pb.DisconnectClientResponse):
                return answer
            if answer.code() != grpc.StatusCode.NOT_FOUND:
                raise _worker_failed("DisconnectClient", answer)
        raise missing

    async def _in_every_worker(self, name: str, request: Message) -> None:
        failed = [answer for answer in await self._ask_peers(name, request)
                  if isinstance(answer, BaseException)]
        if failed:
            raise _worker_failed(name, failed[0], len(failed))



def _worker_failed(name: str, error: BaseException, count: int = 1) -> ServiceError:
    details = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
    return ServiceError(grpc.StatusCode.UNAVAILABLE,
                        f"{name}: {count} other gateway worker(s) did not answer ({details}); "
                        "this worker's part is done", "WORKER_UNREACHABLE")



async def _every_page(page: Any) -> list[pb.Client]:
    clients: list[pb.Client] = []
    token = ""
    while True:
        reply = await page(token)
        clients += reply.clients
        token = reply.next_page_token
        if not token:
            return clients


class WorkerAdmin(_ByName):
    """The AdminService on a worker's private socket: this worker's own answers, for
    the worker a caller reached (which admitted and audited the call)."""

    def __init__(self, local: admin.AdminServicer) -> None:
        self.local = local

    async def answer(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return getattr(self.local, name)(request)
        except ServiceError as error:
            status = error_status(error.code, error.message, error.reason)
            await context.abort(status.code, status.details, status.trailing_metadata)

