"""Forward gRPC calls to the driver services as raw bytes.

The gateway never decodes a request or a response: it relays bytes, metadata,
deadline and cancellation, and hands the backend's status, message and details
(``grpc-status-details-bin``) back unchanged. Only a backend that cannot be
reached gets a status of the gateway's own: UNAVAILABLE naming the service.
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
                         ("grpc.enable_retries", 0)]
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


def _unreachable_status(driver: str, target: str, details: str | None) -> tuple[str, bytes]:
    message = f"{driver} service is unavailable at {target}: {details}"
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="SERVICE_UNAVAILABLE", domain="virtmesh.dev",
                                          metadata={"service": driver}))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[info])
    return message, status.SerializeToString()


async def relay_error(context: grpc.aio.ServicerContext, route: Route, backends: Backends,
                      error: grpc.aio.AioRpcError) -> NoReturn:
    """End the client's call with the backend's status, or UNAVAILABLE if unreachable."""
    trailers = tuple(error.trailing_metadata() or ())
    reached = any(key == STATUS_DETAILS_KEY for key, _ in trailers)
    if error.code() == grpc.StatusCode.UNAVAILABLE and not reached:
        metrics.UPSTREAM_UNAVAILABLE.labels(route.driver).inc()
        message, details = _unreachable_status(route.driver, backends.target(route.driver),
                                               error.details())
        log.warning("%s: %s", route.path, message)
        await context.abort(grpc.StatusCode.UNAVAILABLE, message,
                            ((STATUS_DETAILS_KEY, details),))
    await context.abort(error.code(), error.details() or "", trailers)
    raise AssertionError("abort returned")  # for type checkers: abort always raises


def _call_options(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    return {"timeout": context.time_remaining(), "metadata": forwarded_metadata(context)}


def _identity(data: bytes) -> bytes:
    return data


class ProxyHandler(grpc.GenericRpcHandler):
    """Serves every route by forwarding to the route's backend."""

    def __init__(self, routes: dict[str, Route], backends: Backends) -> None:
        self.routes = routes
        self.backends = backends

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

    def _forwarder(self, route: Route) -> Callable[..., Any]:
        backends = self.backends

        def multicallable() -> Any:
            channel = backends.channel(route.driver)
            factory = {
                (False, False): channel.unary_unary, (False, True): channel.unary_stream,
                (True, False): channel.stream_unary, (True, True): channel.stream_stream,
            }[(route.client_streaming, route.server_streaming)]
            return factory(route.path, request_serializer=_identity,
                           response_deserializer=_identity)

        if not route.server_streaming:
            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> bytes:
                call = multicallable()(request, **_call_options(context))
                try:
                    with metrics.UpstreamCall(route.driver, context.peer()):
                        response = await call
                except grpc.aio.AioRpcError as error:
                    await context.send_initial_metadata(stamped(error.initial_metadata()))
                    await relay_error(context, route, backends, error)
                await context.send_initial_metadata(stamped(await call.initial_metadata()))
                context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
                return response

            return unary_response

        async def stream_response(request: Any, context: grpc.aio.ServicerContext
                                  ) -> AsyncIterator[bytes]:
            call = multicallable()(request, **_call_options(context))
            try:
                with metrics.UpstreamCall(route.driver, context.peer()):
                    await context.send_initial_metadata(stamped(await call.initial_metadata()))
                    async for response in call:
                        yield response
                    context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
            except grpc.aio.AioRpcError as error:
                await relay_error(context, route, backends, error)
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
