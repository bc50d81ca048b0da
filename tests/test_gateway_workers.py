"""The gateway on several cores: workers on one port that act as one gateway.

Real gateway processes with two workers in front of the compute service (test driver)
running in this process. Which worker served a call is read from its audit record's
``pid``; every test connection has a subchannel pool of its own, so that each is a TCP
connection of its own for the kernel to hand to a worker.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import authn, config, limits, pki, workers
from gateway.authz import Authorizer
from gateway.identity import Identity
from gateway.policy import parse
from services.supervisor import client_credentials
from tests.conftest import NODE_XML, running_service
from tests.test_gateway import wait_until
from tests.test_gateway_authn import (
    ADMIN_DN,
    identities_text,
    running_gateway,
    with_token,
    write_identities,
)
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(180)

TEAM = authn.new_token()
COMPUTE = pb.DESCRIPTOR.services_by_name["ComputeService"]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("workers")
    pki.ensure_dev_pki(root / "pki")
    (root / "node.xml").write_text(NODE_XML)
    write_identities(root / "identities.toml", identities_text(
        [ADMIN_DN], {ADMIN_DN: ["admin"]}, [("team", ["team-a"], TEAM, False)]))
    (root / "policy.toml").write_text(
        '[[grants]]\ngroups = ["team-a"]\nrole = "readonly"\nobjects = ["alpha"]\n')
    with running_service(root, f"test://{root / 'node.xml'}"):
        yield root


@pytest.fixture()
def gateway(state: Path) -> Iterator[tuple[int, str]]:
    """Two workers with a limit of two calls in flight per identity: (pid, address)."""
    (state / "log" / "audit.jsonl").unlink(missing_ok=True)
    with running_gateway(state, client_credentials(state / "pki"), "--workers", "2",
                         "--identities-file", str(state / "identities.toml"),
                         "--policy-file", str(state / "policy.toml"),
                         "--max-client-requests", "2") as (process, target):
        assert process.popen is not None
        # Both serve on the port once their private sockets answer.
        gateway_config = config.load(["--state-dir", str(state), "--workers", "2"], {})
        for path in workers.worker_sockets(gateway_config):
            assert wait_until(lambda path=path: private_health(path), 60)  # type: ignore[misc]
        yield process.popen.pid, target


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's workers."""
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    except OSError:
        return set()
    found = set()
    for pid in map(int, children.split()):
        try:
            if b"gateway.workers" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            pass  # gone meanwhile
    return found


def connection(target: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    """A channel with a TCP connection of its own (no subchannel shared with others)."""
    return grpc.secure_channel(target, credentials,
                               options=[("grpc.use_local_subchannel_pool", 1)])


def destroy_missing(channel: grpc.Channel, request_id: str) -> grpc.StatusCode:
    """A call that may change something (so it is audited) and changes nothing."""
    try:
        pb_grpc.ComputeServiceStub(channel).DestroyDomain(
            pb.DestroyDomainRequest(name=f"missing-{request_id}"), timeout=20,
            metadata=(("x-request-id", request_id),))
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def audit_records(state: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in
            (state / "log" / "audit.jsonl").read_text().splitlines()]


def test_workers_share_one_port(state: Path, gateway: tuple[int, str]) -> None:
    supervisor, target = gateway
    admin = client_credentials(state / "pki")
    for index in range(40):
        with connection(target, admin) as channel:
            assert destroy_missing(channel, f"port-{index}") == grpc.StatusCode.NOT_FOUND
        served = {record["pid"] for record in audit_records(state)}
        if len(served) == 2:
            break
    assert served == worker_pids(supervisor), served


def test_audit_records_of_concurrent_workers_are_whole(state: Path,
                                                        gateway: tuple[int, str]) -> None:
    _, target = gateway
    admin = client_credentials(state / "pki")
    channels = [connection(target, admin) for _ in range(8)]
    try:
        futures = [pb_grpc.ComputeServiceStub(channels[index % 8]).DestroyDomain.future(
            pb.DestroyDomainRequest(name=f"missing-{index}"), timeout=60,
            metadata=(("x-request-id", f"many-{index}"),)) for index in range(300)]
        for future in futures:
            assert future.exception() is not None
    finally:
        for channel in channels:
            channel.close()
    lines = (state / "log" / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # each line one whole record
    ids = sorted(str(record["request_id"]) for record in records)
    assert ids == sorted(f"many-{index}" for index in range(300))
    assert len({record["pid"] for record in records}) == 2


def test_the_identity_limit_holds_across_workers(state: Path,
                                                 gateway: tuple[int, str]) -> None:
    """Two streams hold the identity's two slots, wherever they landed; a call on any
    other connection, whichever worker it reaches, is one too many."""
    _, target = gateway
    admin = client_credentials(state / "pki")
    holders = [connection(target, admin) for _ in range(2)]
    streams = [pb_grpc.ComputeServiceStub(channel).WatchDomainEvents(
        pb.WatchDomainEventsRequest(), timeout=60) for channel in holders]
    try:
        for stream in streams:
            stream.initial_metadata()  # subscribed at the backend: the slot is held
        refused = 0
        for _ in range(12):
            with connection(target, admin) as channel:
                try:
                    pb_grpc.ComputeServiceStub(channel).GetDomain(
                        pb.GetDomainRequest(name="alpha"), timeout=20)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                    refused += 1
        assert refused == 12
    finally:
        for stream in streams:
            stream.cancel()
        for channel in holders:
            channel.close()

    def served() -> bool:
        with connection(target, admin) as channel:
            reply = pb_grpc.ComputeServiceStub(channel).GetDomain(
                pb.GetDomainRequest(name="alpha"), timeout=20)
        return reply.domain.name == "alpha"

    assert wait_until(served, 30)  # the slots came back


def test_a_killed_worker_is_replaced_and_sigterm_drains_all(state: Path,
                                                            gateway: tuple[int, str]) -> None:
    supervisor, target = gateway
    admin = client_credentials(state / "pki")
    before = worker_pids(supervisor)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(worker_pids(supervisor) - {victim}) == 2, 60)
    replaced = worker_pids(supervisor)
    assert victim not in replaced and len(replaced & before) == 1
    # the new worker serves, on its private socket (which it opens once its ports are
    # open) and on the port
    gateway_config = config.load(["--state-dir", str(state), "--workers", "2"], {})
    for path in workers.worker_sockets(gateway_config):
        assert wait_until(lambda path=path: private_health(path), 60)  # type: ignore[misc]
    for index in range(40):
        with connection(target, admin) as channel:
            destroy_missing(channel, f"after-{index}")
        if replaced <= {record["pid"] for record in audit_records(state)}:
            break
    assert replaced <= {record["pid"] for record in audit_records(state)}

    os.kill(supervisor, signal.SIGTERM)
    assert wait_until(lambda: not any(map(running, replaced)), 60)


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def private_health(path: Path) -> bool:
    try:
        with grpc.insecure_channel(f"unix:{path}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_each_worker_has_a_private_socket(state: Path, gateway: tuple[int, str]) -> None:
    paths = workers.worker_sockets(config.load(["--state-dir", str(state), "--workers", "2"],
                                               {}))
    assert [path.name for path in paths] == ["gateway-0.sock", "gateway-1.sock"]
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert private_health(path)


def test_restricted_grants_are_still_judged_by_object(state: Path,
                                                      gateway: tuple[int, str]) -> None:
    """The request is decoded when the grant is limited to names: team-a reads alpha
    only. The admin's read needs no decoding and is still served."""
    _, target = gateway
    team = with_token(client_credentials(state / "pki"), TEAM)
    with connection(target, team) as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        assert stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=20).domain.name == \
            "alpha"
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetDomain(pb.GetDomainRequest(name="beta"), timeout=20)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert "domain 'beta'" in str(caught.value.details())  # type: ignore[attr-defined]
    with connection(target, client_credentials(state / "pki")) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.ComputeServiceStub(channel).GetDomain(pb.GetDomainRequest(name="beta"),
                                                          timeout=20)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_only_unrestricted_read_only_calls_skip_the_request() -> None:
    authorizer = Authorizer(parse({"grants": [
        {"groups": ["team-a"], "role": "readonly", "objects": ["alpha"]}]}))
    admin = Identity("admin", frozenset({"admin"}), "certificate")
    team = Identity("team", frozenset({"team-a"}), "token")
    methods = COMPUTE.methods_by_name
    assert authorizer.without_request(admin, methods["GetDomain"]) is not None
    assert authorizer.without_request(admin, methods["ListDomains"]) is not None
    # names matter to a grant limited to names
    assert authorizer.without_request(team, methods["GetDomain"]) is None
    # a listing the caller may see only in part is filtered by name
    assert authorizer.without_request(team, methods["ListDomains"]) is None
    # a call that may change something has objects to audit
    assert authorizer.without_request(admin, methods["DestroyDomain"]) is None
    # one that is read-only unless the request asks for more (secure XML)
    assert authorizer.without_request(admin, methods["GetDomainXML"]) is None


def test_shared_counts_are_one_limit_and_forget_a_dead_worker(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    first = limits.SharedCounts(path, workers=2, worker=0, create=True)
    second = limits.SharedCounts(path, workers=2, worker=1)
    alice, bob = ("token", "alice"), ("token", "bob")
    try:
        assert first.take(alice, 3) == -1 and second.take(alice, 3) == -1
        assert second.take(alice, 3) == -1
        assert first.take(alice, 3) == 3  # three in flight over both workers: one too many
        assert second.take(bob, 3) == -1  # someone else's count is their own
        assert (first.total(alice), second.total(bob)) == (3, 1)
        second.forget_worker(1)  # the supervisor, once worker 1 died
        assert (first.total(alice), first.total(bob)) == (1, 0)
        first.give_back(alice)
        assert first.total(alice) == 0
        # a slot back at 0 is reused: more identities than slots come and go
        for index in range(limits.SharedCounts.SLOTS * 2):
            assert first.take(("token", f"passer-{index}"), 1) == -1
            first.give_back(("token", f"passer-{index}"))
    finally:
        first.close()
        second.close()


def test_one_worker_per_core_by_default(tmp_path: Path) -> None:
    """0 (the default) is one per core the gateway may use."""
    state = ["--state-dir", str(tmp_path)]
    assert config.load(state, {}).workers == config.cores()
    assert config.load([*state, "--workers", "1"], {}).workers == 1
    assert config.load(state, {"VIRTMESH_WORKERS": "3"}).workers == 3


@pytest.fixture()
def unlimited_gateway(state: Path) -> Iterator[tuple[int, str]]:
    """Two workers, without the per-identity limit of ``gateway``."""
    with running_gateway(state, client_credentials(state / "pki"), "--workers", "2") \
            as (process, target):
        assert process.popen is not None
        gateway_config = config.load(["--state-dir", str(state), "--workers", "2"], {})
        for path in workers.worker_sockets(gateway_config):
            assert wait_until(lambda path=path: private_health(path), 60)  # type: ignore[misc]
        yield process.popen.pid, target


def test_the_admin_api_answers_for_every_worker(
        state: Path, unlimited_gateway: tuple[int, str]) -> None:
    """Whichever worker a connection reaches: the clients of both are listed, a client
    of the other worker can be disconnected, and a log change is made in both."""
    from virtmesh.admin.v1 import admin_service_pb2 as admin_pb
    from virtmesh.admin.v1 import admin_service_pb2_grpc as admin_grpc

    supervisor, target = unlimited_gateway
    credentials = client_credentials(state / "pki")
    held: list[tuple[grpc.Channel, Any]] = []
    try:
        # watches on separate connections until both workers hold some
        for _ in range(40):
            channel = connection(target, credentials)
            watch = pb_grpc.ComputeServiceStub(channel).WatchDomainEvents(
                pb.WatchDomainEventsRequest(), timeout=120)
            watch.initial_metadata()
            held.append((channel, watch))
            with connection(target, credentials) as asking:
                listed = admin_grpc.AdminServiceStub(asking).ListClients(
                    admin_pb.ListClientsRequest(), timeout=20).clients
            watching = [client for client in listed if
                        "/virtmesh.compute.v1.ComputeService/WatchDomainEvents" in client.methods]
            if len({client.pid for client in watching}) == 2:
                break
        # every watcher is listed, whichever worker holds it and whichever answered
        assert len(watching) == len(held)
        assert {client.pid for client in watching} == worker_pids(supervisor)

        # ask through connections until one reaches the worker that does not hold it
        victim = watching[0]
        for _ in range(40):
            with connection(target, credentials) as asking:
                stub = admin_grpc.AdminServiceStub(asking)
                mine = stub.GetServerInfo(admin_pb.GetServerInfoRequest(), timeout=20).pid
                if mine == victim.pid:
                    continue
                stub.DisconnectClient(admin_pb.DisconnectClientRequest(
                    client_id=victim.id), timeout=20)
                break
        else:
            raise AssertionError("no connection reached the other worker")
        # code() waits for a call's end: ask only the ended ones
        assert wait_until(lambda: any(watch.done() and watch.code() == grpc.StatusCode.UNAVAILABLE
                                      for _, watch in held), 20)
        assert sum(watch.done() for _, watch in held) == 1  # that one only

        with connection(target, credentials) as asking:
            admin_grpc.AdminServiceStub(asking).SetLogSettings(admin_pb.SetLogSettingsRequest(
                filters={"virtmesh.test.workers": admin_pb.LOG_LEVEL_DEBUG}), timeout=20)
        seen = set()
        for _ in range(40):
            with connection(target, credentials) as asking:
                stub = admin_grpc.AdminServiceStub(asking)
                pid = stub.GetServerInfo(admin_pb.GetServerInfoRequest(), timeout=20).pid
                settings = stub.GetLogSettings(admin_pb.GetLogSettingsRequest(),
                                               timeout=20).settings
                assert settings.filters["virtmesh.test.workers"] == admin_pb.LOG_LEVEL_DEBUG
                seen.add(pid)
            if len(seen) == 2:
                break
        assert seen == worker_pids(supervisor)
    finally:
        for channel, watch in held:
            watch.cancel()
            channel.close()
