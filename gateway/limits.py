"""Bounds on what one caller can hold, and the listener options that bound the rest.

gRPC enforces most limits itself (channel arguments below, from the gateway's
config); the one it has no knob for is per caller: libvirt's max_client_requests
counts calls per client, and a gateway caller is an identity that may come over
many connections. ``Limiter`` counts its calls in flight; one more gets
RESOURCE_EXHAUSTED at once (never queued, so a flood cannot pile up) while the
calls in flight go on undisturbed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Counter

from gateway.identity import Identity

log = logging.getLogger(__name__)

CALLS_REJECTED = Counter(
    "virtmesh_gateway_calls_rejected_total",
    "Calls refused because their identity had max_client_requests calls in flight.",
    ("method",), registry=None)


class LimitExceeded(Exception):
    """The caller is at its limit; the call fails with ``code`` and this message."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Limiter:
    """Calls in flight per identity, at most ``max_client_requests`` each.

    ``shared``: the counts of every worker of the gateway (SharedCounts), so that the
    limit holds for the gateway as a whole however the kernel spreads connections;
    None: this process's own counts."""

    def __init__(self, max_client_requests: int, shared: SharedCounts | None = None) -> None:
        self.max_client_requests = max_client_requests
        self.shared = shared
        self._in_flight: dict[tuple[str, str], int] = {}

    def in_flight(self, identity: Identity) -> int:
        key = (identity.method, identity.name)
        if self.shared is not None:
            return self.shared.total(key)
        return self._in_flight.get(key, 0)

    def acquire(self, identity: Identity) -> None:
        """Take one of the identity's slots; LimitExceeded if none is free."""
        key = (identity.method, identity.name)
        if self.shared is not None:
            held = self.shared.take(key, self.max_client_requests)
        else:
            held = self._in_flight.get(key, 0)
            if held < self.max_client_requests:
                self._in_flight[key] = held + 1
                return
        if held < 0:
            return
        CALLS_REJECTED.labels(identity.method).inc()
        log.warning("%s %r from %s: %d calls in flight, refusing another", identity.method,
                    identity.name, identity.peer, held)
        raise LimitExceeded(f"{identity.name!r} already has {held} calls in flight, the "
                            "most allowed (max_client_requests); retry when one ends")

    def release(self, identity: Identity) -> None:
        key = (identity.method, identity.name)
        if self.shared is not None:
            self.shared.give_back(key)
            return
        left = self._in_flight[key] - 1
        if left:
            self._in_flight[key] = left
        else:
            del self._in_flight[key]

    def most_in_flight(self) -> int:
        """The most calls any one identity has in flight (the admin API's in_use)."""
        return max(self._in_flight.values(), default=0)

    @contextlib.asynccontextmanager
    async def call(self, identity: Identity) -> AsyncIterator[None]:
        """Hold one of the identity's slots for the call; LimitExceeded if none is free."""
        self.acquire(identity)
        try:
            yield
        finally:
            self.release(identity)


class SharedCounts:
    """Calls in flight per identity, counted by every worker of one gateway in a table
    in a shared file (mmap), changed under a lock on that file (fcntl: released by the
    kernel when its holder dies, so a killed worker cannot wedge the others).

    A slot is an identity's 64-bit hash, the total of its calls in flight and each
    worker's share of that total: when a worker dies, the supervisor takes the dead
    worker's shares off the totals (forget_worker), so its calls do not count forever.
    A slot whose total is back to 0 is reused by the next identity that needs one.
    """

    SLOTS = 4096

    def __init__(self, path: Path, workers: int, worker: int = 0, create: bool = False
                 ) -> None:
        self.path = path
        self.workers = workers
        self.worker = worker
        self._slot = struct.Struct(f"<Qi{workers}i")
        size = self.SLOTS * self._slot.size
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_TRUNC if create else 0)
        self._fd = os.open(path, flags, 0o600)
        if create:
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        self._hashes: dict[tuple[str, str], int] = {}

    def _hash(self, key: tuple[str, str]) -> int:
        found = self._hashes.get(key)
        if found is None:
            if len(self._hashes) > 10_000:
                self._hashes.clear()
            digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
            found = self._hashes[key] = int.from_bytes(digest, "little") | 1  # 0: empty
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _find(self, wanted: int) -> tuple[int, int]:
        """(the slot holding ``wanted`` or -1, the first slot free for it or -1)."""
        free = -1
        start = wanted % self.SLOTS
        for step in range(self.SLOTS):
            slot = (start + step) % self.SLOTS
            key, total = struct.unpack_from("<Qi", self._map, slot * self._slot.size)
            if key == wanted:
                return slot, free
            if free < 0 and total == 0:
                free = slot
            if key == 0:
                break
        return -1, free

    def _add(self, slot: int, key: int, amount: int) -> None:
        fields = list(self._slot.unpack_from(self._map, slot * self._slot.size))
        fields[0] = key
        fields[1] += amount
        fields[2 + self.worker] += amount
        self._slot.pack_into(self._map, slot * self._slot.size, *fields)

    def take(self, key: tuple[str, str], most: int) -> int:
        """Count one more call of ``key`` (-1) unless it has ``most`` in flight already:
        then that number (the table full of identities in flight counts as a limit)."""
        wanted = self._hash(key)
        with self._locked():
            slot, free = self._find(wanted)
            if slot < 0:
                if free < 0:
                    return most
                slot = free
                self._slot.pack_into(self._map, slot * self._slot.size, wanted,
                                     *([0] * (self.workers + 1)))
            held = struct.unpack_from("<i", self._map, slot * self._slot.size + 8)[0]
            if held >= most:
                return int(held)
            self._add(slot, wanted, 1)
            return -1

    def give_back(self, key: tuple[str, str]) -> None:
        wanted = self._hash(key)
        with self._locked():
            slot, _ = self._find(wanted)
            if slot >= 0:
                self._add(slot, wanted, -1)

    def total(self, key: tuple[str, str]) -> int:
        with self._locked():
            slot, _ = self._find(self._hash(key))
            return 0 if slot < 0 else int(
                struct.unpack_from("<i", self._map, slot * self._slot.size + 8)[0])

    def forget_worker(self, worker: int) -> None:
        """Take a dead worker's calls off every total."""
        with self._locked():
            for slot in range(self.SLOTS):
                fields = list(self._slot.unpack_from(self._map, slot * self._slot.size))
                if fields[2 + worker]:
                    fields[1] -= fields[2 + worker]
                    fields[2 + worker] = 0
                    self._slot.pack_into(self._map, slot * self._slot.size, *fields)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def server_options(config: Any) -> list[tuple[str, int]]:
    """gRPC's own limits for the listener, from a GatewayConfig."""
    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # libvirt's max_clients: connections beyond it are closed as they arrive
        ("grpc.max_allowed_incoming_connections", config.max_clients),
        # a TLS handshake (and the HTTP/2 preface) must finish within this
        ("grpc.server_handshake_timeout_ms", ms(config.handshake_timeout)),
        # calls open at once on one connection; more wait at the client (HTTP/2)
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        ("grpc.max_metadata_size", config.max_metadata_bytes),
        # our pings find dead clients; theirs must not come more often than allowed
        ("grpc.keepalive_time_ms", ms(config.keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(config.keepalive_timeout)),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(config.keepalive_min_ping_interval)),
        ("grpc.http2.max_ping_strikes", config.keepalive_max_ping_strikes),
        ("grpc.keepalive_permit_without_calls", int(config.keepalive_permit_without_calls)),
        ("grpc.max_connection_idle_ms", ms(config.max_connection_idle)),
        ("grpc.max_connection_age_ms", ms(config.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(config.max_connection_age_grace)),
    ]
    return options
