"""Server interceptors shared by every process; libvirt-free, since the gateway uses them
(the services' ``ErrorInterceptor`` is in services/common/error_interceptor.py).

The services serve from grpc.aio with most methods blocking on a thread
(services/common/sync_bridge.py): their ``Pipeline`` wraps each method with the
``CallWrapper``s below, the blocking form for a blocking method (on its thread) and
the async form for a coroutine (on the loop), then bridges the blocking ones.

``ObserveInterceptor`` (services) and ``AioObserveInterceptor`` (the gateway) record
each call once, through one ``_Observed``: RPC metrics, the request id for the call's
log lines, and one INFO line with method, status and duration (DEBUG for health
probes). On a service's main socket the line also names the caller the gateway
vouched for (``x-virtmesh-identity``), so a service's log says who did what. They must
be outermost, so that they see the status the call really ends with.
``ReadOnlyInterceptor`` guards a service's read-only socket.
``ActivityInterceptor`` tells the daemon how long a service has been idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Container, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from services.common import acl, logs, metrics
from services.common.requests import Malformed, checked
from services.common.shared import GROUPS_KEY, IDENTITY_KEY, ServiceError, call_kind, error_status
from services.common.sync_bridge import Bridge, CallsInFlight

#: one line per call: method, status, duration (and the request id, from logs)
rpc_log = logging.getLogger("virtmesh.rpc")
_HEALTH = "/grpc.health.v1.Health/"
_REFLECTION = "/grpc.reflection."

Behavior = Callable[[Any, grpc.ServicerContext], Any]
AioBehavior = Callable[[Any, grpc.aio.ServicerContext], Any]


class CallWrapper:
    """Wraps the behaviour of every handler of a service, blocking (``wrap``) or a
    coroutine or async generator (``wrap_async``); subclasses say how."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        raise NotImplementedError

    def wrap_async(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        raise NotImplementedError

    def adapt(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler's other parts, e.g. its request deserializer."""
        return handler


def is_async(behavior: Any) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


class Pipeline(grpc.aio.ServerInterceptor):
    """A service's wrappers, outermost first, around every method of an asyncio server;
    blocking methods then run on the bridge's threads, admitted by ``unary_calls`` and
    ``stream_calls`` (services/common/sync_bridge.py)."""

    def __init__(self, wrappers: list[CallWrapper], bridge: Bridge, unary_calls: CallsInFlight,
                 stream_calls: CallsInFlight) -> None:
        self.wrappers = wrappers
        self.bridge = bridge
        self.unary_calls = unary_calls
        self.stream_calls = stream_calls
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        # wrapped once per method: gRPC asks for the handler on every call
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped[method] = (handler, self._wrap(method, handler))
        return wrapped[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = call_kind(handler.request_streaming, handler.response_streaming).name
        behavior = getattr(handler, kind)
        if is_async(behavior):
            for wrapper in reversed(self.wrappers):
                behavior = wrapper.wrap_async(method, handler, behavior)
        else:
            for wrapper in reversed(self.wrappers):
                behavior = wrapper.wrap(method, handler, behavior)
            if handler.response_streaming:
                behavior = self.bridge.stream(method, behavior, handler.request_streaming,
                                              self.stream_calls)
            else:
                behavior = self.bridge.unary(method, behavior, handler.request_streaming,
                                             self.unary_calls)
        handler = handler._replace(**{kind: behavior})  # type: ignore[attr-defined]
        for wrapper in self.wrappers:
            handler = wrapper.adapt(handler)
        return handler


class _Observed:
    """One call as the observing interceptors record it, from its start to its status."""

    def __init__(self, method: str, handler: grpc.RpcMethodHandler, metadata: Any,
                 known: bool, trust_identity: bool = False, quiet: bool = False) -> None:
        self.method = method
        #: a successful call is logged at DEBUG (a read: metrics count it anyway)
        self.quiet = quiet or method.startswith(_HEALTH)
        self.metrics = metrics.RpcMetrics(method, handler, known)
        self.identity = identity_from(metadata) if trust_identity else ""
        logs.request_id.set(logs.request_id_from(metadata))

    def end(self, code: Any, cancelled: bool, error: BaseException | None,
            details: str | bytes | None) -> None:
        if code is None:  # no status set through gRPC's API: what gRPC itself will send
            code = (grpc.StatusCode.CANCELLED if cancelled or isinstance(error, GeneratorExit)
                    else grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK)
        milliseconds = self.metrics.handled(code) * 1000
        if isinstance(details, bytes):
            details = details.decode(errors="replace")
        suffix = f": {details}" if details and code != grpc.StatusCode.OK else ""
        by = f" by {self.identity}" if self.identity else ""
        # health probes come every few seconds from supervisors and orchestrators, and
        # reads may come by thousands a second: one INFO line each would cost more
        # than the call; changes and failures are always said
        level = logging.DEBUG if self.quiet and code == grpc.StatusCode.OK else logging.INFO
        if not rpc_log.isEnabledFor(level):
            logs.request_id.set("")
            return
        rpc_log.log(level, "%s %s %.1f ms%s%s", self.method, code.name, milliseconds, by,
                    suffix, extra={"method": self.method, "code": code.name,
                                   "duration_ms": round(milliseconds, 3),
                                   "identity": self.identity})
        logs.request_id.set("")


def _observe(method: str, handler: grpc.RpcMethodHandler, behavior: Behavior,
             trust_identity: bool, quiet: bool = False) -> Behavior:
    def begin(request: Any, context: grpc.ServicerContext) -> tuple[_Observed, Any]:
        call = _Observed(method, handler, context.invocation_metadata(), True, trust_identity,
                         quiet)
        if not handler.request_streaming:
            call.metrics.received()
            return call, request

        def counted() -> Iterator[Any]:
            for item in request:
                call.metrics.received()
                yield item

        return call, counted()

    def end(call: _Observed, context: grpc.ServicerContext, error: BaseException | None) -> None:
        call.end(context.code(), not context.is_active(), error,  # type: ignore[attr-defined]
                 context.details())  # type: ignore[attr-defined]

    if handler.response_streaming:
        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call, request = begin(request, context)
            try:
                for response in behavior(request, context):
                    call.metrics.sent()
                    yield response
            except BaseException as error:
                end(call, context, error)
                raise
            end(call, context, None)

        return stream

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        call, request = begin(request, context)
        try:
            response = behavior(request, context)
        except BaseException as error:
            end(call, context, error)
            raise
        if context.code() in (None, grpc.StatusCode.OK):  # type: ignore[attr-defined]
            call.metrics.sent()
        end(call, context, None)
        return response

    return unary


def _observe_aio(method: str, handler: grpc.RpcMethodHandler, behavior: AioBehavior,
                 known: bool, trust_identity: bool = False) -> AioBehavior:
    def begin(request: Any, context: grpc.aio.ServicerContext) -> tuple[_Observed, Any]:
        call = _Observed(method, handler, context.invocation_metadata(), known,
                         trust_identity)
        if not handler.request_streaming:
            call.metrics.received()
            return call, request

        async def counted() -> AsyncIterator[Any]:
            async for item in request:
                call.metrics.received()
                yield item

        return call, counted()

    def end(call: _Observed, context: grpc.aio.ServicerContext,
            error: BaseException | None) -> None:
        call.end(context.code(), isinstance(error, asyncio.CancelledError) or context.cancelled(),
                 error, context.details())

    if handler.response_streaming:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call, request = begin(request, context)
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):  # a handler that writes with context.write
                    await result
                else:  # closed with this one, not later by the garbage collector
                    async with contextlib.aclosing(result) as responses:
                        async for response in responses:
                            call.metrics.sent()
                            yield response
            except BaseException as error:
                end(call, context, error)
                raise
            end(call, context, None)

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call, request = begin(request, context)
        try:
            response = await behavior(request, context)
        except BaseException as error:
            end(call, context, error)
            raise
        if context.code() in (None, grpc.StatusCode.OK):
            call.metrics.sent()
        end(call, context, None)
        return response

    return unary


def with_behavior(handler: grpc.RpcMethodHandler,
                   wrap: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
    kind = call_kind(handler.request_streaming, handler.response_streaming).name
    return handler._replace(**{kind: wrap(getattr(handler, kind))})  # type: ignore[attr-defined]


class ObserveInterceptor(CallWrapper):
    """Metrics, request id and one log line for every call of a service.

    ``trust_identity``: the callers are trusted to name the identity they act for (a
    service's main socket, which only the gateway and local administrators reach).
    ``quiet``: the methods whose successful calls are logged at DEBUG only (reads)."""

    def __init__(self, trust_identity: bool = False, quiet: Container[str] = ()) -> None:
        self.trust_identity = trust_identity
        self.quiet = quiet

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        return _observe(method, handler, behavior, self.trust_identity, method in self.quiet)

    def wrap_async(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        return _observe_aio(method, handler, behavior, True, self.trust_identity)


class AioObserveInterceptor(grpc.aio.ServerInterceptor):
    """The same for a grpc.aio server. ``methods``: the paths it serves, when a generic
    handler answers any path (as the gateway's proxy does); others count as unknown."""

    def __init__(self, methods: Container[str] | None = None) -> None:
        self.methods = methods

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self.methods is None or method in self.methods
        return with_behavior(handler,
                              lambda behavior: _observe_aio(method, handler, behavior, known))


class AioCheckInterceptor(grpc.aio.ServerInterceptor):
    """The ErrorInterceptor's request checks for a grpc.aio server (the gateway's own
    API): a request that cannot be decoded or holds a NUL gets INVALID_ARGUMENT instead
    of grpc.aio's UNKNOWN. Handlers that take raw bytes are left as they are."""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        streaming = handler.request_streaming

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            status = error_status(grpc.StatusCode.INVALID_ARGUMENT, request.message,
                                  "MALFORMED_REQUEST")
            await context.abort(status.code, status.details, status.trailing_metadata)

        def wrap(behavior: AioBehavior) -> AioBehavior:
            if streaming:
                async def items(requests: AsyncIterator[Any],
                                context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    async for item in requests:
                        if isinstance(item, Malformed):
                            await refuse(item, context)
                        yield item

                return lambda requests, context: behavior(items(requests, context), context)
            if handler.response_streaming:
                async def stream(request: Any, context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[Any]:
                    if isinstance(request, Malformed):
                        await refuse(request, context)
                    async with contextlib.aclosing(behavior(request, context)) as responses:
                        async for response in responses:
                            yield response

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, Malformed):
                    await refuse(request, context)
                return await behavior(request, context)

            return unary

        return with_behavior(handler, wrap)._replace(  # type: ignore[attr-defined]
            request_deserializer=checked(handler.request_deserializer))


def read_methods(service: ServiceDescriptor) -> frozenset[str]:
    """The paths of ``service``'s methods that only read (every permission they can
    need is read-only): their successful calls are logged at DEBUG."""
    return frozenset(f"/{service.full_name}/{method.name}" for method in service.methods
                     if acl.declared(method) and acl.is_read_only(method))


def identity_from(metadata: Any) -> str:
    """The identity the gateway set on the call (printable ASCII, as all gRPC metadata)."""
    for key, value in metadata or ():
        if key == IDENTITY_KEY and isinstance(value, str):
            return value[:256]
    return ""


class ReadOnlyInterceptor(CallWrapper):
    """The read-only socket's guard, like libvirt's -sock-ro: a call of ``services`` runs
    only when every permission it needs with this request is read-only (getattr, read,
    search_*); an RPC that declares no permissions is refused too (fail closed). Health
    and reflection are read-only by nature. Identity metadata is refused: any local user
    reaches this socket, so nobody may claim to act for a gateway caller here.

    Place it inside the ErrorInterceptor, which turns its refusals into PERMISSION_DENIED.
    """

    def __init__(self, *services: ServiceDescriptor) -> None:
        self.methods: dict[str, MethodDescriptor] = {
            f"/{service.full_name}/{method.name}": method for service in services
            for method in service.methods}

    @staticmethod
    def _refuse_identity(context: grpc.ServicerContext) -> None:
        if any(key in (IDENTITY_KEY, GROUPS_KEY) for key, _ in context.invocation_metadata()):
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED,
                               f"{IDENTITY_KEY} and {GROUPS_KEY} are accepted only on the "
                               "service's main socket, not on its read-only socket",
                               "IDENTITY_NOT_ACCEPTED")

    def _check(self, method: str, request: Any) -> None:
        descriptor = self.methods.get(method)
        if descriptor is None:
            if method.startswith((_HEALTH, _REFLECTION)):
                return
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED,
                               f"{method} is not allowed on the read-only socket",
                               "READ_ONLY_SOCKET")
        if not acl.declared(descriptor):
            why = "it declares no permissions"
        elif not acl.is_read_only(descriptor, request):
            why = "it needs " + ", ".join(
                str(p) for p in acl.required(descriptor, request) if not p.read_only)
        else:
            return
        raise ServiceError(grpc.StatusCode.PERMISSION_DENIED,
                           f"{descriptor.name} is not allowed on the read-only socket: {why}",
                           "READ_ONLY_SOCKET")

    def _admit(self, method: str, handler: grpc.RpcMethodHandler, request: Any,
               context: grpc.ServicerContext | grpc.aio.ServicerContext) -> None:
        self._refuse_identity(context)  # type: ignore[arg-type]
        # A stream of requests is judged before its first message, by the most it can need.
        self._check(method, None if handler.request_streaming else request)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        admit = functools.partial(self._admit, method, handler)
        if handler.response_streaming:
            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                admit(request, context)
                yield from behavior(request, context)

            return stream

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            admit(request, context)
            return behavior(request, context)

        return unary

    def wrap_async(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        admit = functools.partial(self._admit, method, handler)
        if handler.response_streaming:
            async def stream(request: Any, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[Any]:
                admit(request, context)
                async for response in behavior(request, context):
                    yield response

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            admit(request, context)
            return await behavior(request, context)

        return unary


class ActivityInterceptor(CallWrapper):
    """Calls in flight and when the last one ended, for the idle timeout.

    Health probes are not activity: supervisors and orchestrators probe every few
    seconds, and would otherwise keep an idle service alive forever."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the last call ended; 0 while one is in flight."""
        with self._lock:
            return 0.0 if self._in_flight else time.monotonic() - self._last

    def touch(self) -> None:
        """Count as active now (e.g. the service was busy)."""
        with self._lock:
            self._last = time.monotonic()

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._last = time.monotonic()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        if method.startswith(_HEALTH):
            return behavior
        if handler.response_streaming:
            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._begin()
                try:
                    yield from behavior(request, context)
                finally:
                    self._end()

            return stream

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            self._begin()
            try:
                return behavior(request, context)
            finally:
                self._end()

        return unary

    def wrap_async(self, method: str, handler: grpc.RpcMethodHandler, behavior: Any) -> Any:
        if method.startswith(_HEALTH):
            return behavior
        if handler.response_streaming:
            async def stream(request: Any, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[Any]:
                self._begin()
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    self._end()

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._begin()
            try:
                return await behavior(request, context)
            finally:
                self._end()

        return unary
