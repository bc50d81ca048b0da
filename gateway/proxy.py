"""Forward gRPC calls to the driver services, once the caller may make them.

Every call is admitted first (gateway/admission.py: authentication, limit,
authorisation of the decoded request, audit); a call refused there never reaches
a backend.

The backend gets the request's bytes as the client sent them, with the caller's
identity in metadata (keys in services/common/shared.py; whatever the client sent
under those keys is dropped, so no one can speak for someone else). Responses are
relayed as bytes, except the List responses and Watch events that the caller may
only see in part: those are decoded, filtered and encoded again. The gateway relays
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

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc

from gateway.activation import ActivationError, Activator
from gateway.admission import Access, CallGuard, EndCall, decoded, refused
from gateway.authz import Decision
from gateway.backends import Backends, Metadata, identity_metadata, stamped
from gateway.identity import Identity
from gateway.observe import CallLog
from gateway.routes import Route
from services.common import logs, metrics
from services.common.shared import GROUPS_KEY, IDENTITY_KEY, STATUS_DETAILS_KEY

log = logging.getLogger(__name__)

#: Metadata the gateway does not relay: set by gRPC itself on each hop.
_HOP_KEYS = frozenset({"user-agent", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout",
                       "te", "content-type", "authorization"})
#: Metadata only the gateway sets: dropped from what the client sent.
_IDENTITY_KEYS = frozenset({IDENTITY_KEY, GROUPS_KEY, f"{IDENTITY_KEY}-bin",
                            f"{GROUPS_KEY}-bin"})


def forwarded_metadata(metadata: Metadata, identity: Identity) -> Metadata:
    """The client's metadata for the backend: without hop-by-hop and identity keys,
    with the caller's identity and the call's request id."""
    kept = tuple((key, value) for key, value in metadata
                 if key not in _HOP_KEYS and key not in _IDENTITY_KEYS
                 and not key.startswith(":"))
    return stamped((*kept, *identity_metadata(identity)))


def unreachable(code: grpc.StatusCode, trailers: Any) -> bool:
    """The call never reached its backend, so making it again is safe: UNAVAILABLE
    without the status details that every virtmesh service sends with its errors."""
    return code == grpc.StatusCode.UNAVAILABLE and not any(
        key == STATUS_DETAILS_KEY for key, _ in trailers or ())


def unavailable(route: Route, message: str, reason: str = "SERVICE_UNAVAILABLE") -> EndCall:
    """The gateway's own UNAVAILABLE naming the service."""
    metrics.UPSTREAM_UNAVAILABLE.labels(route.driver).inc()
    log.warning("%s: %s", route.path, message)
    return refused(grpc.StatusCode.UNAVAILABLE, message, reason, service=route.driver)


def relayed(route: Route, backends: Backends, error: grpc.aio.AioRpcError) -> EndCall:
    """The backend's status for the client, or UNAVAILABLE if it was unreachable."""
    trailers = tuple(error.trailing_metadata() or ())
    if unreachable(error.code(), trailers):
        return unavailable(route, f"{route.driver} service is unavailable at "
                           f"{backends.target(route.driver)}: {error.details()}")
    return EndCall(error.code(), error.details() or "", trailers)


async def _backend_headers(context: grpc.aio.ServicerContext, headers: Any) -> None:
    """Forwards the response headers a backend sent, if any. A unary call's request id
    goes with its trailers, so the usual call, whose backend sends no headers of its
    own, costs no separate send of headers (they go out with the response)."""
    kept = tuple((key, value) for key, value in headers or () if key != logs.REQUEST_ID_KEY)
    if kept:
        await context.send_initial_metadata(kept)


def _call_options(guard: CallGuard, identity: Identity) -> dict[str, Any]:
    return {"timeout": guard.context.time_remaining(),
            "metadata": forwarded_metadata(guard.metadata, identity)}


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


class ProxyHandler(grpc.GenericRpcHandler):
    """Serves every route by forwarding to the route's backend, once the caller may."""

    def __init__(self, routes: dict[str, Route], backends: Backends, access: Access,
                 activator: Activator | None = None) -> None:
        self.routes = routes
        self.backends = backends
        self.access = access
        self.activator = activator
        # Built once: gRPC asks for a handler on every call.
        self._handlers = {path: self._handler(route) for path, route in routes.items()}

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method  # type: ignore[attr-defined]
        return self._handlers.get(path) or _unknown_method(path, self.access.call_log)

    def _handler(self, route: Route) -> grpc.RpcMethodHandler:
        handler = getattr(grpc, f"{route.kind.name}_rpc_method_handler")
        return handler(self._guarded(route, self._forwarder(route)),  # type: ignore[no-any-return]
                       request_deserializer=None, response_serializer=None)

    def _guarded(self, route: Route, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` behind authentication, limits and authorisation, with audit, and
        with its responses filtered to what the caller may see."""
        access = self.access

        def filtered(decision: Decision, response: bytes) -> bytes | None:
            if not decision.listed:
                return response
            message = route.response_class.FromString(response)
            if not access.authorizer.filter_message(decision, message, route.server_streaming):
                return None
            return message.SerializeToString()

        async def admit(guard: CallGuard, identity: Identity, request: Any
                        ) -> tuple[Decision, Any]:
            if not route.client_streaming:
                return guard.authorize_bytes(identity, route.request_class, request), request
            # A request stream is authorised by its first message, which names the object.
            first, request = await _peek(request)
            return (guard.authorize(identity, decoded(route.request_class, first)),
                    guard.counted(request))

        # What the metrics need of the handler (its call shape), before it exists.
        shape = getattr(grpc, f"{route.kind.name}_rpc_method_handler")(forward)
        if not route.server_streaming:
            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> bytes:
                guard = CallGuard(access, route.method, route.path, context, shape)
                async with guard.recorded():
                    identity = guard.authenticate()
                    with guard.limited(identity):
                        decision, request = await admit(guard, identity, request)
                        response = await forward(request, guard, identity)
                        # A unary List response is never dropped whole, only its items.
                        response = guard.sent(filtered(decision, response) or b"")
                return response

            return unary_response

        async def stream_response(request: Any, context: grpc.aio.ServicerContext
                                  ) -> AsyncIterator[bytes]:
            """When the client cancels while grpc.aio writes a response, the server drops
            this generator and releases the call; the garbage collector closes the
            generator later. So what runs on closing touches no part of the call, and
            closes the forwarder first: the backend's call is cancelled before the
            audit record is written and the caller's limit slot is freed."""
            guard = CallGuard(access, route.method, route.path, context, shape)
            async with guard.recorded():
                identity = guard.authenticate()
                with guard.limited(identity):
                    decision, request = await admit(guard, identity, request)
                    async with contextlib.aclosing(forward(request, guard, identity)
                                                   ) as responses:
                        async for response in responses:
                            kept = filtered(decision, response)
                            if kept is not None:
                                yield guard.sent(kept)

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

        async def open_call(request: Any, guard: CallGuard, identity: Identity) -> Any:
            """The backend call; when it finds the backend not running, the backend is
            started (activation) and, for a single request message, the call made again."""
            call = route.call(request, **_call_options(guard, identity))
            if not activation or route.client_streaming:
                return call
            await call.initial_metadata()  # returns at the headers or at the call's end
            if call.done() and unreachable(await call.code(), await call.trailing_metadata()):
                await self._activate(route)
                call = route.call(request, **_call_options(guard, identity))
            return call

        async def fail(error: grpc.aio.AioRpcError) -> NoReturn:
            if activation and route.client_streaming and unreachable(
                    error.code(), error.trailing_metadata()):
                await self._activate(route)
                raise unavailable(route, f"{route.driver} service was not running and has "
                                  "been started; retry the call", "SERVICE_STARTED")
            raise relayed(route, backends, error)

        if not route.server_streaming:
            async def unary_response(request: Any, guard: CallGuard, identity: Identity
                                     ) -> bytes:
                context = guard.context
                call = await open_call(request, guard, identity)
                try:
                    with metrics.UpstreamCall(route.driver, guard.peer):
                        response = await call
                except grpc.aio.AioRpcError as error:
                    await _backend_headers(context, error.initial_metadata())
                    await fail(error)
                await _backend_headers(context, await call.initial_metadata())
                context.set_trailing_metadata(stamped(await call.trailing_metadata()))
                return response

            return unary_response

        async def stream_response(request: Any, guard: CallGuard, identity: Identity
                                  ) -> AsyncIterator[bytes]:
            context = guard.context
            call = await open_call(request, guard, identity)
            try:
                with metrics.UpstreamCall(route.driver, guard.peer):
                    await context.send_initial_metadata(stamped(await call.initial_metadata()))
                    async for response in call:
                        yield response
                    context.set_trailing_metadata(stamped(await call.trailing_metadata()))
            except grpc.aio.AioRpcError as error:
                await fail(error)
            finally:
                call.cancel()

        return stream_response


def _unknown_method(method: str, call_log: CallLog) -> grpc.RpcMethodHandler:
    service = method.rsplit("/", 1)[0].lstrip("/")
    message = (f"unknown service or method {method!r} (service {service!r} is not behind "
               "this gateway)")

    # Streaming on both sides, so the answer never waits for a request message: a
    # client-streaming or bidi caller that has not sent one yet gets it at once too.
    async def unimplemented(_requests: Any, context: grpc.aio.ServicerContext) -> None:
        logs.request_id.set(logs.request_id_from(context.invocation_metadata()))
        # counted as ``unknown``, so that callers cannot mint label values
        metrics.RpcMetrics(method, handler, known=False).handled(
            grpc.StatusCode.UNIMPLEMENTED)
        call_log.write(method, grpc.StatusCode.UNIMPLEMENTED, 0.0, message, True)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    handler: grpc.RpcMethodHandler = grpc.stream_stream_rpc_method_handler(
        unimplemented, request_deserializer=None, response_serializer=None)
    return handler
