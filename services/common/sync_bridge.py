"""Blocking servicer methods on an asyncio gRPC server.

The services serve from grpc.aio (one event loop: an event watch is a coroutine,
not a thread) while most of their methods call libvirt, which blocks. Those run on a
bounded thread pool, behind a ``grpc.ServicerContext`` of their own whose
``is_active`` and ``add_callback`` see a cancel or a passed deadline at once — grpc's
own compatibility mode runs callbacks only after the method returns, too late to
abort a libvirt job or to shut a console session.

A caller that cancels or whose deadline passes is answered at once; the thread goes
on until libvirt returns (a plain libvirt call cannot be interrupted). Those calls
are counted as abandoned, and they keep their place among the calls in flight, so a
hung guest cannot pile up more blocked work than the limit allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from services.common.metrics import ABANDONED_CALLS, ABANDONED_CALLS_RUNNING
from services.common.shared import error_status

log = logging.getLogger(__name__)

_DONE = object()


class Aborted(Exception):
    """``context.abort`` in a thread: the bridge sends the status from the loop."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, tuple(trailing or ())


class _Refusal:
    """An abort as the thread's result: an exception crossing to the loop would keep
    the call's frames, and with them its request (up to max_message_bytes), alive in
    reference cycles until the next full garbage collection."""

    def __init__(self, aborted: Aborted) -> None:
        self.code, self.details, self.trailing = aborted.code, aborted.details, aborted.trailing

    async def send(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(self.code, self.details, self.trailing)


def _refusals(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except Aborted as aborted:
        return _Refusal(aborted)


class SyncContext:
    """A grpc.ServicerContext for a method running on a thread beside the loop."""

    def __init__(self, context: grpc.aio.ServicerContext, loop: asyncio.AbstractEventLoop
                 ) -> None:
        self._context = context
        self._loop = loop
        self._ended = False  # set on the loop, read on a thread: a plain flag will do
        context.add_done_callback(self._end)  # type: ignore[arg-type]

    def is_active(self) -> bool:
        return not self._ended

    def _end(self, _context: object) -> None:
        self._ended = True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Runs ``callback`` when the call ends, a cancel or deadline included."""
        self._context.add_done_callback(lambda _context: callback())  # type: ignore[arg-type]
        return True

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self._context.set_code(code)
        self._context.set_details(details)
        raise Aborted(code, details, self._context.trailing_metadata())

    def abort_with_status(self, status: Any) -> None:
        self._context.set_code(status.code)
        self._context.set_details(status.details)
        raise Aborted(status.code, status.details, status.trailing_metadata)

    def send_initial_metadata(self, metadata: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._context.send_initial_metadata(metadata),
                                         self._loop).result()

    def __getattr__(self, name: str) -> Any:
        # the rest (metadata, peer, code, details, time_remaining, ...) is thread-safe
        return getattr(self._context, name)


class CallsInFlight:
    """Admission of blocking calls: at most ``limit`` running or queued, abandoned
    ones included (they still hold a thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    async def refuse(self, context: grpc.aio.ServicerContext) -> None:
        status = error_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"too many calls in flight (limit {self.limit}); retry with "
                              "backoff", "TOO_MANY_CALLS")
        await context.abort(status.code, status.details, status.trailing_metadata)

    def leave(self, _future: object = None) -> None:
        self.count -= 1


class Workers:
    """Threads that run blocking calls for the loop, at most ``size``, started as the
    load needs them. Cheaper per call than run_in_executor on a ThreadPoolExecutor
    (no concurrent Future, no Condition, no chained futures): one queue put, one
    wake-up of the loop with the result."""

    def __init__(self, size: int, name: str = "rpc") -> None:
        self.size = size
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0

    def run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``function(*args)`` on a thread; its result (or exception) in the future."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._claim()
        self._queue.put((loop, future, function, args))
        return future

    def _claim(self) -> None:
        """An idle thread for the next call, or a new one while below ``size`` (beyond
        it, calls wait in the queue)."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                return
            if len(self._threads) >= self.size:
                return
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"{self._name}-{len(self._threads)}")
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, future, function, args = item
            try:
                outcome: tuple[Callable[..., None], Any] = (_set_result, function(*args))
            except BaseException as error:  # noqa: BLE001 - handed to the awaiting coroutine
                outcome = (_set_exception, error)
            del item, args
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(outcome[0], future, outcome[1])
            del future, outcome
            with self._lock:
                self._idle += 1

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` on a thread, for its effect only (any thread)."""
        self._claim()
        self._queue.put((_NoLoop, None, function, args))

    def shutdown(self) -> None:
        """Let the threads end once they are done (those still in libvirt finish first)."""
        for _ in self._threads:
            self._queue.put(None)


class _NoLoop:
    """A fire-and-forget call's loop: nothing to hand the outcome to."""

    @staticmethod
    def call_soon_threadsafe(*_args: Any) -> None:
        return None


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class Bridge:
    """Turns a blocking behaviour (already wrapped by the sync interceptors) into a
    coroutine or async generator run by ``workers``; all on one event loop."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def _submit(self, in_flight: CallsInFlight | None, function: Callable[..., Any],
                *args: Any) -> asyncio.Future[Any]:
        """``function(*args)`` on a thread; ``in_flight`` is left when it returns."""
        future = self.workers.run(_refusals, function, *args)
        if in_flight is not None:
            future.add_done_callback(in_flight.leave)
        return future

    async def _await(self, method: str, future: asyncio.Future[Any]) -> Any:
        """The thread's result; on a cancel, the caller is answered and the thread is
        left to finish (counted)."""
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                ABANDONED_CALLS.labels(method).inc()
                ABANDONED_CALLS_RUNNING.inc()
                future.add_done_callback(lambda _future: ABANDONED_CALLS_RUNNING.dec())
                future.add_done_callback(_discard_result)
                log.info("%s: the caller went away while its thread waits for libvirt, "
                         "which cannot be interrupted; it runs on", method)
            raise

    def unary(self, method: str, behavior: Callable[..., Any], request_streaming: bool,
              in_flight: CallsInFlight) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            loop = asyncio.get_running_loop()
            sync_context = SyncContext(context, loop)
            if not in_flight.enter():
                await in_flight.refuse(context)
            if request_streaming:
                request = _blocking_iterator(request, loop)
            submitted = self._submit(in_flight, behavior, request, sync_context)
            del request  # the thread has it; an abort's traceback must not keep it
            result = await self._await(method, submitted)
            if isinstance(result, _Refusal):
                await result.send(context)
            return result

        return handle

    def stream(self, method: str, behavior: Callable[..., Any], request_streaming: bool,
               in_flight: CallsInFlight) -> Callable[..., Any]:
        """A stream holds its place among ``in_flight`` (and a thread while it produces
        a response) until it ends; a cancelled one is closed on its thread once that
        is free (the method's ``add_callback`` hears of the cancel at once)."""
        async def handle(request: Any, context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[Any]:
            loop = asyncio.get_running_loop()
            sync_context = SyncContext(context, loop)
            if not in_flight.enter():
                await in_flight.refuse(context)
            if request_streaming:
                request = _blocking_iterator(request, loop)
            responses: Any = None
            busy = self._submit(None, behavior, request, sync_context)
            del request
            try:
                responses = await asyncio.shield(busy)
                while not isinstance(responses, _Refusal):
                    busy = self._submit(None, next, responses, _DONE)
                    response = await asyncio.shield(busy)
                    if response is _DONE:
                        return
                    if isinstance(response, _Refusal):
                        await response.send(context)
                    yield response
                await responses.send(context)
            finally:
                busy.add_done_callback(
                    lambda done: self._finish(done if responses is None else responses,
                                              in_flight))

        return handle

    def _finish(self, responses: Any, in_flight: CallsInFlight) -> None:
        """A stream's end, on the loop once its thread is free: close its generator
        (on a thread: it may block), then give up its place. ``responses`` is the
        future of the method's call when the caller left before it returned."""
        if isinstance(responses, asyncio.Future):
            responses = (None if responses.cancelled() or responses.exception()
                         else responses.result())
        close = getattr(responses, "close", None)
        if close is not None:
            self.workers.submit(close)
        in_flight.leave()


def _discard_result(future: asyncio.Future[Any]) -> None:
    """Read an abandoned call's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _blocking_iterator(requests: Any, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """The call's request stream for a thread: each message read on the loop. A cancel
    ends it like the client's half-close does (as grpc's sync server does)."""
    iterator = requests.__aiter__()
    while True:
        try:
            item = asyncio.run_coroutine_threadsafe(anext(iterator), loop).result()
        except StopAsyncIteration:
            return
        yield item
