"""The one place where exceptions become gRPC status: servicers raise
``libvirt.libvirtError`` or ``ServiceError`` and never catch them. Apart from the
other interceptors because it needs libvirt, which the gateway must not load.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import libvirt

from services.common import deadline
from services.common.errors import DocumentRejected, ServiceError, to_status
from services.common.interceptors import AioBehavior, Behavior, CallWrapper
from services.common.requests import Malformed, checked

log = logging.getLogger(__name__)


def _chosen(context: grpc.ServicerContext | grpc.aio.ServicerContext, error: Exception) -> bool:
    """The handler chose its status with gRPC's own API (context.abort, or set_code
    and raise): keep it instead of turning it into INTERNAL."""
    return (isinstance(error, grpc.aio.AbortError)
            or context.code() not in (None, grpc.StatusCode.OK))  # type: ignore[union-attr]


def _status(method: str, error: Exception) -> Any:
    if not isinstance(error, (libvirt.libvirtError, ServiceError, DocumentRejected)):
        log.exception("%s failed unexpectedly", method)
    return to_status(error)


def _abort(context: grpc.ServicerContext, method: str, error: Exception) -> None:
    if _chosen(context, error):
        raise error
    if isinstance(error, grpc.RpcError) and not context.is_active():
        # The client cancelled (or its deadline passed) while the handler read its
        # request stream: there is no one left to answer, and nothing went wrong here.
        log.debug("%s: the client went away", method)
        raise error
    context.abort_with_status(_status(method, error))


async def _abort_async(context: grpc.aio.ServicerContext, method: str,
                       error: Exception) -> None:
    if _chosen(context, error):
        raise error
    status = _status(method, error)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _refuse_malformed(request: Any) -> None:
    if isinstance(request, Malformed):
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, request.message,
                           "MALFORMED_REQUEST")


def _admitted(request: Any, streaming: bool, context: grpc.ServicerContext) -> Any:
    """The request once it passed the checks (a stream: checked item by item), with the
    call's deadline noted for the code that must not outlive it."""
    deadline.set_remaining(context.time_remaining())
    if not streaming:
        _refuse_malformed(request)
        return request

    def items() -> Iterator[Any]:
        for item in request:
            _refuse_malformed(item)
            yield item

    return items()


def _wrap_unary(method: str, behavior: Behavior, streaming: bool) -> Behavior:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(_admitted(request, streaming, context), context)
        except Exception as error:  # noqa: BLE001 - this is the one place errors are mapped
            _abort(context, method, error)
            raise  # unreachable: abort raises

    return handle


def _wrap_stream(method: str, behavior: Behavior, streaming: bool) -> Behavior:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(_admitted(request, streaming, context), context)
        except Exception as error:  # noqa: BLE001
            _abort(context, method, error)

    return handle


def _admitted_async(request: Any, streaming: bool, context: grpc.aio.ServicerContext) -> Any:
    deadline.set_remaining(context.time_remaining())
    if not streaming:
        _refuse_malformed(request)
        return request

    async def items() -> AsyncIterator[Any]:
        async for item in request:
            _refuse_malformed(item)
            yield item

    return items()


def _wrap_unary_async(method: str, behavior: AioBehavior, streaming: bool) -> AioBehavior:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(_admitted_async(request, streaming, context), context)
        except Exception as error:  # noqa: BLE001 - this is the one place errors are mapped
            await _abort_async(context, method, error)

    return handle


def _wrap_stream_async(method: str, behavior: AioBehavior, streaming: bool) -> AioBehavior:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(_admitted_async(request, streaming, context),
                                           context):
                yield response
        except Exception as error:  # noqa: BLE001
            await _abort_async(context, method, error)

    return handle


class ErrorInterceptor(CallWrapper):
    """Maps libvirt and service errors to gRPC status with ErrorInfo details, and
    refuses requests that cannot be decoded or hold a NUL (services/common/requests.py)
    with INVALID_ARGUMENT."""

    def adapt(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return handler._replace(  # type: ignore[attr-defined,no-any-return]
            request_deserializer=checked(handler.request_deserializer))

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        wrap = _wrap_stream if handler.response_streaming else _wrap_unary
        return wrap(method, behavior, handler.request_streaming)

    def wrap_async(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        wrap = _wrap_stream_async if handler.response_streaming else _wrap_unary_async
        return wrap(method, behavior, handler.request_streaming)
