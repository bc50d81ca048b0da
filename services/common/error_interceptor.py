"""The one place where exceptions become gRPC status: servicers raise
``libvirt.libvirtError`` or ``ServiceError`` and never catch them. Apart from the
other interceptors because it needs libvirt, which the gateway must not load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import libvirt

from services.common import deadline
from services.common.errors import DocumentRejected, ServiceError, to_status
from services.common.interceptors import Behavior, WrappingInterceptor
from services.common.requests import Malformed, checked

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, method: str, error: Exception) -> None:
    if context.code() not in (None, grpc.StatusCode.OK):  # type: ignore[attr-defined]
        # The handler chose its status with gRPC's own API (context.abort, or set_code
        # and raise): keep it instead of turning it into INTERNAL.
        raise error
    if isinstance(error, grpc.RpcError) and not context.is_active():
        # The client cancelled (or its deadline passed) while the handler read its
        # request stream: there is no one left to answer, and nothing went wrong here.
        log.debug("%s: the client went away", method)
        raise error
    if not isinstance(error, (libvirt.libvirtError, ServiceError, DocumentRejected)):
        log.exception("%s failed unexpectedly", method)
    context.abort_with_status(to_status(error))


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


class ErrorInterceptor(WrappingInterceptor):
    """Maps libvirt and service errors to gRPC status with ErrorInfo details, and
    refuses requests that cannot be decoded or hold a NUL (services/common/requests.py)
    with INVALID_ARGUMENT."""

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = super().intercept_service(continuation, handler_call_details)
        if handler is None:
            return None
        return handler._replace(  # type: ignore[attr-defined]
            request_deserializer=checked(handler.request_deserializer))

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        wrap = _wrap_stream if handler.response_streaming else _wrap_unary
        return wrap(method, behavior, handler.request_streaming)
