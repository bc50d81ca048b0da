"""Forward gRPC calls to the driver services, once the caller may make them.

Every call passes, in this order: authentication (gateway/authn.py: no identity,
UNAUTHENTICATED), the caller's limit of calls in flight (gateway/limits.py:
RESOURCE_EXHAUSTED), and authorisation of the decoded request (gateway/authz.py:
PERMISSION_DENIED naming the permission missing); a call that fails any of them
never reaches a backend. Every call that is not read-only is written to the
audit log (gateway/audit.py) when it ends, allowed or not, and before its caller
gets the status: whoever has seen a call end finds its record.

The backend gets the request's bytes as the client sent them, with the caller's
identity in metadata (keys in services/common/shared.py; whatever the client sent under
those keys is dropped, so no one can speak for someone else). Responses are relayed as
bytes, except the List responses and Watch events that the caller may only see
in part: those are decoded, filtered and encoded again. The gateway relays
metadata, deadline and cancellation, and hands the backend's status, message and
details (``grpc-status-details-bin``) back unchanged. Only a backend that cannot be
reached gets a status of the gateway's own: UNAVAILABLE naming the service,
unless activation is configured: then the gateway starts the service and makes
the call again (gateway/activation.py). Only a call with a single request message
is made again; a client-streaming call gets UNAVAILABLE "retry" once the service
has been started, since the failed call consumed its request messages.
The call's request id goes to the backend, and back to the client in the response
headers (initial metadata), so that the backend's trailers stay unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from gateway.activation import ActivationError, Activator
from gateway.audit import AuditLog
from gateway.authn import Authenticator
from gateway.authz import Authorizer, Decision, Denied, addressed_objects
from gateway.backends import Backends, Metadata, identity_metadata, stamped
from gateway.identity import AuthenticationError, Identity
from gateway.limits import Limiter, LimitExceeded
from gateway.routes import Route
from services.common import logs, metrics
from services.common.acl import is_read_only
from services.common.shared import GROUPS_KEY, IDENTITY_KEY

log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Metadata the gateway does not relay: set by gRPC itself on each hop.
_HOP_KEYS = frozenset({"user-agent", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout",
                       "te", "content-type", "authorization"})
#: Metadata only the gateway sets: dropped from what the client sent.
_IDENTITY_KEYS = frozenset({IDENTITY_KEY, GROUPS_KEY, f"{IDENTITY_KEY}-bin",
                            f"{GROUPS_KEY}-bin"})


@dataclasses.dataclass(frozen=True)
class Access:
    """What every call passes before it is forwarded, and where it is recorded."""

    authenticator: Authenticator
    limiter: Limiter
    authorizer: Authorizer
    audit: AuditLog


def forwarded_metadata(context: grpc.aio.ServicerContext, identity: Identity) -> Metadata:
    kept = tuple((key, value) for key, value in context.invocation_metadata() or ()
                 if key not in _HOP_KEYS and key not in _IDENTITY_KEYS
                 and not key.startswith(":"))
    return stamped((*kept, *identity_metadata(identity)))


def unreachable(code: grpc.StatusCode, trailers: Any) -> bool:
    """The call never reached its backend, so making it again is safe: UNAVAILABLE
    without the status details that every virtmesh service sends with its errors."""
    return code == grpc.StatusCode.UNAVAILABLE and not any(
        key == STATUS_DETAILS_KEY for key, _ in trailers or ())


class EndCall(Exception):  # noqa: N818 - not an error of the gateway: how a call ends
    """Ends the client's call with this status once its audit record is written (see
    CallGuard.recorded), so whoever sees the status finds the record already there."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: Metadata = ()) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.trailers = trailers


def status_trailers(code: grpc.StatusCode, message: str, reason: str,
                    **metadata: str) -> Metadata:
    """The google.rpc.Status trailer of the gateway's own errors, with an ErrorInfo."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="virtmesh.dev",
                                          metadata=metadata))
    status = status_pb2.Status(code=code.value[0], message=message, details=[info])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def unavailable(route: Route, message: str, reason: str = "SERVICE_UNAVAILABLE") -> EndCall:
    """The gateway's own UNAVAILABLE naming the service."""
    metrics.UPSTREAM_UNAVAILABLE.labels(route.driver).inc()
    log.warning("%s: %s", route.path, message)
    return EndCall(grpc.StatusCode.UNAVAILABLE, message,
                   status_trailers(grpc.StatusCode.UNAVAILABLE, message, reason,
                                   service=route.driver))


def relayed(route: Route, backends: Backends, error: grpc.aio.AioRpcError) -> EndCall:
    """The backend's status for the client, or UNAVAILABLE if it was unreachable."""
    trailers = tuple(error.trailing_metadata() or ())
    if unreachable(error.code(), trailers):
        return unavailable(route, f"{route.driver} service is unavailable at "
                           f"{backends.target(route.driver)}: {error.details()}")
    return EndCall(error.code(), error.details() or "", trailers)


def _call_options(context: grpc.aio.ServicerContext, identity: Identity) -> dict[str, Any]:
    return {"timeout": context.time_remaining(),
            "metadata": forwarded_metadata(context, identity)}


def _identity(data: bytes) -> bytes:
    return data


def _refused(code: grpc.StatusCode, message: str, reason: str, **metadata: str) -> EndCall:
    return EndCall(code, message, status_trailers(code, message, reason, **metadata))


async def _peek(requests: AsyncIterator[bytes]) -> tuple[bytes | None, AsyncIterator[bytes]]:
    """The first message of a request stream, and the whole stream again."""
    first = await anext(aiter(requests), None)

    async def again() -> AsyncIterator[bytes]:
        if first is None:
            return
        yield first
        async for message in requests:
            yield message

    return first, again()


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
        self.denied = ""
        self.started = time.perf_counter()
        self._recorded = False
        # Read now, while the call is alive: end() may run after grpc.aio has released
        # the call (see stream_response), where peer() is a SIGSEGV, and in the
        # context of whatever task the garbage collector closed the stream in.
        self.peer = context.peer()
        self.request_id = logs.request_id.get()

    @contextlib.asynccontextmanager
    async def recorded(self) -> AsyncIterator[None]:
        """Around the whole call: an EndCall raised inside ends it with that status,
        after the audit record (a caller that sees the status finds the record)."""
        try:
            yield
        except EndCall as end:
            self.end(code=end.code)
            await self.context.abort(end.code, end.message, end.trailers)
        except BaseException as error:
            self.end(error=error)
            raise
        self.end()

    def authenticate(self) -> Identity:
        try:
            self.identity = self.access.authenticator.authenticate(self.context)
        except AuthenticationError as error:
            raise _refused(grpc.StatusCode.UNAUTHENTICATED, str(error.args[0]),
                           "UNAUTHENTICATED") from None
        return self.identity

    @contextlib.asynccontextmanager
    async def limited(self, identity: Identity) -> AsyncIterator[None]:
        try:
            async with self.access.limiter.call(identity):
                yield
                return
        except LimitExceeded as error:
            raise _refused(error.code, str(error), "TOO_MANY_CALLS") from None

    def authorize(self, identity: Identity, request: bytes | None) -> Decision:
        message_class = message_factory.GetMessageClass(self.method.input_type)
        try:
            self.request = message_class.FromString(request or b"")
        except DecodeError as error:
            raise _refused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"malformed {self.method.input_type.full_name}: {error}",
                           "MALFORMED_REQUEST") from None
        try:
            return self.access.authorizer.authorize(identity, self.method, self.request)
        except Denied as error:
            self.denied = error.permission
            raise _refused(grpc.StatusCode.PERMISSION_DENIED, str(error), "PERMISSION_MISSING",
                           permission=error.permission, object=error.name or "") from None

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
        objects = addressed_objects(self.method, self.request) if self.request else ()
        logs.request_id.set(self.request_id)  # the record names this call's request id
        self.access.audit.record(method=self.path, identity=self.identity,
                                 peer=self.peer, objects=objects, code=code,
                                 duration=time.perf_counter() - self.started,
                                 denied_permission=self.denied)


#: (client streaming, server streaming) -> gRPC's handler factory for that shape
_HANDLER_KINDS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class ProxyHandler(grpc.GenericRpcHandler):
    """Serves every route by forwarding to the route's backend, once the caller may."""

    def __init__(self, routes: dict[str, Route], backends: Backends, access: Access,
                 activator: Activator | None = None) -> None:
        self.routes = routes
        self.backends = backends
        self.access = access
        self.activator = activator
        # Built once: gRPC asks for a handler on every call, and building one looks up
        # descriptors and message classes.
        self._handlers = {path: self._handler(route) for path, route in routes.items()}

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method  # type: ignore[attr-defined]
        return self._handlers.get(path) or _unknown_method(path)

    def _handler(self, route: Route) -> grpc.RpcMethodHandler:
        kind = _HANDLER_KINDS[(route.client_streaming, route.server_streaming)]
        return kind(self._guarded(route, self._forwarder(route)),
                    request_deserializer=None, response_serializer=None)

    def _guarded(self, route: Route, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` behind authentication, limits and authorisation, with audit, and
        with its responses filtered to what the caller may see."""
        access = self.access
        method = descriptor_pool.Default().FindMethodByName(f"{route.service}.{route.method}")
        response_class = message_factory.GetMessageClass(method.output_type)

        def filtered(decision: Decision, response: bytes) -> bytes | None:
            if not decision.listed:
                return response
            message = response_class.FromString(response)
            if not access.authorizer.filter_message(decision, message, route.server_streaming):
                return None
            return message.SerializeToString()

        async def admit(guard: CallGuard, identity: Identity, request: Any
                        ) -> tuple[Decision, Any]:
            if not route.client_streaming:
                return guard.authorize(identity, request), request
            # A request stream is authorised by its first message, which names the object.
            first, request = await _peek(request)
            return guard.authorize(identity, first), request

        if not route.server_streaming:
            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> bytes:
                guard = CallGuard(access, method, route.path, context)
                async with guard.recorded():
                    identity = guard.authenticate()
                    async with guard.limited(identity):
                        decision, request = await admit(guard, identity, request)
                        response = await forward(request, context, identity)
                        # A unary List response is never dropped whole, only its items.
                        response = filtered(decision, response) or b""
                return response

            return unary_response

        async def stream_response(request: Any, context: grpc.aio.ServicerContext
                                  ) -> AsyncIterator[bytes]:
            """When the client cancels while grpc.aio writes a response, the server drops
            this generator and releases the call; the garbage collector closes the
            generator later. So what runs on closing touches no part of the call, and
            closes the forwarder first: the backend's call is cancelled before the
            audit record is written and the caller's limit slot is freed."""
            guard = CallGuard(access, method, route.path, context)
            async with guard.recorded():
                identity = guard.authenticate()
                async with guard.limited(identity):
                    decision, request = await admit(guard, identity, request)
                    async with contextlib.aclosing(forward(request, context, identity)
                                                   ) as responses:
                        async for response in responses:
                            kept = filtered(decision, response)
                            if kept is not None:
                                yield kept

        return stream_response

    async def _activate(self, route: Route) -> None:
        assert self.activator is not None
        try:
            await self.activator.activate(route.driver)
        except ActivationError as error:
            raise unavailable(route, f"{route.driver} service is not running and could not "
                              f"be started: {error}", "ACTIVATION_FAILED") from None

    def _forwarder(self, route: Route) -> Callable[..., Any]:
        backends = self.backends
        activation = self.activator is not None

        def multicallable() -> Any:
            channel = backends.channel(route.driver)
            factory = {
                (False, False): channel.unary_unary, (False, True): channel.unary_stream,
                (True, False): channel.stream_unary, (True, True): channel.stream_stream,
            }[(route.client_streaming, route.server_streaming)]
            return factory(route.path, request_serializer=_identity,
                           response_deserializer=_identity)

        async def open_call(request: Any, context: grpc.aio.ServicerContext,
                            identity: Identity) -> Any:
            """The backend call; when it finds the backend not running, the backend is
            started (activation) and, for a single request message, the call made again."""
            call = multicallable()(request, **_call_options(context, identity))
            if not activation or route.client_streaming:
                return call
            await call.initial_metadata()  # returns at the headers or at the call's end
            if call.done() and unreachable(await call.code(), await call.trailing_metadata()):
                await self._activate(route)
                call = multicallable()(request, **_call_options(context, identity))
            return call

        async def fail(error: grpc.aio.AioRpcError) -> NoReturn:
            if activation and route.client_streaming and unreachable(
                    error.code(), error.trailing_metadata()):
                await self._activate(route)
                raise unavailable(route, f"{route.driver} service was not running and has "
                                  "been started; retry the call", "SERVICE_STARTED")
            raise relayed(route, backends, error)

        if not route.server_streaming:
            async def unary_response(request: Any, context: grpc.aio.ServicerContext,
                                     identity: Identity) -> bytes:
                call = await open_call(request, context, identity)
                try:
                    with metrics.UpstreamCall(route.driver, context.peer()):
                        response = await call
                except grpc.aio.AioRpcError as error:
                    await context.send_initial_metadata(stamped(error.initial_metadata()))
                    await fail(error)
                await context.send_initial_metadata(stamped(await call.initial_metadata()))
                context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
                return response

            return unary_response

        async def stream_response(request: Any, context: grpc.aio.ServicerContext,
                                  identity: Identity) -> AsyncIterator[bytes]:
            call = await open_call(request, context, identity)
            try:
                with metrics.UpstreamCall(route.driver, context.peer()):
                    await context.send_initial_metadata(stamped(await call.initial_metadata()))
                    async for response in call:
                        yield response
                    context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
            except grpc.aio.AioRpcError as error:
                await fail(error)
            finally:
                call.cancel()

        return stream_response


def _unknown_method(method: str) -> grpc.RpcMethodHandler:
    service = method.rsplit("/", 1)[0].lstrip("/")

    # Streaming on both sides, so the answer never waits for a request message: a
    # client-streaming or bidi caller that has not sent one yet gets it at once too.
    async def unimplemented(_requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"unknown service or method {method!r} (service {service!r} "
                            "is not behind this gateway)")

    return grpc.stream_stream_rpc_method_handler(unimplemented, request_deserializer=None,
                                                 response_serializer=None)
