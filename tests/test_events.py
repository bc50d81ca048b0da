"""EventHub.watch, the body of every Watch… RPC."""

from __future__ import annotations

import dataclasses
import threading

import grpc
import pytest

from services.common.errors import ServiceError
from services.common.events import EventHub

UUID = "dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566"


@dataclasses.dataclass
class Event:
    name: str
    uuid: str = ""


class Context:
    """What a Watch handler uses of grpc.ServicerContext."""

    def __init__(self) -> None:
        self.subscribed = threading.Event()
        self.active = True

    def send_initial_metadata(self, _metadata: object) -> None:
        self.subscribed.set()

    def is_active(self) -> bool:
        return self.active


def test_watch_matches_names_exactly_and_uuids_in_any_case() -> None:
    hub: EventHub[Event] = EventHub(4)
    context = Context()
    stream = hub.watch(context, ["web", UUID.upper()], lambda: None)  # type: ignore[arg-type]
    seen: list[Event] = []
    # range first: zip stops before it asks the stream for a third event
    reader = threading.Thread(target=lambda: seen.extend(
        event for _, event in zip(range(2), stream, strict=False)), daemon=True)
    reader.start()
    assert context.subscribed.wait(30)
    for event in (Event("WEB"), Event("web"), Event("other"), Event("db", UUID)):
        hub.publish(event)
    reader.join(30)
    assert seen == [Event("web"), Event("db", UUID)]


def test_no_connection_ends_the_watch_and_leaves_no_subscriber() -> None:
    hub: EventHub[Event] = EventHub(4)

    def down() -> None:
        raise ServiceError(grpc.StatusCode.UNAVAILABLE, "libvirt is down")

    with pytest.raises(ServiceError, match="down"):
        next(hub.watch(Context(), [], down))  # type: ignore[arg-type]
    assert hub.subscriber_count == 0
