"""The calls a process is serving, by client, and how an administrator ends them.

gRPC tells a server about calls, never about connections, and has no API to close
one connection from the server's side. So a client here is what a process saw
calling: a key the process chooses (the gateway: the connection's peer address; a
service, whose UNIX-socket peers all read "unix:", the socket and the identity the
gateway vouched for), first seen at its first call. Each call registers with a way
to end it; disconnecting a client ends its calls in flight and, for ``refuse_for``
seconds, makes ``refused`` true for its key so that the process refuses its further
calls. Idle clients are forgotten after ``keep_idle`` seconds.

Libvirt-free and without gRPC's server types, so the grpc.aio gateway and the
services' daemons share it; its lock makes it safe from threads and tasks alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from services.common.shared import error_status

log = logging.getLogger(__name__)

#: ends one call in flight with this status and message
EndCall = Callable[[grpc.StatusCode, str], None]


@dataclasses.dataclass(frozen=True)
class ClientInfo:
    """One client as the admin API shows it."""

    id: str
    identity: str
    auth: str
    peer: str
    since: datetime.datetime
    #: the method of each call in flight
    methods: tuple[str, ...]
    pid: int


@dataclasses.dataclass
class _Client:
    id: str
    peer: str
    since: datetime.datetime
    identity: str = ""
    auth: str = ""
    #: call number -> (method, how to end it)
    calls: dict[int, tuple[str, EndCall]] = dataclasses.field(default_factory=dict)
    #: monotonic time of its last call's end
    idle_since: float = 0.0

    def info(self) -> ClientInfo:
        return ClientInfo(self.id, self.identity, self.auth, self.peer, self.since,
                          tuple(sorted(method for method, _ in self.calls.values())),
                          os.getpid())


@dataclasses.dataclass
class CallHandle:
    """One registered call; ``identify`` once authentication knows who makes it."""

    registry: ClientRegistry
    client: _Client
    number: int

    def identify(self, identity: str, auth: str = "") -> None:
        with self.registry.lock:
            self.client.identity, self.client.auth = identity, auth


class ClientRegistry:
    def __init__(self, keep_idle: float = 0.0, refuse_for: float = 0.0) -> None:
        #: how long an idle client stays listed (the gateway: until gRPC has closed
        #: its idle connection); 0: listed only while it has calls in flight
        self.keep_idle = keep_idle
        #: how long a disconnected client's key stays refused (the gateway: until
        #: gRPC has closed the connection by its maximum age); 0: not refused
        self.refuse_for = refuse_for
        self.lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._refused: dict[str, float] = {}
        self._numbers = itertools.count(1)
        self._swept = 0.0

    def refused(self, key: str) -> bool:
        """Was the client of ``key`` disconnected (its further calls are refused)?"""
        with self.lock:
            until = self._refused.get(key)
            if until is not None and until < time.monotonic():
                del self._refused[key]
                return False
            return until is not None

    @contextlib.contextmanager
    def call(self, key: str, peer: str, method: str, end: EndCall, identity: str = ""
             ) -> Iterator[CallHandle]:
        """Around a call: registered while it runs, ``end`` ending it on disconnect."""
        handle = self._begin(key, peer, method, end)
        if identity:
            handle.identify(identity)
        try:
            yield handle
        finally:
            self._finish(key, handle)

    def _begin(self, key: str, peer: str, method: str, end: EndCall) -> CallHandle:
        number = next(self._numbers)
        with self.lock:
            if self.keep_idle:
                self._forget_idle()
            client = self._clients.get(key)
            if client is None:
                client = _Client(f"{os.getpid()}-{number}", peer,
                                 datetime.datetime.now(datetime.UTC))
                self._clients[key] = client
            client.calls[number] = (method, end)
        return CallHandle(self, client, number)

    def _finish(self, key: str, handle: CallHandle) -> None:
        with self.lock:
            client = handle.client
            client.calls.pop(handle.number, None)
            if not client.calls:
                client.idle_since = time.monotonic()
                if not self.keep_idle and self._clients.get(key) is client:
                    del self._clients[key]

    def _forget_idle(self, now_too: bool = False) -> None:
        """Drop clients idle for longer than keep_idle: at most once a second when a
        call begins (it looks at every client), always when they are listed."""
        now = time.monotonic()
        if now - self._swept < 1.0 and not now_too:
            return
        self._swept = now
        horizon = now - self.keep_idle
        for key, client in list(self._clients.items()):
            if not client.calls and client.idle_since < horizon:
                del self._clients[key]

    def clients(self) -> list[ClientInfo]:
        with self.lock:
            self._forget_idle(now_too=True)
            return sorted((client.info() for client in self._clients.values()),
                          key=lambda info: info.id)

    def disconnect(self, client_id: str, details: str) -> ClientInfo:
        """End the client's calls in flight with UNAVAILABLE and ``details``, and refuse
        its key for ``refuse_for`` seconds; KeyError for an unknown id."""
        with self.lock:
            key, client = next(((key, client) for key, client in self._clients.items()
                                if client.id == client_id), (None, None))
            if key is None or client is None:
                raise KeyError(client_id)
            del self._clients[key]
            if self.refuse_for:
                self._refused[key] = time.monotonic() + self.refuse_for
            info, ends = client.info(), [end for _, end in client.calls.values()]
        for end in ends:  # outside the lock: an ending call finishes through it
            end(grpc.StatusCode.UNAVAILABLE, details)
        return info


def aio_call_ender(context: grpc.aio.ServicerContext, task: asyncio.Task[Any],
                   before: Callable[[grpc.StatusCode], None] | None = None) -> EndCall:
    """How to end a grpc.aio call from another task: ``before`` (an audit record), then
    abort the call from a task of its own, which sends the status (ErrorInfo reason
    CLIENT_DISCONNECTED) at once wherever the call's task is, then cancel the call's
    task so that it stops. Cancelling alone leaves the client without any status when
    the cancellation lands while grpc.aio writes a response. Made in the call's task
    (for every call, so it only remembers what it needs); what it returns may be
    called from any thread (a sync handler runs in one)."""
    return functools.partial(_end_aio_call, asyncio.get_running_loop(), context, task, before)


#: the tasks ending calls: referenced, so that they are not collected half-way
_ENDING: set[asyncio.Task[None]] = set()


def _end_aio_call(loop: asyncio.AbstractEventLoop, context: grpc.aio.ServicerContext,
                  task: asyncio.Task[Any], before: Callable[[grpc.StatusCode], None] | None,
                  code: grpc.StatusCode, details: str) -> None:
    if before is not None:
        before(code)

    async def abort_and_stop() -> None:
        if task.done():
            return  # ended meanwhile; grpc.aio may have released the call
        status = error_status(code, details, "CLIENT_DISCONNECTED")
        try:
            await context.abort(status.code, status.details, status.trailing_metadata)
        except grpc.aio.AbortError:
            pass  # how abort() returns
        except Exception as error:  # noqa: BLE001 - the call had ended meanwhile
            log.debug("the call had ended before its disconnection: %s", error)
        task.cancel()

    def start() -> None:
        ending = loop.create_task(abort_and_stop())
        _ENDING.add(ending)
        ending.add_done_callback(_ENDING.discard)

    loop.call_soon_threadsafe(start)
