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
import logging
from collections.abc import AsyncIterator
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
    """Calls in flight per identity, at most ``max_client_requests`` each."""

    def __init__(self, max_client_requests: int) -> None:
        self.max_client_requests = max_client_requests
        self._in_flight: dict[tuple[str, str], int] = {}

    def in_flight(self, identity: Identity) -> int:
        return self._in_flight.get((identity.method, identity.name), 0)

    def most_in_flight(self) -> int:
        """The most calls any one identity has in flight (the admin API's in_use)."""
        return max(self._in_flight.values(), default=0)

    @contextlib.asynccontextmanager
    async def call(self, identity: Identity) -> AsyncIterator[None]:
        """Hold one of the identity's slots for the call; LimitExceeded if none is free."""
        key = (identity.method, identity.name)
        held = self._in_flight.get(key, 0)
        if held >= self.max_client_requests:
            CALLS_REJECTED.labels(identity.method).inc()
            log.warning("%s %r from %s: %d calls in flight, refusing another", identity.method,
                        identity.name, identity.peer, held)
            raise LimitExceeded(f"{identity.name!r} already has {held} calls in flight, the "
                                "most allowed (max_client_requests); retry when one ends")
        self._in_flight[key] = held + 1
        try:
            yield
        finally:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]


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
