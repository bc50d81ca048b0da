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
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from gateway.audit import AuditLog
from gateway.authn import Authenticator
from gateway.authz import Authorizer, Decision, Denied
from gateway.backends import Metadata, stamped
from gateway.identity import AuthenticationError, Identity
from gateway.limits import Limiter, LimitExceeded
from gateway.observe import REQUEST_IDS, CallLog
from services.common import logs, metrics
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
    #: the per-call log line of forwarded calls
    call_log: CallLog = dataclasses.field(default_factory=CallLog)
    #: run before each call is authenticated (a worker: reload files changed meanwhile)
    before_call: Callable[[], None] | None = None


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


class _Slot:
    """One of an identity's calls in flight, held for a ``with`` block (a class, not a
    generator: one per call)."""

    def __init__(self, limiter: Limiter, identity: Identity) -> None:
        self.limiter = limiter
        self.identity = identity

    def __enter__(self) -> None:
        try:
            self.limiter.acquire(self.identity)
        except LimitExceeded as error:
            raise refused(error.code, str(error), "TOO_MANY_CALLS") from None

    def __exit__(self, *_: Any) -> None:
        self.limiter.release(self.identity)


@functools.cache
def _always_read_only(method: MethodDescriptor) -> bool:
    """Read-only whatever the request says (is_read_only matches patterns: cached)."""
    return is_read_only(method)


def read_only(method: MethodDescriptor, request: Message | None) -> bool:
    """is_read_only, asking the request only when the method's answer depends on it."""
    return _always_read_only(method) or (request is not None and is_read_only(method, request))


class CallGuard:
    """One call on its way through the gateway: who makes it, whether it may, and
    its audit record once it has ended (``async with guard.recorded():`` around the
    whole call).

    ``handler``: the call's method handler, when this guard also records the call's
    metrics, request id and log line (gateway/observe.py; the proxy's calls), rather
    than the server's interceptors (the gateway's own API)."""

    def __init__(self, access: Access, method: MethodDescriptor, path: str,
                 context: grpc.aio.ServicerContext, handler: Any = None) -> None:
        self.access = access
        self.method = method
        self.path = path
        self.context = context
        #: the request's metadata, read once
        self.metadata: Metadata = tuple(context.invocation_metadata() or ())
        self.observed: metrics.RpcMetrics | None = None
        if handler is not None:
            logs.request_id.set(REQUEST_IDS.of(self.metadata))
            self.observed = metrics.RpcMetrics(path, handler)
            if not method.client_streaming:  # its one request message has come
                self.observed.received()
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
            self.end(code=end.code, details=end.message)
            await self.context.abort(end.code, end.message, stamped(end.trailers))
        except BaseException as error:
            self.end(error=error)
            raise
        self.end()

    async def counted(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A request stream, its bytes counted for the record."""
        assert self.streamed is not None
        async for message in requests:
            self.streamed[0] += len(message)
            if self.observed is not None:
                self.observed.received()
            yield message

    def sent(self, response: bytes) -> bytes:
        """A response (of a streaming call: its bytes counted for the record)."""
        if self.streamed is not None:
            self.streamed[1] += len(response)
        if self.observed is not None:
            self.observed.sent()
        return response

    def authenticate(self) -> Identity:
        if self.access.before_call is not None:
            self.access.before_call()
        try:
            self.identity = self.access.authenticator.authenticate(self.context, self.metadata,
                                                                   self.peer)
        except AuthenticationError as error:
            raise refused(grpc.StatusCode.UNAUTHENTICATED, str(error.args[0]),
                          "UNAUTHENTICATED") from None
        if self._client is not None:
            self._client.identify(self.identity.name, self.identity.method)
        return self.identity

    def limited(self, identity: Identity) -> _Slot:
        """``with guard.limited(identity):`` holds one of the identity's calls in flight."""
        return _Slot(self.access.limiter, identity)

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

    def authorize_bytes(self, identity: Identity, request_class: type[Message],
                        data: bytes | None) -> Decision:
        """authorize, decoding the request only when the decision needs one of its
        fields: not when the caller may make the call on every object and the call is
        read-only whatever it asks (no names for an audit record either)."""
        decision = self.access.authorizer.without_request(identity, self.method)
        if decision is not None:
            return decision
        return self.authorize(identity, decoded(request_class, data))

    def end(self, code: grpc.StatusCode | None = None, error: BaseException | None = None,
            details: str = "") -> None:
        """Once: the audit record of a call that may change something, and (with
        ``observed``) the call's metrics and log line."""
        if self._recorded:
            return
        self._recorded = True
        code = code or self.context.code()
        if code is None:
            code = (grpc.StatusCode.CANCELLED if self.context.cancelled()
                    or isinstance(error, (GeneratorExit, asyncio.CancelledError))
                    else grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK)
        seconds = time.perf_counter() - self.started
        unchanging = read_only(self.method, self.request)
        if self.observed is not None:
            self.observed.handled(code)
            if code != grpc.StatusCode.OK:
                details = details or self.context.details() or ""
            self.access.call_log.write(self.path, code, seconds, details, unchanging)
        if unchanging:
            return
        logs.request_id.set(self.request_id)  # the record names this call's request id
        self.access.audit.record(method=self.path, identity=self.identity,
                                 peer=self.peer, objects=self.objects, code=code,
                                 duration=seconds, denied_permission=self.denied,
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
        with guard.limited(identity):
            guard.authorize(identity, request)
            message = await answer(identity)
    return message
