"""Fan-out of libvirt events to any number of gRPC watchers.

libvirt calls us on its event-loop thread, which must never block; each watcher
gets a bounded queue, and a watcher that falls too far behind is dropped with
RESOURCE_EXHAUSTED rather than slowing the others or growing memory.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import grpc
import libvirt
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.backend import is_uuid
from services.common.errors import ServiceError
from services.common.libvirt_connection import LibvirtConnection
from services.common.metrics import EVENT_SUBSCRIBERS

Event = TypeVar("Event")

_CLOSED = object()

log = logging.getLogger(__name__)


class Subscription(Generic[Event]):
    def __init__(self, hub: EventHub[Event], accept: Callable[[Event], bool], size: int) -> None:
        self._hub = hub
        self._accept = accept
        self._queue: queue.Queue[object] = queue.Queue(maxsize=size)
        self.overflowed = False
        #: why the hub ended this stream, once it has
        self.ended: str | None = None

    def offer(self, event: Event) -> None:
        if not self._accept(event):
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.overflowed = True
            self._hub.unsubscribe(self)

    def close(self, reason: str) -> None:
        self.ended = reason
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_CLOSED)

    def events(self, is_active: Callable[[], bool], poll: float = 0.5) -> Iterator[Event]:
        """Yield events until the caller goes away or the hub closes the stream."""
        try:
            while is_active():
                try:
                    item = self._queue.get(timeout=poll)
                except queue.Empty:
                    item = None
                if item is _CLOSED or (item is None and self.ended):
                    raise ServiceError(grpc.StatusCode.UNAVAILABLE,
                                       f"event stream ended: {self.ended}",
                                       "EVENTS_INTERRUPTED")
                if item is None:
                    if self.overflowed:
                        break
                    continue
                yield item  # type: ignore[misc]
            if self.overflowed:
                raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   "event watcher fell too far behind and was dropped",
                                   "WATCHER_TOO_SLOW")
        finally:
            self._hub.unsubscribe(self)


class EventHub(Generic[Event]):
    """Publish once, deliver to every subscriber whose filter accepts the event.

    Open subscriptions are counted in virtmesh_event_subscribers (all hubs together)."""

    def __init__(self, max_subscribers: int, queue_size: int = 1024) -> None:
        #: may be changed while the service runs (the admin API's SetLimit)
        self.max_subscribers = max_subscribers
        self._queue_size = queue_size
        self._subscribers: set[Subscription[Event]] = set()
        self._lock = threading.Lock()
        #: why Watch answers UNIMPLEMENTED: the driver has no events of this kind
        self.unsupported = ""

    @classmethod
    def fed_by(cls, connection: LibvirtConnection, max_subscribers: int,
               register: Callable[[libvirt.virConnect], None]) -> EventHub[Event]:
        """A hub whose libvirt callbacks ``register`` puts on every new connection;
        its streams end when the connection is lost (events would be missed)."""
        hub: EventHub[Event] = cls(max_subscribers)

        def registered(conn: libvirt.virConnect) -> None:
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

    def watch(self, context: grpc.ServicerContext, names: Iterable[str],
              connected: Callable[[], object]) -> Iterator[Event]:
        """A Watch… RPC's stream: the events about ``names`` (by name, or by UUID in any
        case; all events when empty). It subscribes before it checks the connection
        (``connected`` raises UNAVAILABLE when there is none), so a connection lost in
        between ends this stream too rather than leaving it silently empty; then the
        headers go out, so the caller knows it is subscribed before any event."""
        if self.unsupported:
            raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, self.unsupported,
                               "VIR_ERR_NO_SUPPORT")
        exact = set(names)
        uuids = {name.lower() for name in exact if is_uuid(name)}

        def accept(event: Any) -> bool:
            return (not exact or event.name in exact or event.name.lower() in uuids
                    or getattr(event, "uuid", "").lower() in uuids)

        subscription = self.subscribe(accept)
        try:
            connected()
        except BaseException:
            self.unsubscribe(subscription)
            raise
        context.send_initial_metadata(())
        yield from subscription.events(context.is_active)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, accept: Callable[[Event], bool]) -> Subscription[Event]:
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"too many event watchers (limit {self.max_subscribers})",
                                   "TOO_MANY_WATCHERS")
            subscription = Subscription(self, accept, self._queue_size)
            self._subscribers.add(subscription)
            EVENT_SUBSCRIBERS.inc()
            return subscription

    def unsubscribe(self, subscription: Subscription[Event]) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)
                EVENT_SUBSCRIBERS.dec()

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.offer(event)

    def close_all(self, reason: str) -> None:
        """End every stream with UNAVAILABLE, e.g. when the libvirt connection is lost."""
        with self._lock:
            subscribers, self._subscribers = self._subscribers, set()
            EVENT_SUBSCRIBERS.dec(len(subscribers))
        for subscription in subscribers:
            subscription.close(reason)


def now() -> Timestamp:
    """The time an event is published, for its ``time`` field."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
