"""Server interceptors shared by every service.

``ErrorInterceptor`` is the one place where exceptions become gRPC status: servicers
raise ``libvirt.libvirtError`` or ``ServiceError`` and never catch them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import libvirt

from services.common.errors import ServiceError, to_status

log = logging.getLogger(__name__)

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _abort(context: grpc.ServicerContext, method: str, error: Exception) -> None:
    if context.code() not in (None, grpc.StatusCode.OK):  # type: ignore[attr-defined]
        # The handler chose its status with gRPC's own API (context.abort, or set_code
        # and raise): keep it instead of turning it into INTERNAL.
        raise error
    status = to_status(error)
    if isinstance(error, (libvirt.libvirtError, ServiceError)):
        log.info("%s -> %s: %s", method, status.code.name, status.details)
    else:
        log.exception("%s failed unexpectedly", method)
    context.abort_with_status(status)


def _wrap_unary(method: str, behavior: Behavior) -> Behavior:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as error:  # noqa: BLE001 - this is the one place errors are mapped
            _abort(context, method, error)
            raise  # unreachable: abort raises

    return handle


def _wrap_stream(method: str, behavior: Behavior) -> Behavior:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as error:  # noqa: BLE001
            _abort(context, method, error)

    return handle


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps libvirt and service errors to gRPC status with ErrorInfo details."""

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(method, handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap_unary(method, handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_stream(method, handler.unary_stream))
        return handler._replace(stream_stream=_wrap_stream(method, handler.stream_stream))
