"""The compute service's capability answers, cached, with an etag, warmed at start.

libvirt's capabilities and domain capabilities come from its probes of QEMU
(seconds each on a new root). The service keeps each answer it gave, keyed by
its arguments, and names its content with an etag (a digest of the XML, so the
same answer has the same etag after a restart). An answer is dropped when the
connection to libvirt is made again and when a QEMU binary it names changed
(its ctime: what libvirt itself compares before it probes again). The first
fetch of a key happens once: a call that arrives while it runs, e.g. during the
warm-up at start, waits for it.

Plain Python: the backend supplies the fetches (libvirt), the servicer the protobuf.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass

log = logging.getLogger(__name__)

_EMULATOR = re.compile(r"<(?:emulator|path)>(/[^<]+)</(?:emulator|path)>")


def etag_of(xml: str) -> str:
    return hashlib.sha256(xml.encode()).hexdigest()[:20]


def _fingerprint(xml: str) -> tuple[tuple[str, int], ...]:
    """The ctimes of the QEMU binaries an answer names (-1: gone)."""
    stamps = []
    for path in sorted(set(_EMULATOR.findall(xml))):
        try:
            stamps.append((path, os.stat(path).st_ctime_ns))
        except OSError:
            stamps.append((path, -1))
    return tuple(stamps)


@dataclass(frozen=True)
class Answer:
    xml: str
    etag: str
    fingerprint: tuple[tuple[str, int], ...]


class CapabilitiesCache:
    """Answers by key; ``get`` fetches a missing or outdated one exactly once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[Hashable, Answer] = {}
        self._fetching: dict[Hashable, Future[Answer]] = {}
        self.fetches = 0

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()

    def get(self, key: Hashable, fetch: Callable[[], str]) -> Answer:
        while True:
            with self._lock:
                answer = self._answers.get(key)
                if answer is not None and answer.fingerprint == _fingerprint(answer.xml):
                    return answer
                if answer is not None:
                    log.info("a QEMU binary changed since %s was cached: asking libvirt again",
                             key)
                    del self._answers[key]
                pending = self._fetching.get(key)
                if pending is None:
                    pending = self._fetching[key] = Future()
                    mine = True
                else:
                    mine = False
            if not mine:
                try:
                    return pending.result()
                except Exception:  # noqa: BLE001 - the other fetch failed: try ourselves
                    continue
            try:
                xml = fetch()
                self.fetches += 1
                answer = Answer(xml, etag_of(xml), _fingerprint(xml))
            except BaseException as error:
                with self._lock:
                    del self._fetching[key]
                pending.set_exception(error)
                raise
            with self._lock:
                self._answers[key] = answer
                del self._fetching[key]
            pending.set_result(answer)
            return answer
