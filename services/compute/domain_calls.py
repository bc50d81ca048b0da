"""How many calls may wait in libvirt at once on one domain.

A QEMU that stops answering (SIGSTOPped, hung) keeps every call that needs its
monitor waiting for libvirt's job lock, 30 s or more each: without a bound, calls
about that one guest would take every worker thread and the service would stop
answering about all the others. libvirt-free.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import grpc

from services.common.errors import ServiceError

#: calls that may wait in libvirt at once on one domain: a long job, someone watching
#: its progress, an abort, and one more
DOMAIN_CALLS = 4
#: a call about a domain counts as waiting once it has been in libvirt this long (s):
#: calls that answer at once never do, however many run side by side
STUCK_AFTER = 1.0


class DomainCalls:
    """At most ``limit`` calls waiting in libvirt per domain (those in it for at least
    ``stuck_after`` seconds); more get RESOURCE_EXHAUSTED at once rather than a thread
    each that a stuck QEMU would keep."""

    def __init__(self, limit: int = DOMAIN_CALLS, stuck_after: float = 0.0) -> None:
        self.limit = limit
        self.stuck_after = stuck_after
        self._lock = threading.Lock()
        #: domain UUID -> call number -> when it entered libvirt
        self._calls: dict[str, dict[int, float]] = {}
        self._numbers = iter(range(1, 1 << 62))

    @contextlib.contextmanager
    def held(self, uuid: str, name: str) -> Iterator[None]:
        now = time.monotonic()
        with self._lock:
            calls = self._calls.setdefault(uuid, {})
            waiting = sum(1 for started in calls.values() if now - started >= self.stuck_after)
            if waiting >= self.limit:
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"domain '{name}' already has {waiting} calls waiting in libvirt (a "
                    "long job, or a QEMU that does not answer); try again when they end",
                    "DOMAIN_BUSY")
            number = next(self._numbers)
            calls[number] = now
        try:
            yield
        finally:
            with self._lock:
                del calls[number]
                if not calls and self._calls.get(uuid) is calls:
                    del self._calls[uuid]
