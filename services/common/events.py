"""Numbered fan-out of libvirt events to any number of gRPC watchers.

libvirt calls ``publish`` on its event-loop thread, which must never block. The hub
numbers each event (``position``: this run's epoch and a sequence number), keeps the
latest ``window`` of them, and hands each to the watchers on the services' asyncio
loop. A watch is a coroutine with a bounded queue: it holds no thread, and one that
falls too far behind is dropped with RESOURCE_EXHAUSTED rather than slowing the others
or growing memory.

A watcher may resume after a position it saw (``resume_after``): it gets what it
missed from the window, in order, then the live events; when the window no longer
holds them, or the epoch changed (the service restarted or lost libvirt, so events
went unseen), it gets an EventGap first instead (protos/virtmesh/events/v1).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Generic, TypeVar

import grpc
import libvirt
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.backend import is_uuid
from services.common.errors import ServiceError
from services.common.libvirt_connection import LibvirtConnection
from services.common.metrics import EVENT_SUBSCRIBERS
from virtmesh.events.v1 import events_pb2

Event = TypeVar("Event")

#: the response header that tells a new watch where the sequence stands
POSITION_KEY = "x-virtmesh-event-position"
#: events a watcher may have queued before it is dropped as too slow
QUEUE_SIZE = 1024

_Reason = events_pb2.EventGap.Reason

log = logging.getLogger(__name__)


class _Closed:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class _TooSlow:
    pass


class Subscription:
    """One watcher's queue, fed on the loop."""

    def __init__(self, accept: Callable[[Any], bool], after: int) -> None:
        self.accept = accept
        #: live events up to this sequence were delivered from the window already
        self.after = after
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)

    def offer(self, sequence: int, event: Any) -> bool:
        """False when the watcher is too far behind (and must go)."""
        if sequence <= self.after or not self.accept(event):
            return True
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def end(self, why: _Closed | _TooSlow) -> None:
        """Tell the watcher to stop: after what it has queued (room is kept for this)."""
        while True:
            try:
                self.queue.put_nowait(why)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()  # an ended watcher need not get every event


class EventHub(Generic[Event]):
    """Publish once, deliver to every subscriber whose filter accepts the event.

    Open subscriptions are counted in virtmesh_event_subscribers (all hubs together)."""

    def __init__(self, max_subscribers: int, window: int = 4096) -> None:
        self.max_subscribers = max_subscribers
        self._lock = threading.Lock()  # publish runs on libvirt's thread, watches on the loop
        self._window: collections.deque[tuple[int, Any]] = collections.deque(maxlen=window)
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.epoch = secrets.token_hex(6)
        self.sequence = 0
        #: why Watch answers UNIMPLEMENTED: the driver has no events of this kind
        self.unsupported = ""

    @classmethod
    def fed_by(cls, connection: LibvirtConnection, max_subscribers: int,
               register: Callable[[libvirt.virConnect], None],
               window: int = 4096) -> EventHub[Event]:
        """A hub whose libvirt callbacks ``register`` puts on every new connection. A
        new connection starts a new epoch (events were missed in between); losing it
        ends the streams."""
        hub: EventHub[Event] = cls(max_subscribers, window)

        def registered(conn: libvirt.virConnect) -> None:
            hub.new_epoch()
            try:
                register(conn)
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                # e.g. libvirt's test driver has no secret events: the service's
                # other calls are served, its Watch RPC answers UNIMPLEMENTED
                hub.unsupported = f"{connection.uri} reports no events of this kind"
                log.warning("%s; its Watch RPC is unavailable", hub.unsupported)
                return
            hub.unsupported = ""

        connection.on_connect(registered)
        connection.on_state_change(
            lambda up: None if up else hub.close_all("the libvirt connection was lost"))
        return hub

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def new_epoch(self) -> None:
        """Events before this point and after it are not one sequence: resuming across
        it is a gap. The first connection keeps the epoch the hub was made with."""
        with self._lock:
            if self.sequence or self._window:
                self.epoch = secrets.token_hex(6)
                self.sequence = 0
                self._window.clear()

    def publish(self, event: Any) -> None:
        """Number ``event`` (a Watch response), keep it, and deliver it (any thread)."""
        with self._lock:
            self.sequence += 1
            event.position.epoch = self.epoch
            event.position.sequence = self.sequence
            self._window.append((self.sequence, event))
            loop = self._loop if self._subscribers else None
        if loop is not None:
            loop.call_soon_threadsafe(self._deliver, event.position.sequence, event)

    def _deliver(self, sequence: int, event: Any) -> None:
        for subscription in list(self._subscribers):
            if not subscription.offer(sequence, event):
                self._drop(subscription, _TooSlow())

    def _drop(self, subscription: Subscription, why: _Closed | _TooSlow) -> None:
        if self._forget(subscription):
            subscription.end(why)

    def _forget(self, subscription: Subscription) -> bool:
        with self._lock:
            if subscription not in self._subscribers:
                return False
            self._subscribers.discard(subscription)
        EVENT_SUBSCRIBERS.dec()
        return True

    def close_all(self, reason: str) -> None:
        """End every stream with UNAVAILABLE, e.g. when the libvirt connection is lost
        (any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def close() -> None:
            for subscription in list(self._subscribers):
                self._drop(subscription, _Closed(reason))

        loop.call_soon_threadsafe(close)

    async def watch(self, context: grpc.aio.ServicerContext, names: Iterable[str],
                    connected: Callable[[], object], response_type: Callable[..., Event],
                    resume_after: Any = None) -> AsyncIterator[Event]:
        """A Watch… RPC's stream: the events about ``names`` (by name, or by UUID in
        any case; all events when empty), after ``resume_after`` when it is set. It
        subscribes before it checks the connection (``connected`` raises UNAVAILABLE
        when there is none), so a connection lost in between ends this stream too rather
        than leaving it silently empty; then the headers go out, so the caller knows it
        is subscribed (and where the sequence stands) before any event."""
        if self.unsupported:
            raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, self.unsupported,
                               "VIR_ERR_NO_SUPPORT")
        accept = _name_filter(names)
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"too many event watchers (limit {self.max_subscribers})",
                                   "TOO_MANY_WATCHERS")
            self._loop = asyncio.get_running_loop()
            backlog = self._backlog(resume_after, response_type) if resume_after else []
            subscription = Subscription(accept, self.sequence)
            self._subscribers.add(subscription)
            epoch, sequence = self.epoch, self.sequence
        EVENT_SUBSCRIBERS.inc()
        try:
            connected()
            await context.send_initial_metadata(((POSITION_KEY, f"{epoch}/{sequence}"),))
            for event in backlog:
                if accept(event) or event.HasField("gap"):  # type: ignore[attr-defined]
                    yield event
            while True:
                item = await subscription.queue.get()
                if isinstance(item, _Closed):
                    raise ServiceError(grpc.StatusCode.UNAVAILABLE,
                                       f"event stream ended: {item.reason}",
                                       "EVENTS_INTERRUPTED")
                if isinstance(item, _TooSlow):
                    raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       "event watcher fell too far behind and was dropped",
                                       "WATCHER_TOO_SLOW")
                yield item
        finally:
            self._forget(subscription)

    def _backlog(self, after: Any, response_type: Callable[..., Event]) -> list[Any]:
        """What a watcher resuming after position ``after`` missed (under the lock):
        the window's events after it, or a gap."""
        oldest = self._window[0][0] if self._window else self.sequence + 1
        if after.epoch != self.epoch:
            reason = _Reason.REASON_EPOCH_CHANGED
        elif after.sequence > self.sequence:
            reason = _Reason.REASON_UNKNOWN_POSITION
        elif after.sequence + 1 < oldest:
            reason = _Reason.REASON_WINDOW_PASSED
        else:
            return [event for sequence, event in self._window if sequence > after.sequence]
        gap = events_pb2.EventGap(reason=reason, oldest_available=events_pb2.EventPosition(
            epoch=self.epoch, sequence=oldest - 1))
        response = response_type(gap=gap, time=now())
        response.position.epoch = self.epoch  # type: ignore[attr-defined]
        response.position.sequence = self.sequence  # type: ignore[attr-defined]
        return [response]


def _name_filter(names: Iterable[str]) -> Callable[[Any], bool]:
    exact = set(names)
    uuids = {name.lower() for name in exact if is_uuid(name)}

    def accept(event: Any) -> bool:
        return (not exact or event.name in exact or event.name.lower() in uuids
                or getattr(event, "uuid", "").lower() in uuids)

    return accept


def now() -> Timestamp:
    """The time an event is published, for its ``time`` field."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
