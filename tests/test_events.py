"""EventHub, the body of every Watch… RPC: filters, numbering, the window, resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.common.errors import ServiceError
from services.common.events import POSITION_KEY, EventHub
from virtmesh.compute.v1.compute_service_pb2 import WatchDomainEventsResponse as Response
from virtmesh.events.v1.events_pb2 import EventGap, EventPosition

UUID = "dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566"
Reason = EventGap.Reason


class Context:
    """What a Watch handler uses of grpc.aio.ServicerContext: its headers."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.subscribed = asyncio.Event()

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.headers = dict(metadata)
        self.subscribed.set()


def event(name: str, uuid: str = "") -> Response:
    return Response(name=name, uuid=uuid)


async def take(stream: AsyncIterator[Response], count: int) -> list[Response]:
    return [await anext(stream) for _ in range(count)]


def watch(hub: EventHub[Response], context: Context, names: list[str] | None = None,
          after: EventPosition | None = None) -> AsyncIterator[Response]:
    return hub.watch(context, names or [], lambda: None, Response, after)  # type: ignore[arg-type]


def test_watch_matches_names_exactly_and_uuids_in_any_case() -> None:
    async def run() -> list[str]:
        hub: EventHub[Response] = EventHub(4)
        context = Context()
        stream = watch(hub, context, ["web", UUID.upper()])
        reader = asyncio.ensure_future(take(stream, 2))
        await context.subscribed.wait()
        for published in (event("WEB"), event("web"), event("other"), event("db", UUID)):
            hub.publish(published)
        seen = await asyncio.wait_for(reader, 10)
        await stream.aclose()  # type: ignore[attr-defined]
        assert hub.subscriber_count == 0
        return [f"{e.name}#{e.position.sequence}" for e in seen]

    assert asyncio.run(run()) == ["web#2", "db#4"]  # numbered whether delivered or not


def test_no_connection_ends_the_watch_and_leaves_no_subscriber() -> None:
    hub: EventHub[Response] = EventHub(4)

    def down() -> None:
        raise ServiceError(grpc.StatusCode.UNAVAILABLE, "libvirt is down")

    async def run() -> None:
        stream = hub.watch(Context(), [], down, Response)  # type: ignore[arg-type]
        with pytest.raises(ServiceError, match="down"):
            await anext(stream)

    asyncio.run(run())
    assert hub.subscriber_count == 0


def test_watcher_limit() -> None:
    async def run() -> None:
        hub: EventHub[Response] = EventHub(1)
        first = watch(hub, Context())
        pending = asyncio.ensure_future(anext(first))
        await asyncio.sleep(0)
        with pytest.raises(ServiceError) as refused:
            await anext(watch(hub, Context()))
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        pending.cancel()

    asyncio.run(run())


def test_a_new_watch_is_told_where_the_sequence_stands() -> None:
    async def run() -> None:
        hub: EventHub[Response] = EventHub(4)
        hub.publish(event("a"))
        hub.publish(event("b"))
        context = Context()
        stream = watch(hub, context)
        reader = asyncio.ensure_future(anext(stream))
        await context.subscribed.wait()
        assert context.headers[POSITION_KEY] == f"{hub.epoch}/2"
        hub.publish(event("c"))
        assert (await reader).position == EventPosition(epoch=hub.epoch, sequence=3)

    asyncio.run(run())


def test_resume_gets_exactly_what_was_missed_then_the_live_events() -> None:
    async def run() -> None:
        hub: EventHub[Response] = EventHub(4, window=8)
        for name in "abcde":
            hub.publish(event(name))
        context = Context()
        stream = watch(hub, context, [], EventPosition(epoch=hub.epoch, sequence=2))
        reader = asyncio.ensure_future(take(stream, 4))
        await context.subscribed.wait()
        hub.publish(event("f"))
        seen = await asyncio.wait_for(reader, 10)
        assert [(e.name, e.position.sequence) for e in seen] == [
            ("c", 3), ("d", 4), ("e", 5), ("f", 6)]

    asyncio.run(run())


def test_resume_at_the_latest_event_gets_only_live_ones() -> None:
    async def run() -> None:
        hub: EventHub[Response] = EventHub(4)
        hub.publish(event("a"))
        context = Context()
        stream = watch(hub, context, [], EventPosition(epoch=hub.epoch, sequence=1))
        reader = asyncio.ensure_future(anext(stream))
        await context.subscribed.wait()
        hub.publish(event("b"))
        assert (await asyncio.wait_for(reader, 10)).name == "b"

    asyncio.run(run())


@pytest.mark.parametrize(("where", "reason"), [
    ("old epoch", Reason.REASON_EPOCH_CHANGED),
    ("passed", Reason.REASON_WINDOW_PASSED),
    ("ahead", Reason.REASON_UNKNOWN_POSITION),
])
def test_a_resume_that_cannot_be_exact_starts_with_a_gap(where: str, reason: Any) -> None:
    async def run() -> None:
        hub: EventHub[Response] = EventHub(4, window=3)
        for name in "abcdef":  # the window holds d, e, f (4 to 6)
            hub.publish(event(name))
        after = {"old epoch": EventPosition(epoch="another run", sequence=5),
                 "passed": EventPosition(epoch=hub.epoch, sequence=2),
                 "ahead": EventPosition(epoch=hub.epoch, sequence=7)}[where]
        context = Context()
        stream = watch(hub, context, ["nothing-by-this-name"], after)
        first = await anext(stream)
        assert first.HasField("gap")
        assert first.gap.reason == reason
        assert first.gap.oldest_available == EventPosition(epoch=hub.epoch, sequence=3)
        assert first.position.sequence == 6  # resume after the gap: only new events
        reader = asyncio.ensure_future(anext(stream))
        hub.publish(event("nothing-by-this-name"))
        assert (await asyncio.wait_for(reader, 10)).position.sequence == 7

    asyncio.run(run())


def test_window_passed_by_one_event_is_still_exact() -> None:
    async def run() -> None:
        hub: EventHub[Response] = EventHub(4, window=3)
        for name in "abcdef":
            hub.publish(event(name))
        stream = watch(hub, Context(), [], EventPosition(epoch=hub.epoch, sequence=3))
        assert [e.name for e in await take(stream, 3)] == ["d", "e", "f"]

    asyncio.run(run())


def test_a_new_epoch_forgets_the_window() -> None:
    hub: EventHub[Response] = EventHub(4)
    first = hub.epoch
    hub.new_epoch()  # the first connection: nothing published yet, same run
    assert hub.epoch == first
    hub.publish(event("a"))
    hub.new_epoch()
    assert hub.epoch != first
    hub.publish(event("b"))
    assert hub.sequence == 1


def test_a_slow_watcher_is_dropped_others_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.common.events.QUEUE_SIZE", 3)

    async def run() -> None:
        hub: EventHub[Response] = EventHub(4)
        slow_context, quick_context = Context(), Context()
        slow = watch(hub, slow_context)
        quick = watch(hub, quick_context)
        slow_first = asyncio.ensure_future(anext(slow))
        reader = asyncio.ensure_future(take(quick, 5))
        await slow_context.subscribed.wait()
        await quick_context.subscribed.wait()
        for name in "abcde":
            hub.publish(event(name))
            await asyncio.sleep(0.01)
        assert len(await asyncio.wait_for(reader, 10)) == 5
        assert (await slow_first).name == "a"
        with pytest.raises(ServiceError) as dropped:
            await take(slow, 5)
        assert dropped.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    asyncio.run(run())


def test_close_all_ends_every_stream_with_unavailable() -> None:
    async def run() -> None:
        hub: EventHub[Response] = EventHub(4)
        context = Context()
        stream = watch(hub, context)
        reader = asyncio.ensure_future(anext(stream))
        await context.subscribed.wait()
        hub.close_all("the libvirt connection was lost")
        with pytest.raises(ServiceError, match="connection was lost") as ended:
            await asyncio.wait_for(reader, 10)
        assert ended.value.code == grpc.StatusCode.UNAVAILABLE
        assert hub.subscriber_count == 0

    asyncio.run(run())
