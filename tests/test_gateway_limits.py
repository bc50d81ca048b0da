"""Bounded everything: calls per identity, message sizes, connections, handshakes, pings.

A real gateway process with small limits in front of the compute service (test
driver) running in this process, whose RPC counter shows what reached it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import authn, config, limits, pki
from gateway.identity import Identity
from services.common.config import ConfigError
from services.supervisor import client_credentials
from tests.conftest import NODE_XML, domain_xml, running_service
from tests.test_gateway import wait_until
from tests.test_gateway_authn import (
    ADMIN_DN,
    backend_calls,
    identities_text,
    running_gateway,
    with_token,
    write_identities,
)
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

MAX_MESSAGE = 64 * 1024
OPS = authn.new_token()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("limits")
    pki.ensure_dev_pki(root / "pki")
    (root / "node.xml").write_text(NODE_XML)
    write_identities(root / "identities.toml", identities_text(
        [ADMIN_DN], {ADMIN_DN: ["admin"]}, [("ops", ["admin"], OPS, False)]))
    with running_service(root, f"test://{root / 'node.xml'}"):
        yield root


@pytest.fixture(scope="module")
def target(state: Path) -> Iterator[str]:
    with running_gateway(state, client_credentials(state / "pki"),
                         "--identities-file", str(state / "identities.toml"),
                         "--max-client-requests", "2", "--max-health-watchers", "2",
                         "--max-message-bytes", str(MAX_MESSAGE)) as (_, address):
        yield address


def healthy(address: str, channel_credentials: grpc.ChannelCredentials) -> bool:
    with grpc.secure_channel(address, channel_credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=20)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def code_of(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call(*args, **kwargs)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def test_calls_beyond_the_identity_limit_are_refused(state: Path, target: str) -> None:
    admin = client_credentials(state / "pki")
    ops = with_token(admin, OPS)  # the token names the caller: "ops"
    with grpc.secure_channel(target, admin) as channel, \
            grpc.secure_channel(target, ops) as other:
        stub, other_stub = pb_grpc.ComputeServiceStub(channel), pb_grpc.ComputeServiceStub(other)
        # two calls that stay open hold both of the admin's slots
        held = [stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=["limited"]),
                                       timeout=60) for _ in range(2)]
        for stream in held:
            stream.initial_metadata()  # subscribed at the backend
        before = backend_calls()
        code, message = code_of(stub.ListDomains, pb.ListDomainsRequest(), timeout=20)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert message == ("'O=virtmesh,CN=admin' already has 2 calls in flight, the most "
                           "allowed (max_client_requests); retry when one ends")
        assert backend_calls() == before
        # everyone else is served meanwhile, health checks too
        assert other_stub.ListDomains(pb.ListDomainsRequest(), timeout=20).domains
        assert healthy(target, admin)  # a client of its own: a new connection
        # and the calls in flight go on: each sees the event
        received: list[str] = []

        def first_event(stream: Any) -> None:
            received.append(next(iter(stream)).name)

        readers = [threading.Thread(target=first_event, args=(stream,)) for stream in held]
        for reader in readers:
            reader.start()
        other_stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("limited")), timeout=20)
        for reader in readers:
            reader.join(60)
        assert received == ["limited", "limited"]
        other_stub.UndefineDomain(pb.UndefineDomainRequest(name="limited"), timeout=20)
        # once one ends, its slot is free again
        held[0].cancel()
        assert wait_until(lambda: code_of(stub.ListDomains, pb.ListDomainsRequest(),
                                          timeout=20)[0] == grpc.StatusCode.OK, 30)
        held[1].cancel()


def test_oversized_message_is_refused(state: Path, target: str) -> None:
    admin = client_credentials(state / "pki")
    with grpc.secure_channel(target, admin) as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        before = backend_calls("DefineDomain")
        padding = "<!--" + "x" * MAX_MESSAGE + "-->"
        code, message = code_of(stub.DefineDomain, pb.DefineDomainRequest(
            xml=domain_xml("huge").replace("</domain>", padding + "</domain>")), timeout=20)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in message
        assert backend_calls("DefineDomain") == before
        # the same connection and the gateway go on serving
        assert stub.ListDomains(pb.ListDomainsRequest(), timeout=20).domains
        assert healthy(target, admin)


def test_health_watches_beyond_the_limit_are_refused(state: Path, target: str) -> None:
    """Health needs no identity, so its Watch streams (each probing a service every
    second) are bounded by max_health_watchers (2 here); Check is not."""
    admin = client_credentials(state / "pki")
    compute = "virtmesh.compute.v1.ComputeService"
    with grpc.secure_channel(target, admin) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        held = [stub.Watch(health_pb2.HealthCheckRequest(service=compute), timeout=60)
                for _ in range(2)]
        for stream in held:
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        code, message = code_of(lambda: next(stub.Watch(health_pb2.HealthCheckRequest(),
                                                        timeout=20)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_health_watchers" in message
        assert healthy(target, admin)
        held[0].cancel()  # a watch that ends frees its place
        assert wait_until(lambda: code_of(lambda: next(stub.Watch(
            health_pb2.HealthCheckRequest(), timeout=20)))[0] == grpc.StatusCode.OK, 30)
        held[1].cancel()


def test_silent_connection_is_closed_after_the_handshake_timeout(state: Path) -> None:
    with running_gateway(state, client_credentials(state / "pki"), "--identities-file",
                         str(state / "identities.toml"), "--handshake-timeout", "0.5") \
            as (_, address):
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as silent:
            silent.settimeout(60)  # hang guard only
            assert silent.recv(1) == b""  # closed by the gateway, never a byte from us
        assert healthy(address, client_credentials(state / "pki"))


def test_connections_beyond_max_clients_are_closed(state: Path) -> None:
    admin = client_credentials(state / "pki")
    with running_gateway(state, admin, "--identities-file", str(state / "identities.toml"),
                         "--max-clients", "2") as (_, address):
        channels = [grpc.secure_channel(address, admin) for _ in range(3)]
        try:
            stubs = [pb_grpc.ComputeServiceStub(channel) for channel in channels]
            # (the health probe's connection may take a moment to be gone)
            assert wait_until(lambda: all(
                code_of(stub.ListDomains, pb.ListDomainsRequest(), timeout=20)[0]
                == grpc.StatusCode.OK for stub in stubs[:2]), 60, step=0.5)
            code, message = code_of(stubs[2].ListDomains, pb.ListDomainsRequest(), timeout=20)
            assert code == grpc.StatusCode.UNAVAILABLE and "Socket closed" in message
            channels[0].close()
            # a freed connection is taken by the next client
            assert wait_until(lambda: code_of(stubs[2].ListDomains, pb.ListDomainsRequest(),
                                              timeout=20)[0] == grpc.StatusCode.OK, 60, step=0.5)
        finally:
            for channel in channels:
                channel.close()


def test_a_client_pinging_too_often_is_sent_away(state: Path, target: str) -> None:
    admin = client_credentials(state / "pki")
    eager = [("grpc.keepalive_time_ms", 50), ("grpc.keepalive_permit_without_calls", 1),
             ("grpc.http2.max_pings_without_data", 0)]
    with grpc.secure_channel(target, admin, options=eager) as channel:
        stream = pb_grpc.ComputeServiceStub(channel).WatchDomainEvents(
            pb.WatchDomainEventsRequest(names=["never"]), timeout=60)
        code, message = code_of(lambda: list(stream))
    # the gateway closed the connection (GOAWAY too_many_pings), long before the deadline
    assert (code, message) == (grpc.StatusCode.UNAVAILABLE, "Too many pings")


def test_limiter_counts_per_identity() -> None:
    limiter = limits.Limiter(1)
    alice, bob = Identity("alice", method="token"), Identity("bob", method="token")

    async def calls() -> None:
        async with limiter.call(alice):
            with pytest.raises(limits.LimitExceeded) as refused:
                async with limiter.call(alice):
                    pass
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            async with limiter.call(bob):
                assert (limiter.in_flight(alice), limiter.in_flight(bob)) == (1, 1)
        async with limiter.call(alice):
            pass

    asyncio.run(calls())
    assert (limiter.in_flight(alice), limiter.in_flight(bob)) == (0, 0)


@pytest.mark.parametrize("flag, value", [
    ("--max-client-requests", "0"), ("--max-clients", "-1"), ("--handshake-timeout", "0"),
    ("--max-message-bytes", "0"), ("--max-message-bytes", str(2**31)),
    ("--keepalive-max-ping-strikes", "-1"), ("--max-connection-age", "0"),
    ("--max-health-watchers", "0"), ("--audit-anonymous-rate", "0"),
])
def test_limits_cannot_be_switched_off(flag: str, value: str) -> None:
    with pytest.raises(ConfigError, match=flag.lstrip("-").replace("-", "_")):
        config.load([flag, value], environ={})


def test_listener_options_come_from_the_config() -> None:
    options = dict(limits.server_options(config.load(
        ["--max-clients", "7", "--keepalive-min-ping-interval", "1.5",
         "--keepalive-permit-without-calls", "true"], environ={})))
    assert options["grpc.max_allowed_incoming_connections"] == 7
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 1500
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.server_handshake_timeout_ms"] == 10_000
