"""Relay a bidirectional gRPC byte stream to a session with a guest (a console, a
channel, a display connection: services/compute/backend_sessions.py).

The handler's thread reads the session and yields what it reads; a second thread
writes the client's messages to the session. Either side's end ends both: the
client half-closing or cancelling, or the session's end of file. Nothing is
buffered beyond one message each way: the handler yields only once gRPC has sent
the previous response (flow control back to the guest), and the writer takes the
next request only once the session took the previous one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import grpc

from services.common.shared import ServiceError

log = logging.getLogger(__name__)

#: the most bytes one message carries, either way
MAX_CHUNK = 64 * 1024


class Slots:
    """At most ``limit`` sessions at once: each holds a thread for its whole life."""

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit = limit
        self.what = what
        self.setting = setting
        self.open = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self.open >= self.limit:
                raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{self.limit} {self.what} are open, the most this "
                                   f"service allows ({self.setting})", "TOO_MANY_SESSIONS")
            self.open += 1
        try:
            yield
        finally:
            with self._lock:
                self.open -= 1


class Session(Protocol):
    def read(self) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    def shutdown(self) -> None: ...
    def close(self) -> None: ...


class _Ends:
    """Closes the session once both threads are done with it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._left = 2
        self._lock = threading.Lock()

    def done(self) -> None:
        self.session.shutdown()
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self.session.close()


def relay(session: Session, incoming: Iterator[bytes],
          on_cancel: Callable[[Callable[[], None]], object]) -> Iterator[bytes]:
    """What the session sends, while ``incoming`` is written to it. ``on_cancel``
    registers a callback for the call's end (grpc's context.add_callback): a
    cancelled call shuts the session at once, whichever thread is blocked."""
    ends = _Ends(session)
    on_cancel(session.shutdown)

    def write_all() -> None:
        try:
            for data in incoming:
                if data:
                    session.write(data)
        except Exception as error:  # noqa: BLE001 - the call's end, as the iterator says it
            log.debug("session writer ends: %s", error)
        finally:
            ends.done()

    threading.Thread(target=write_all, name="session-writer", daemon=True).start()
    try:
        while data := session.read():
            yield data
    finally:
        ends.done()
