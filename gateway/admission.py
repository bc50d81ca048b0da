"""What every call to the gateway passes before it is served, and its audit record.

In this order: authentication (gateway/authn.py: no identity, UNAUTHENTICATED),
the caller's limit of calls in flight (gateway/limits.py: RESOURCE_EXHAUSTED),
and authorisation of the decoded request (gateway/authz.py: PERMISSION_DENIED
naming the permission missing). A call that fails any of them is never served.
Every call that is not read-only is written to the audit log (gateway/audit.py)
when it ends, allowed or not, and before its caller gets the status: whoever has
seen a call end finds its record.

Both the forwarding proxy (gateway/proxy.py) and the gateway's own APIs
(gateway/api.py, gateway/admin_service.py) admit their calls here, through a
CallGuard. Each call is also registered by its connection (``Access.clients``,
services/common/clients.py) for the admin API: an administrator may end a
connection's calls in flight (UNAVAILABLE), and its further calls are then
refused here with UNAVAILABLE before anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from gateway.audit import AuditLog
from gateway.authn import Authenticator
from gateway.authz import Authorizer, Decision, Denied
from gateway.backends import Metadata
from gateway.identity import AuthenticationError, Identity
from gateway.limits import Limiter, LimitExceeded
from services.common import logs
from services.common.acl import is_read_only
from services.common.clients import CallHandle, ClientRegistry, aio_call_ender
from services.common.shared import error_status


@dataclasses.dataclass(frozen=True)
class Access:
    """What every call passes before it is served, and where it is recorded."""

    authenticator: Authenticator
    limiter: Limiter
    authorizer: Authorizer
    audit: AuditLog
    #: calls in flight by connection (peer), for the admin API
    clients: ClientRegistry = dataclasses.field(default_factory=ClientRegistry)


class EndCall(Exception):  # noqa: N818 - not an error of the gateway: how a call ends
    """Ends the client's call with this status once its audit record is written (see
    CallGuard.recorded), so whoever sees the status finds the record already there."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: Metadata = ()) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.trailers = trailers


def refused(code: grpc.StatusCode, message: str, reason: str, **metadata: str) -> EndCall:
    """A status of the gateway's own, with an ErrorInfo naming ``reason``."""
    trailers = tuple(error_status(code, message, reason, metadata=metadata).trailing_metadata)
    return EndCall(code, message, trailers)


def decoded(request_class: type[Message], data: bytes | None) -> Message:
    """The request a client sent as bytes; INVALID_ARGUMENT when it is not one."""
    try:
        return request_class.FromString(data or b"")
    except DecodeError as error:
        raise refused(grpc.StatusCode.INVALID_ARGUMENT,
                      f"malformed {request_class.DESCRIPTOR.full_name}: {error}",
                      "MALFORMED_REQUEST") from None


class CallGuard:
    """One call on its way through the gateway: who makes it, whether it may, and
    its audit record once it has ended."""

    def __init__(self, access: Access, method: MethodDescriptor, path: str,
                 context: grpc.aio.ServicerContext) -> None:
        self.access = access
        self.method = method
        self.path = path
        self.context = context
        self.identity: Identity | None = None
        self.request: Message | None = None
        #: the objects the request addresses, as authorisation found them
        self.objects: tuple[str, ...] = ()
        self.denied = ""
        #: a streaming call's message bytes from and to the client, for its record
        self.streamed: list[int] | None = (
            [0, 0] if method.client_streaming or method.server_streaming else None)
        self.started = time.perf_counter()
        self._recorded = False
        self._client: CallHandle | None = None
        # Read now, while the call is alive: end() may run after grpc.aio has released
        # the call (see proxy.py's stream_response), where peer() is a SIGSEGV, and in
        # the context of whatever task the garbage collector closed the stream in.
        self.peer = context.peer()
        self.request_id = logs.request_id.get()

    @contextlib.asynccontextmanager
    async def recorded(self) -> AsyncIterator[None]:
        """Around the whole call: an EndCall raised inside ends it with that status,
        after the audit record (a caller that sees the status finds the record)."""
        clients = self.access.clients
        try:
            if clients.refused(self.peer):
                raise refused(grpc.StatusCode.UNAVAILABLE, "this connection was disconnected "
                              "by an administrator: open a new one", "CLIENT_DISCONNECTED")
            task = asyncio.current_task()
            assert task is not None
            # ended by the admin API after its audit record
            ender = aio_call_ender(self.context, task, lambda code: self.end(code=code))
            with clients.call(self.peer, self.peer, self.path, ender) as client:
                self._client = client
                yield
        except EndCall as end:
            self.end(code=end.code)
            await self.context.abort(end.code, end.message, end.trailers)
        except BaseException as error:
            self.end(error=error)
            raise
        self.end()

    async def counted(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A request stream, its bytes counted for the record."""
        assert self.streamed is not None
        async for message in requests:
            self.streamed[0] += len(message)
            yield message

    def sent(self, response: bytes) -> bytes:
        """A response of a streaming call, its bytes counted for the record."""
        if self.streamed is not None:
            self.streamed[1] += len(response)
        return response

    def authenticate(self) -> Identity:
        try:
            self.identity = self.access.authenticator.authenticate(self.context)
        except AuthenticationError as error:
            raise refused(grpc.StatusCode.UNAUTHENTICATED, str(error.args[0]),
                          "UNAUTHENTICATED") from None
        if self._client is not None:
            self._client.identify(self.identity.name, self.identity.method)
        return self.identity

    @contextlib.asynccontextmanager
    async def limited(self, identity: Identity) -> AsyncIterator[None]:
        try:
            async with self.access.limiter.call(identity):
                yield
                return
        except LimitExceeded as error:
            raise refused(error.code, str(error), "TOO_MANY_CALLS") from None

    def authorize(self, identity: Identity, request: Message) -> Decision:
        self.request = request
        try:
            decision = self.access.authorizer.authorize(identity, self.method, request)
        except Denied as error:
            self.denied, self.objects = error.permission, error.objects
            raise refused(grpc.StatusCode.PERMISSION_DENIED, str(error), "PERMISSION_MISSING",
                          permission=error.permission, object=error.name or "") from None
        self.objects = decision.objects
        return decision

    def end(self, code: grpc.StatusCode | None = None, error: BaseException | None = None
            ) -> None:
        """Write the audit record of a call that may change something, once."""
        if self._recorded or is_read_only(self.method, self.request):
            return
        self._recorded = True
        code = code or self.context.code()
        if code is None:
            code = (grpc.StatusCode.CANCELLED if self.context.cancelled()
                    or isinstance(error, (GeneratorExit, asyncio.CancelledError))
                    else grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK)
        logs.request_id.set(self.request_id)  # the record names this call's request id
        self.access.audit.record(method=self.path, identity=self.identity,
                                 peer=self.peer, objects=self.objects, code=code,
                                 duration=time.perf_counter() - self.started,
                                 denied_permission=self.denied,
                                 streamed=(self.streamed[0], self.streamed[1])
                                 if self.streamed else None)


async def admitted(access: Access, method: MethodDescriptor, context: grpc.aio.ServicerContext,
                   request: Message, answer: Callable[[Identity], Awaitable[Message]]
                   ) -> Message:
    """``answer`` for the caller of one of the gateway's own unary RPCs, once admitted
    as every gateway call is (read-only calls are not audited)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    guard = CallGuard(access, method, path, context)
    async with guard.recorded():
        identity = guard.authenticate()
        async with guard.limited(identity):
            guard.authorize(identity, request)
            message = await answer(identity)
    return message
