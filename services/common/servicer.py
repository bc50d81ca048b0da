"""What every driver's servicer repeats: the event hub and its Watch stream,
``close()``, the optional-bool list filters, and one page of a list.

A servicer speaks protobuf only (docs/layout.md): it never imports libvirt. The
libvirt side of events (registering callbacks) is the backend's
``register_events(conn, emit)``; turning what it emits into a Watch response is
convert's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import grpc

from services.common import paging
from services.common.backend import Backend, summaries
from services.common.config import Config
from services.common.events import EventHub

BackendT = TypeVar("BackendT", bound=Backend)
Event = TypeVar("Event")
Item = TypeVar("Item")
Summary = TypeVar("Summary")

#: a backend's ``register_events``: put libvirt callbacks on ``conn`` that call ``emit``
RegisterEvents = Callable[[Any, Callable[..., None]], None]


class ListRequest(Protocol):
    page_size: int
    page_token: str


class WatchRequest(Protocol):
    @property
    def names(self) -> Sequence[str]: ...

    @property
    def resume_after(self) -> Any: ...

    def HasField(self, field_name: Any) -> bool: ...  # noqa: N802 - protobuf's name


def optional_bools(request: Any, *fields: str) -> dict[str, bool | None]:
    """The request's ``optional bool`` filters by name; None where a field is unset
    (no filter), as opposed to false."""
    return {field: getattr(request, field) if request.HasField(field) else None
            for field in fields}


class DriverServicer(Generic[BackendT, Event]):
    """Base of a driver's servicer: holds its backend and its event hub.

    A driver with events passes ``register_events`` (the backend's) and ``event`` (a
    convert function building the Watch response from what the backend emits); one
    without gets a hub nobody feeds, so ``events`` and ``close()`` look the same in
    every servicer."""

    def __init__(self, backend: BackendT, config: Config,
                 register_events: RegisterEvents | None = None,
                 event: Callable[..., Event] | None = None) -> None:
        self.backend = backend
        if register_events is None or event is None:
            self.events: EventHub[Event] = EventHub(config.max_event_watchers,
                                                    config.event_window)
            return

        def publish(*emitted: Any) -> None:
            self.events.publish(event(*emitted))

        self.events = EventHub.fed_by(backend.connection, config.max_event_watchers,
                                      lambda conn: register_events(conn, publish),
                                      config.event_window)

    def close(self) -> None:
        """The service is stopping: end event streams now rather than after the grace."""
        self.events.close_all("the service is shutting down")

    def stopped(self) -> None:
        """The last call has ended: the backend may let go of its helpers."""
        self.backend.close()

    async def watch(self, request: WatchRequest, context: grpc.aio.ServicerContext,
                    response_type: Callable[..., Event]) -> AsyncIterator[Event]:
        """A Watch…Events RPC: the events about ``request.names`` (all when empty), after
        ``request.resume_after`` when set. A coroutine on the services' loop: a watch
        holds no thread."""
        resume_after = request.resume_after if request.HasField("resume_after") else None
        async for event in self.events.watch(context, request.names, lambda: self.backend.conn,
                                             response_type, resume_after):
            yield event

    def page(self, items: Sequence[Item], key: Callable[[Item], str],
             summary: Callable[[Item], Summary], request: ListRequest,
             *filters: object) -> tuple[list[Summary], str]:
        """One page of ``items`` as summaries, and the next page's token, which is only
        good with the same ``filters``. Items gone before their summary are left out."""
        chunk, token = paging.page(items, key, request.page_size, request.page_token,
                                   paging.fingerprint(*filters))
        return summaries(chunk, summary), token
