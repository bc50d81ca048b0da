"""Forward gRPC calls to the driver services as raw bytes.

The gateway never decodes a request or a response: it relays bytes, metadata,
deadline and cancellation, and hands the backend's status, message and details
(``grpc-status-details-bin``) back unchanged. Only a backend that cannot be
reached gets a status of the gateway's own: UNAVAILABLE naming the service,
unless activation is configured: then the gateway starts the service and makes
the call again (gateway/activation.py). Only a call with a single request message
is made again; a client-streaming call gets UNAVAILABLE "retry" once the service
has been started, since the failed call consumed its request messages.
The call's request id goes to the backend, and back to the client in the response
headers (initial metadata), so that the backend's trailers stay unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway.activation import ActivationError, Activator
from gateway.routes import Route
from services.common import logs, metrics

log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Metadata the gateway does not relay: set by gRPC itself on each hop.
_HOP_KEYS = frozenset({"user-agent", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout",
                       "te", "content-type", "authorization"})


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

    def target(self, driver: str) -> str:
        return f"unix:{self.socket_dir / f'{driver}.sock'}"

    def channel(self, driver: str) -> grpc.aio.Channel:
        channel = self._channels.get(driver)
        if channel is None:
            channel = grpc.aio.insecure_channel(self.target(driver), options=self._options)
            self._channels[driver] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


Metadata = tuple[tuple[str, Any], ...]


def stamped(metadata: Any) -> Metadata:
    """``metadata`` with the request id of the call being served as its only one."""
    request_id = logs.request_id.get()
    kept = tuple((key, value) for key, value in metadata or () if key != logs.REQUEST_ID_KEY)
    return (*kept, (logs.REQUEST_ID_KEY, request_id)) if request_id else kept


def forwarded_metadata(context: grpc.aio.ServicerContext) -> Metadata:
    return stamped((key, value) for key, value in context.invocation_metadata() or ()
                   if key not in _HOP_KEYS and not key.startswith(":"))


def unreachable(code: grpc.StatusCode, trailers: Any) -> bool:
    """The call never reached its backend, so making it again is safe: UNAVAILABLE
    without the status details that every virtmesh service sends with its errors."""
    return code == grpc.StatusCode.UNAVAILABLE and not any(
        key == STATUS_DETAILS_KEY for key, _ in trailers or ())


async def abort_unavailable(context: grpc.aio.ServicerContext, route: Route, message: str,
                            reason: str = "SERVICE_UNAVAILABLE") -> NoReturn:
    """End the client's call with the gateway's own UNAVAILABLE naming the service."""
    metrics.UPSTREAM_UNAVAILABLE.labels(route.driver).inc()
    log.warning("%s: %s", route.path, message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="virtmesh.dev",
                                          metadata={"service": route.driver}))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[info])
    await context.abort(grpc.StatusCode.UNAVAILABLE, message,
                        ((STATUS_DETAILS_KEY, status.SerializeToString()),))
    raise AssertionError("abort returned")  # for type checkers: abort always raises


async def relay_error(context: grpc.aio.ServicerContext, route: Route, backends: Backends,
                      error: grpc.aio.AioRpcError) -> NoReturn:
    """End the client's call with the backend's status, or UNAVAILABLE if unreachable."""
    trailers = tuple(error.trailing_metadata() or ())
    if unreachable(error.code(), trailers):
        await abort_unavailable(context, route, f"{route.driver} service is unavailable at "
                                f"{backends.target(route.driver)}: {error.details()}")
    await context.abort(error.code(), error.details() or "", trailers)
    raise AssertionError("abort returned")  # for type checkers: abort always raises


def _call_options(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    return {"timeout": context.time_remaining(), "metadata": forwarded_metadata(context)}


def _identity(data: bytes) -> bytes:
    return data


class ProxyHandler(grpc.GenericRpcHandler):
    """Serves every route by forwarding to the route's backend."""

    def __init__(self, routes: dict[str, Route], backends: Backends,
                 activator: Activator | None = None) -> None:
        self.routes = routes
        self.backends = backends
        self.activator = activator

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        route = self.routes.get(handler_call_details.method)  # type: ignore[attr-defined]
        if route is None:
            return _unknown_method(handler_call_details.method)  # type: ignore[attr-defined]
        kinds: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        behavior = self._forwarder(route)
        return kinds[(route.client_streaming, route.server_streaming)](
            behavior, request_deserializer=None, response_serializer=None)

    async def _activate(self, context: grpc.aio.ServicerContext, route: Route) -> None:
        assert self.activator is not None
        try:
            await self.activator.activate(route.driver)
        except ActivationError as error:
            await abort_unavailable(context, route, f"{route.driver} service is not running "
                                    f"and could not be started: {error}", "ACTIVATION_FAILED")

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

        async def open_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            """The backend call; when it finds the backend not running, the backend is
            started (activation) and, for a single request message, the call made again."""
            call = multicallable()(request, **_call_options(context))
            if not activation or route.client_streaming:
                return call
            await call.initial_metadata()  # returns at the headers or at the call's end
            if call.done() and unreachable(await call.code(), await call.trailing_metadata()):
                await self._activate(context, route)
                call = multicallable()(request, **_call_options(context))
            return call

        async def fail(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError
                       ) -> NoReturn:
            if activation and route.client_streaming and unreachable(
                    error.code(), error.trailing_metadata()):
                await self._activate(context, route)
                await abort_unavailable(context, route, f"{route.driver} service was not "
                                        "running and has been started; retry the call",
                                        "SERVICE_STARTED")
            await relay_error(context, route, backends, error)

        if not route.server_streaming:
            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> bytes:
                call = await open_call(request, context)
                try:
                    with metrics.UpstreamCall(route.driver, context.peer()):
                        response = await call
                except grpc.aio.AioRpcError as error:
                    await context.send_initial_metadata(stamped(error.initial_metadata()))
                    await fail(context, error)
                await context.send_initial_metadata(stamped(await call.initial_metadata()))
                context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
                return response

            return unary_response

        async def stream_response(request: Any, context: grpc.aio.ServicerContext
                                  ) -> AsyncIterator[bytes]:
            call = await open_call(request, context)
            try:
                with metrics.UpstreamCall(route.driver, context.peer()):
                    await context.send_initial_metadata(stamped(await call.initial_metadata()))
                    async for response in call:
                        yield response
                    context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
            except grpc.aio.AioRpcError as error:
                await fail(context, error)
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
