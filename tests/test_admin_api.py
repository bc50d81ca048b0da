"""The admin API (virtmesh.admin.v1.AdminService) on a real gateway and compute service,
as processes on temporary sockets with make run's identities: clients and disconnect,
limits, log settings, reload and server info, who may change what, and the audit."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.admission import Access, CallGuard
from gateway.audit import AuditLog
from gateway.authn import Authenticator, ensure_dev_identities
from gateway.authz import Authorizer
from gateway.identity import Identity
from gateway.limits import Limiter
from gateway.policy import load as load_policy
from services.common.clients import ClientRegistry
from tests.conftest import CliRun, Mesh, error_of, reason_of, running_mesh
from virtmesh.admin.v1 import admin_service_pb2 as pb
from virtmesh.admin.v1 import admin_service_pb2_grpc as pb_grpc
from virtmesh.compute.v1 import compute_service_pb2 as compute_pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as compute_grpc

WATCH = "/virtmesh.compute.v1.ComputeService/WatchDomainEvents"


@pytest.fixture
def mesh(tmp_path: Path, node_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mesh]:
    """compute and a gateway with the admin and read-only identities of make run. One
    gateway worker: the admin API answers for the process it reaches (its pid, its
    clients, its limits, its loggers) and does not yet reach the other workers
    (gateway/workers.py worker_sockets)."""
    monkeypatch.setenv("VIRTMESH_WORKERS", "1")
    ensure_dev_identities(tmp_path)
    with running_mesh(tmp_path, node_uri) as running:
        yield running


def readonly_channel(mesh: Mesh) -> grpc.Channel:
    """A connection of the read-only identity: its token on the token port."""
    token = (mesh.state_dir / "tokens" / "readonly.token").read_text().strip()
    credentials = grpc.composite_channel_credentials(
        mesh.credentials("ca"), grpc.access_token_call_credentials(token))
    return grpc.secure_channel(mesh.token_target, credentials)


def admin_stub(channel: grpc.Channel) -> pb_grpc.AdminServiceStub:
    return pb_grpc.AdminServiceStub(channel)


def open_watch(channel: grpc.Channel) -> Any:
    """A WatchDomainEvents stream, once the service has subscribed it (its headers)."""
    stream = compute_grpc.ComputeServiceStub(channel).WatchDomainEvents(
        compute_pb.WatchDomainEventsRequest())
    stream.initial_metadata()
    return stream


def audit_records(mesh: Mesh, method: str) -> list[dict[str, object]]:
    lines = (mesh.state_dir / "log" / "audit.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines)
            if record.get("method") == f"/virtmesh.admin.v1.AdminService/{method}"]


def client_with(clients: pb.ListClientsResponse, method: str) -> pb.Client:
    (found,) = [client for client in clients.clients if method in client.methods]
    return found


def test_a_disconnected_client_s_watch_ends_and_its_connection_is_refused(mesh: Mesh) -> None:
    with mesh.channel() as admin_channel, readonly_channel(mesh) as watcher:
        admin = admin_stub(admin_channel)
        stream = open_watch(watcher)
        client = client_with(admin.ListClients(pb.ListClientsRequest()), WATCH)
        assert (client.identity, client.auth) == ("readonly", "token")
        assert client.calls_in_flight == 1
        assert client.peer.startswith("ipv4:127.0.0.1:")
        assert client.pid == mesh.gateway.popen.pid  # type: ignore[union-attr]
        assert client.id.startswith(f"{client.pid}-")

        gone = admin.DisconnectClient(pb.DisconnectClientRequest(client_id=client.id)).client
        assert gone.id == client.id
        ended = error_of(next, stream)
        assert ended.code() == grpc.StatusCode.UNAVAILABLE, ended.details()
        assert reason_of(ended) == "CLIENT_DISCONNECTED"

        compute = compute_grpc.ComputeServiceStub(watcher)
        later = error_of(compute.ListDomains, compute_pb.ListDomainsRequest())
        assert later.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(later) == "CLIENT_DISCONNECTED"
        assert not [c for c in admin.ListClients(pb.ListClientsRequest()).clients
                    if c.id == client.id]
        unknown = error_of(admin.DisconnectClient,
                           pb.DisconnectClientRequest(client_id=client.id))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
    with readonly_channel(mesh) as fresh:  # a new connection is served again
        compute_grpc.ComputeServiceStub(fresh).ListDomains(compute_pb.ListDomainsRequest())
    (record, _) = audit_records(mesh, "DisconnectClient")
    assert (record["identity"], record["code"], record["objects"]) == (
        "O=virtmesh,CN=admin", "OK", ["gateway"])


def test_a_service_s_client_is_the_identity_the_gateway_vouched_for(mesh: Mesh) -> None:
    """Behind the gateway the compute service sees its caller by identity; disconnecting
    it there ends the watch (UNAVAILABLE, relayed) but not the gateway's connection."""
    with mesh.channel() as admin_channel, readonly_channel(mesh) as watcher:
        admin = admin_stub(admin_channel)
        stream = open_watch(watcher)
        client = client_with(admin.ListClients(pb.ListClientsRequest(name="compute")), WATCH)
        assert client.identity == "readonly"
        assert client.peer == f"unix:{mesh.state_dir / 'run' / 'compute.sock'}"
        assert client.pid == mesh.compute.popen.pid  # type: ignore[union-attr]
        admin.DisconnectClient(pb.DisconnectClientRequest(name="compute", client_id=client.id))
        ended = error_of(next, stream)
        assert ended.code() == grpc.StatusCode.UNAVAILABLE
        compute_grpc.ComputeServiceStub(watcher).ListDomains(compute_pb.ListDomainsRequest())
    (record,) = audit_records(mesh, "DisconnectClient")
    assert (record["code"], record["objects"]) == ("OK", ["compute"])


def test_read_only_identity_reads_but_cannot_change(mesh: Mesh) -> None:
    with readonly_channel(mesh) as channel:
        admin = admin_stub(channel)
        for name in ("", "compute"):
            assert admin.ListClients(pb.ListClientsRequest(name=name)).clients
            assert admin.GetLimits(pb.GetLimitsRequest(name=name)).limits
            admin.GetLogSettings(pb.GetLogSettingsRequest(name=name))
            admin.GetServerInfo(pb.GetServerInfoRequest(name=name))
            for call, request in (
                    (admin.DisconnectClient,
                     pb.DisconnectClientRequest(name=name, client_id="1-1")),
                    (admin.SetLimit, pb.SetLimitRequest(name=name, limit="max_workers", value=2)),
                    (admin.SetLogSettings, pb.SetLogSettingsRequest(
                        name=name, level=pb.LOG_LEVEL_DEBUG)),
                    (admin.ReloadServer, pb.ReloadServerRequest(name=name))):
                denied = error_of(call, request)
                assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, denied.details()
                assert "server:write" in (denied.details() or "")
    denied_records = [record for method in ("DisconnectClient", "SetLimit", "SetLogSettings",
                                            "ReloadServer")
                      for record in audit_records(mesh, method)]
    assert len(denied_records) == 8
    assert {(r["identity"], r["code"], r["denied_permission"]) for r in denied_records} == {
        ("readonly", "PERMISSION_DENIED", "server:write")}


def test_only_the_admin_role_changes_a_process() -> None:
    policy = load_policy(None)
    for role, reads, changes in (("admin", True, True), ("operator", True, False),
                                 ("readonly", True, False)):
        identity = Identity(role, frozenset({role}))
        assert policy.allows(identity, "server:read", None) is reads
        assert policy.allows(identity, "server:getattr", None) is reads
        assert policy.allows(identity, "server:write", None) is changes


def test_lowering_max_event_watchers_refuses_the_next_watcher(mesh: Mesh) -> None:
    with mesh.channel() as channel:
        admin = admin_stub(channel)
        changed = admin.SetLimit(pb.SetLimitRequest(name="compute", limit="max_event_watchers",
                                                    value=1)).limit
        assert (changed.value, changed.settable) == (1, True)
        first = open_watch(channel)
        (limit,) = [limit for limit in admin.GetLimits(pb.GetLimitsRequest(name="compute")).limits
                    if limit.name == "max_event_watchers"]
        assert (limit.value, limit.in_use) == (1, 1)
        refused = error_of(next, open_watch(channel))
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(refused) == "TOO_MANY_WATCHERS"
        first.cancel()

        workers = admin.SetLimit(pb.SetLimitRequest(name="compute", limit="max_workers",
                                                    value=3)).limit
        assert (workers.value, workers.settable) == (3, True)
        compute_grpc.ComputeServiceStub(channel).ListDomains(compute_pb.ListDomainsRequest())
        for limit_name, value, code in (
                ("max_sessions", 33, grpc.StatusCode.FAILED_PRECONDITION),  # above start
                ("max_message_bytes", 8, grpc.StatusCode.FAILED_PRECONDITION),  # at start
                ("max_event_watchers", 0, grpc.StatusCode.INVALID_ARGUMENT),
                ("no_such_limit", 1, grpc.StatusCode.NOT_FOUND)):
            error = error_of(admin.SetLimit, pb.SetLimitRequest(name="compute", limit=limit_name,
                                                               value=value))
            assert error.code() == code, (limit_name, value, error.details())
    records = audit_records(mesh, "SetLimit")
    assert [(r["code"], r["objects"]) for r in records] == [
        ("OK", ["compute"]), ("OK", ["compute"]), ("FAILED_PRECONDITION", ["compute"]),
        ("FAILED_PRECONDITION", ["compute"]), ("INVALID_ARGUMENT", ["compute"]),
        ("NOT_FOUND", ["compute"])]


def test_lowering_the_gateway_s_calls_per_identity(mesh: Mesh) -> None:
    with mesh.channel() as channel, readonly_channel(mesh) as reader:
        admin_stub(channel).SetLimit(pb.SetLimitRequest(limit="max_client_requests", value=1))
        stream = open_watch(reader)  # the read-only identity's one call
        compute = compute_grpc.ComputeServiceStub(reader)
        refused = error_of(compute.ListDomains, compute_pb.ListDomainsRequest())
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stream.cancel()


def _lines_after(path: Path, offset: int) -> str:
    return path.read_text(errors="replace")[offset:]


def _probe(target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
    channel = (grpc.secure_channel(target, credentials) if credentials
               else grpc.insecure_channel(target))
    with channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())


def _wait_for(path: Path, offset: int, pattern: str) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = re.search(pattern, _lines_after(path, offset))
        if found:
            return found.group()
        time.sleep(0.1)
    raise AssertionError(f"no line matching {pattern!r} in {path}")


@pytest.mark.parametrize("name", ["compute", ""])
def test_a_logger_set_to_debug_shows_in_the_next_line(mesh: Mesh, name: str) -> None:
    """Health probes are logged at DEBUG by virtmesh.rpc: invisible at INFO, shown once
    that one logger is set to DEBUG, invisible again once its filter is removed."""
    process = mesh.compute if name else mesh.gateway
    log = process.log_path
    probe = ((f"unix:{mesh.state_dir / 'run' / 'compute.sock'}", None) if name
             else (mesh.target, mesh.credentials()))
    debug_probe = r"DEBUG virtmesh\.rpc: /grpc\.health\.v1\.Health/Check OK"
    with mesh.channel() as channel:
        admin = admin_stub(channel)
        before = len(log.read_text(errors="replace"))
        _probe(*probe)
        assert not re.search(debug_probe, _lines_after(log, before))

        settings = admin.SetLogSettings(pb.SetLogSettingsRequest(
            name=name, filters={"virtmesh.rpc": pb.LOG_LEVEL_DEBUG})).settings
        assert settings.filters["virtmesh.rpc"] == pb.LOG_LEVEL_DEBUG
        assert settings.level == pb.LOG_LEVEL_INFO
        _probe(*probe)
        _wait_for(log, before, debug_probe)
        assert admin.GetLogSettings(pb.GetLogSettingsRequest(name=name)).settings == settings

        admin.SetLogSettings(pb.SetLogSettingsRequest(
            name=name, filters={"virtmesh.rpc": pb.LOG_LEVEL_UNSPECIFIED}))
        after = len(log.read_text(errors="replace"))
        _probe(*probe)
        assert not admin.GetLogSettings(pb.GetLogSettingsRequest(name=name)).settings.filters
        _wait_for(log, after, r"INFO virtmesh\.rpc: /virtmesh\.admin\.v1\.AdminService/"
                              r"GetLogSettings OK")  # logged after the probe
        assert not re.search(debug_probe, _lines_after(log, after))
        bad = error_of(admin.SetLogSettings, pb.SetLogSettingsRequest(
            name=name, filters={"": pb.LOG_LEVEL_DEBUG}))
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r["code"] for r in audit_records(mesh, "SetLogSettings")] == [
        "OK", "OK", "INVALID_ARGUMENT"]


def test_server_info(mesh: Mesh, node_uri: str) -> None:
    with mesh.channel() as channel:
        admin = admin_stub(channel)
        gateway = admin.GetServerInfo(pb.GetServerInfoRequest())
        assert (gateway.name, gateway.pid) == ("gateway", mesh.gateway.popen.pid)  # type: ignore[union-attr]
        assert gateway.libvirt_state == pb.LIBVIRT_STATE_NONE and not gateway.libvirt_uri
        compute = admin.GetServerInfo(pb.GetServerInfoRequest(name="compute"))
        assert (compute.name, compute.pid) == ("compute", mesh.compute.popen.pid)  # type: ignore[union-attr]
        assert (compute.libvirt_uri, compute.libvirt_state) == (
            node_uri, pb.LIBVIRT_STATE_CONNECTED)
        for info in (gateway, compute):
            assert info.version and info.hostname and info.threads >= 1
            assert info.uptime.ToTimedelta().total_seconds() > 0
            assert info.start_time.ToSeconds() <= time.time()
        missing = error_of(admin.GetServerInfo, pb.GetServerInfoRequest(name="nope"))
        assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_reload(mesh: Mesh) -> None:
    with mesh.channel() as channel:
        admin = admin_stub(channel)
        reloaded = admin.ReloadServer(pb.ReloadServerRequest())
        assert (list(reloaded.reloaded), list(reloaded.failures)) == (
            ["tls", "identities", "policy"], [])
        assert not admin.ReloadServer(pb.ReloadServerRequest(name="compute")).reloaded
        (mesh.state_dir / "pki" / "server.key").write_text("not a key")
        kept = admin.ReloadServer(pb.ReloadServerRequest())
        assert [failure.what for failure in kept.failures] == ["tls"]
        assert "tls" not in kept.reloaded
    with mesh.channel() as fresh:  # the certificates in use stay in use
        admin_stub(fresh).GetServerInfo(pb.GetServerInfoRequest())
    assert [r["objects"] for r in audit_records(mesh, "ReloadServer")] == [
        ["gateway"], ["compute"], ["gateway"]]


def test_a_service_s_sockets(mesh: Mesh) -> None:
    """On its read-only socket a service answers the read RPCs only."""
    run = mesh.state_dir / "run"
    with grpc.insecure_channel(f"unix:{run / 'compute-ro.sock'}") as channel:
        admin = admin_stub(channel)
        assert admin.GetServerInfo(pb.GetServerInfoRequest()).name == "compute"
        denied = error_of(admin.SetLimit, pb.SetLimitRequest(limit="max_event_watchers",
                                                             value=1))
        assert reason_of(denied) == "READ_ONLY_SOCKET"
        other = error_of(admin.GetServerInfo, pb.GetServerInfoRequest(name="gateway"))
        assert other.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(f"unix:{run / 'compute.sock'}") as channel:
        admin = admin_stub(channel)
        limit = admin.SetLimit(pb.SetLimitRequest(limit="max_sessions", value=3)).limit
        assert (limit.value, limit.in_use) == (3, 0)


def test_the_registry_forgets_idle_clients_and_refusals_in_time() -> None:
    registry = ClientRegistry(keep_idle=0.2, refuse_for=0.2)
    ended: list[tuple[grpc.StatusCode, str]] = []
    with registry.call("peer-a", "ipv4:1.2.3.4:5", "/a/B", lambda *status: ended.append(status)
                       ) as handle:
        handle.identify("alice", "token")
        (client,) = registry.clients()
        assert (client.identity, client.methods) == ("alice", ("/a/B",))
        registry.disconnect(client.id, "bye")
    assert ended == [(grpc.StatusCode.UNAVAILABLE, "bye")]
    assert registry.refused("peer-a") and not registry.clients()
    with registry.call("peer-b", "ipv4:1.2.3.4:6", "/a/B", lambda *status: None):
        pass
    assert [client.peer for client in registry.clients()] == ["ipv4:1.2.3.4:6"]  # idle
    time.sleep(0.3)
    assert not registry.refused("peer-a") and not registry.clients()


def test_the_cli(mesh: Mesh, virtmesh: CliRun) -> None:
    """`virtmesh admin …` at the gateway, at a service behind it, and on a socket."""
    flags = ("--gateway", mesh.target, "--state-dir", str(mesh.state_dir))
    status, out, err = virtmesh(*flags, "admin", "info")
    assert status == 0, err
    assert re.search(r"^NAME:\s+gateway$", out, re.M)
    assert re.search(rf"^PID:\s+{mesh.gateway.popen.pid}$", out, re.M)  # type: ignore[union-attr]

    status, out, err = virtmesh(*flags, "admin", "clients", "--json")
    assert status == 0, err
    # this call's connection, and the idle one of `admin info`, until gRPC closes it
    listed = json.loads(out)["clients"]
    assert [(c["calls_in_flight"], c["methods"]) for c in listed] == [
        (0, []), (1, ["/virtmesh.admin.v1.AdminService/ListClients"])]
    assert {c["identity"] for c in listed} == {"O=virtmesh,CN=admin"}

    status, out, err = virtmesh(*flags, "admin", "set-limit", "--service", "compute",
                                "max_event_watchers", "5")
    assert status == 0, err
    assert re.search(r"^max_event_watchers\s+5\s+0\s+yes", out, re.M)
    status, out, err = virtmesh(*flags, "admin", "limits", "--service", "compute")
    assert re.search(r"^max_event_watchers\s+5\s", out, re.M), out

    status, out, err = virtmesh(*flags, "admin", "set-log", "--level", "warning",
                                "--filter", "gateway.authn=debug")
    assert status == 0, err
    assert re.search(r"^\(level\)\s+warning$", out, re.M)
    assert re.search(r"^gateway\.authn\s+debug$", out, re.M)

    status, out, err = virtmesh(*flags, "admin", "reload", "--json")
    assert json.loads(out)["reloaded"] == ["tls", "identities", "policy"]

    status, out, err = virtmesh(*flags, "admin", "disconnect", "1-1")
    assert status == 1 and "NOT_FOUND" in err

    readonly = ("--gateway", mesh.token_target, "--ca", str(mesh.state_dir / "pki" / "ca.crt"),
                "--token-file", str(mesh.state_dir / "tokens" / "readonly.token"))
    status, out, err = virtmesh(*readonly, "admin", "set-limit", "max_client_requests", "3")
    assert status == 1 and "PERMISSION_DENIED" in err and "server:write" in err

    run = str(mesh.state_dir / "run")
    status, out, err = virtmesh("--socket", run, "admin", "info", "--service", "compute")
    assert status == 0 and re.search(r"^LIBVIRT_STATE:\s+connected$", out, re.M), err
    status, out, err = virtmesh("--socket", run, "admin", "info", "--service", "gateway")
    assert status == 2 and "use --gateway" in err


def test_a_call_disconnected_while_it_writes_still_gets_its_status(tmp_path: Path) -> None:
    """A stream that writes all the time through CallGuard, on a real grpc.aio server, is
    disconnected at random moments: each time the client gets UNAVAILABLE at once (a
    bare task cancellation, landing inside grpc.aio's write, left most of them hanging)."""
    access = Access(Authenticator(tmp_path / "none.toml"), Limiter(1), Authorizer.from_file(None),
                    AuditLog(tmp_path / "audit.jsonl"), ClientRegistry())
    watch = health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Watch"]

    class Flooding(health_pb2_grpc.HealthServicer):
        async def Watch(self, request: Any, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[health_pb2.HealthCheckResponse]:  # type: ignore[override]
            async with CallGuard(access, watch, "/grpc.health.v1.Health/Watch",
                                 context).recorded():
                while True:
                    yield health_pb2.HealthCheckResponse(status=1)

    async def run() -> list[str]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(Flooding(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(30):
                call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
                await call.read()
                await asyncio.sleep(random.random() / 100)
                (client,) = access.clients.clients()
                access.clients.disconnect(client.id, "bye")
                try:
                    async with asyncio.timeout(3):
                        while await call.read() != grpc.aio.EOF:
                            pass
                    codes.append("ended without a status")
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code().name)
                except TimeoutError:
                    codes.append("hung")
                    call.cancel()
        await server.stop(0)
        return codes

    assert set(asyncio.run(run())) == {"UNAVAILABLE"}
