"""virtmesh.gateway.v1.GatewayService on a real gateway process in front of real compute
and storage services (libvirt's test driver, one node file with domains, a pool and its
volumes); every other service behind the gateway is not running.

Three callers: the development admin certificate, "alice" (a token; may see only the
domain web-1, the pool images and its volumes web-*) and "bob" (a token; no grants).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.api import listing_of
from gateway.authn import new_token, token_digest
from gateway.pki import ensure_dev_pki
from gateway.routes import driver_of, proxied_services
from services.common.shared import STARTED_KEY
from services.common.version import VERSION
from services.supervisor import client_credentials, wait_serving
from tests.conftest import (
    NODE_XML,
    Process,
    domain_xml,
    free_port,
    gateway_process,
    service_process,
)
from virtmesh.compute.v1 import compute_service_pb2 as compute_pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as compute_grpc
from virtmesh.gateway.v1 import gateway_service_pb2 as pb
from virtmesh.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from virtmesh_client.cli import main

pytestmark = pytest.mark.timeout(90)

FANOUT_TIMEOUT = 2.0
RUNNING = {"compute", "storage"}
POOL_XML = """<pool type='dir'><name>images</name><target><path>/images</path></target>
  <volume type='file'><name>web-disk.img</name><capacity unit='KiB'>1024</capacity>
    <target><path>/images/web-disk.img</path></target></volume>
  <volume type='file'><name>db-disk.img</name><capacity unit='KiB'>1024</capacity>
    <target><path>/images/db-disk.img</path></target></volume>
</pool>
"""
DRIVERS = sorted(driver_of(service.full_name) or "" for service in proxied_services())
LISTINGS = [listing for service in proxied_services() for method in service.methods
            if (listing := listing_of(driver_of(service.full_name) or "", method))]


@dataclasses.dataclass
class ApiMesh:
    state_dir: Path
    port: int
    services: list[Process]
    gateway: Process
    tokens: dict[str, str]

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(f"127.0.0.1:{self.port}",
                                   client_credentials(self.state_dir / "pki"))

    def as_caller(self, who: str) -> tuple[tuple[str, str], ...]:
        """Call metadata that makes ``who`` the caller (admin: the certificate alone)."""
        return () if who == "admin" else (("authorization", f"Bearer {self.tokens[who]}"),)

    def compute_stub(self) -> Any:
        return contextlib.closing(grpc.insecure_channel(
            f"unix:{self.state_dir / 'run' / 'compute.sock'}"))


def write_access_files(state_dir: Path, tokens: dict[str, str]) -> None:
    gateway_dir = state_dir / "gateway"
    gateway_dir.mkdir(parents=True, exist_ok=True)
    entries = "".join(f'[[token]]\nname = "{name}"\nsha256 = "{token_digest(token)}"\n'
                      for name, token in tokens.items())
    (gateway_dir / "identities.toml").write_text(
        'tls_allowed_dn_list = ["O=virtmesh,CN=admin"]\n'
        '[tls_dn_groups]\n"O=virtmesh,CN=admin" = ["admin"]\n' + entries)
    (gateway_dir / "policy.toml").write_text(
        '[[grants]]\nidentities = ["alice"]\n'
        'permissions = ["connect:getattr", "connect:read", "connect:search_domains",'
        ' "domain:getattr", "connect:search_storage_pools", "storage_pool:getattr",'
        ' "storage_pool:search_storage_vols", "storage_vol:getattr"]\n'
        'objects = ["web-1", "images", "images/web-*"]\n')


#: the gateway's node_name (Kubernetes passes the pod's spec.nodeName)
NODE_NAME = "kvm-node-7"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiMesh]:
    state_dir = tmp_path_factory.mktemp("api")
    (state_dir / "node.xml").write_text(NODE_XML.replace("</node>", POOL_XML + "</node>"))
    ensure_dev_pki(state_dir / "pki")
    tokens = {"alice": new_token(), "bob": new_token()}
    write_access_files(state_dir, tokens)
    # DEBUG: successful reads are logged at DEBUG only, and a test reads who read
    services = [service_process(state_dir, name, "--uri", f"test://{state_dir / 'node.xml'}",
                                "--log-level", "DEBUG")
                for name in sorted(RUNNING)]
    port = free_port()
    gateway = gateway_process(state_dir, port, "--fanout-timeout", str(FANOUT_TIMEOUT),
                              "--node-name", NODE_NAME)
    running = ApiMesh(state_dir, port, services, gateway, tokens)
    try:
        for service in (*services, gateway):
            service.start()
        for name in RUNNING:
            wait_serving(f"unix:{state_dir / 'run' / f'{name}.sock'}", "", 60)
        wait_serving(f"127.0.0.1:{port}", "", 30, client_credentials(state_dir / "pki"))
        with running.compute_stub() as channel:
            stub = compute_grpc.ComputeServiceStub(channel)
            for name in ("web-1", "web-2", "db-1"):
                stub.DefineDomain(compute_pb.DefineDomainRequest(xml=domain_xml(name)),
                                  timeout=10)
        yield running
    finally:
        for process in (gateway, *services):
            if process.popen is not None:
                process.stop(60)


@pytest.fixture
def api(mesh: ApiMesh) -> Iterator[pb_grpc.GatewayServiceStub]:
    with mesh.channel() as channel:
        yield pb_grpc.GatewayServiceStub(channel)


def failure(call: Any, request: Any, **kwargs: Any) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30, **kwargs)
    return caught.value


def health_of(api: pb_grpc.GatewayServiceStub, driver: str) -> int:
    services = api.ListServices(pb.ListServicesRequest(), timeout=30).services
    return next(service.health for service in services if service.name == driver)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def down_drivers() -> set[str]:
    """Drivers with a listing that are not running in this mesh."""
    return {listing.driver for listing in LISTINGS} - RUNNING


def compute_log(mesh: ApiMesh) -> str:
    return mesh.services[sorted(RUNNING).index("compute")].log()


# -- ListServices -------------------------------------------------------------------


def test_list_services_shows_each_service_with_health_version_and_uptime(
        mesh: ApiMesh, api: pb_grpc.GatewayServiceStub) -> None:
    reply = api.ListServices(pb.ListServicesRequest(), timeout=30)
    assert [service.name for service in reply.services] == DRIVERS
    assert reply.gateway_version == VERSION and reply.gateway_start_time.seconds > 0
    assert reply.node_name == NODE_NAME  # which node of a fleet answered
    by_name = {service.name: service for service in reply.services}
    compute = by_name["compute"]
    assert compute.health == by_name["storage"].health == pb.SERVICE_HEALTH_SERVING
    assert compute.grpc_service == "virtmesh.compute.v1.ComputeService"
    assert compute.version == VERSION
    assert compute.socket == str(mesh.state_dir / "run" / "compute.sock")
    # The start time is the one the service itself announces on its health check.
    with mesh.compute_stub() as channel:
        _, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
            health_pb2.HealthCheckRequest(), timeout=10)
    started = datetime.datetime.fromisoformat(dict(call.initial_metadata())[STARTED_KEY])
    assert compute.start_time.ToDatetime(datetime.UTC) == started
    assert compute.uptime.ToTimedelta() >= datetime.timedelta()
    assert compute.HasField("uptime") and not compute.message
    for name in set(DRIVERS) - RUNNING:
        other = by_name[name]
        assert other.health == pb.SERVICE_HEALTH_UNREACHABLE, other
        assert other.message.startswith("UNAVAILABLE: "), other
        assert not other.version and not other.HasField("start_time")
        assert other.socket == str(mesh.state_dir / "run" / f"{name}.sock")


# -- GetHostSummary -------------------------------------------------------------------


def test_host_summary_is_partial_when_services_are_down(
        mesh: ApiMesh, api: pb_grpc.GatewayServiceStub) -> None:
    reply = api.GetHostSummary(pb.GetHostSummaryRequest(), timeout=30)
    with mesh.compute_stub() as channel:
        stub = compute_grpc.ComputeServiceStub(channel)
        node = stub.GetNodeInfo(compute_pb.GetNodeInfoRequest(), timeout=10)
        domains = stub.ListDomains(compute_pb.ListDomainsRequest(), timeout=10).domains
    assert reply.hostname
    assert reply.node_name == NODE_NAME
    assert (reply.node.cpus, reply.node.memory_kib, reply.node.model) == \
        (node.cpus, node.memory_kib, node.model)
    counts = {(c.service, c.object_type): c.count for c in reply.counts}
    assert counts == {("compute", "domain"): len(domains), ("storage", "storage_pool"): 1,
                      ("storage", "storage_vol"): 2}
    assert len(domains) == 4
    assert {f.service for f in reply.failures} == down_drivers()
    for failed in reply.failures:
        assert failed.code == "UNAVAILABLE" and failed.method.startswith("List"), failed
        assert failed.message


class Hanging(grpc.GenericRpcHandler):
    """Answers one List method only once released (or after the hang guard)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.release = threading.Event()
        self.called = threading.Event()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != self.path:  # type: ignore[attr-defined]
            return None

        def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.called.set()
            self.release.wait(60)
            return b""

        return grpc.unary_unary_rpc_method_handler(hang)


def test_host_summary_gives_a_slow_service_its_deadline_only(
        mesh: ApiMesh, api: pb_grpc.GatewayServiceStub) -> None:
    """A service that answers its health check but hangs on its listing."""
    slow = next(listing for listing in LISTINGS
                if listing.driver not in RUNNING and not listing.parent_type)
    hanging = Hanging(slow.path)
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[hanging])
    health_servicer = health.HealthServicer()
    health_servicer.set(slow.method.containing_service.full_name,
                        health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    socket_path = mesh.state_dir / "run" / f"{slow.driver}.sock"
    assert server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    try:
        # The gateway's channel retries a failed socket within a second: wait for it.
        assert wait_until(lambda: health_of(api, slow.driver) == pb.SERVICE_HEALTH_SERVING, 20)
        reply = api.GetHostSummary(pb.GetHostSummaryRequest(), timeout=30)
    finally:
        hanging.release.set()
        server.stop(None).wait()
        socket_path.unlink(missing_ok=True)
    assert hanging.called.is_set()
    failed = [f for f in reply.failures if f.service == slow.driver]
    assert [(f.method, f.code) for f in failed if f.method == slow.method.name] == \
        [(slow.method.name, "DEADLINE_EXCEEDED")]
    counts = {(c.service, c.object_type): c.count for c in reply.counts}
    assert counts[("compute", "domain")] == 4 and reply.node.cpus > 0


# -- Search ---------------------------------------------------------------------------


def test_search_finds_domains_by_glob_and_nothing_else(
        mesh: ApiMesh, api: pb_grpc.GatewayServiceStub) -> None:
    reply = api.Search(pb.SearchRequest(pattern="web-*"), timeout=30)
    with mesh.compute_stub() as channel:
        stub = compute_grpc.ComputeServiceStub(channel)
        uuids = {name: stub.GetDomain(compute_pb.GetDomainRequest(name=name),
                                      timeout=10).domain.uuid for name in ("web-1", "web-2")}
    assert [(r.service, r.object_type, r.name, r.uuid, r.parent) for r in reply.results] == [
        ("compute", "domain", "web-1", uuids["web-1"], ""),
        ("compute", "domain", "web-2", uuids["web-2"], ""),
        ("storage", "storage_vol", "web-disk.img", "", "images")]
    assert not reply.next_page_token
    assert {f.service for f in reply.failures} == down_drivers()
    assert [r.name for r in api.Search(pb.SearchRequest(pattern="?b-1"),
                                       timeout=30).results] == ["db-1"]
    assert not api.Search(pb.SearchRequest(pattern="web"), timeout=30).results


def test_search_finds_child_objects_with_their_parent(api: pb_grpc.GatewayServiceStub) -> None:
    reply = api.Search(pb.SearchRequest(pattern="*disk*"), timeout=30)
    assert [(r.service, r.object_type, r.parent, r.name) for r in reply.results] == [
        ("storage", "storage_vol", "images", "db-disk.img"),
        ("storage", "storage_vol", "images", "web-disk.img")]
    pools = api.Search(pb.SearchRequest(pattern="images"), timeout=30).results
    assert [(r.object_type, r.name, len(r.uuid)) for r in pools] == \
        [("storage_pool", "images", 36)]


def test_listings_are_found_from_the_descriptors() -> None:
    by_method = {listing.method.full_name: listing for listing in LISTINGS}
    domains = by_method["virtmesh.compute.v1.ComputeService.ListDomains"]
    assert (domains.object_type, domains.items, domains.parent_type) == ("domain", "domains", "")
    # A list needing a parent is a listing only when its permission lists a type.
    assert "virtmesh.compute.v1.ComputeService.ListSnapshots" not in by_method
    for child in (listing for listing in LISTINGS if listing.parent_type):
        assert any(parent.driver == child.driver and parent.object_type == child.parent_type
                   and not parent.parent_type for parent in LISTINGS), child
        assert child.method.input_type.fields_by_name[child.parent_field].type == \
            FieldDescriptor.TYPE_STRING


def test_search_pages_and_refuses_bad_input(api: pb_grpc.GatewayServiceStub) -> None:
    everything = api.Search(pb.SearchRequest(pattern="*-*"), timeout=30)
    assert [r.name for r in everything.results] == \
        ["db-1", "web-1", "web-2", "db-disk.img", "web-disk.img"]
    pages, token = [], ""
    while True:
        page = api.Search(pb.SearchRequest(pattern="*-*", page_size=2, page_token=token),
                          timeout=30)
        pages.append([r.name for r in page.results])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["db-1", "web-1"], ["web-2", "db-disk.img"], ["web-disk.img"]]
    token = api.Search(pb.SearchRequest(pattern="*-*", page_size=2), timeout=30).next_page_token
    for request in (pb.SearchRequest(),
                    pb.SearchRequest(pattern="*" * 257),  # bounded regex compile
                    pb.SearchRequest(pattern="*", page_size=-1),
                    pb.SearchRequest(pattern="*", page_token="garbage"),
                    pb.SearchRequest(pattern="web-*", page_token=token)):
        error = failure(api.Search, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, error)


def test_malformed_requests_are_invalid_argument(mesh: ApiMesh) -> None:
    """Bytes that do not decode, invalid UTF-8 and a NUL in a string field: the
    gateway's own API answers INVALID_ARGUMENT (grpc.aio alone says UNKNOWN), and so
    does a service behind it for a proxied call."""
    payloads = {"truncated": b"\x0a\x7f", "invalid UTF-8": b"\x0a\x02\xff\xfe",
                "NUL": b"\x0a\x03a\x00b"}
    paths = ["/virtmesh.gateway.v1.GatewayService/Search",
             "/virtmesh.compute.v1.ComputeService/GetDomain"]
    with mesh.channel() as channel:
        for path in paths:
            for case, payload in payloads.items():
                with pytest.raises(grpc.RpcError) as caught:
                    raw: Any = channel.unary_unary(path)  # bytes as they are
                    raw(payload, timeout=30)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, \
                    (path, case, caught.value.details())
        # and the gateway serves on
        api = pb_grpc.GatewayServiceStub(channel)
        assert api.Search(pb.SearchRequest(pattern="web-*"), timeout=30).results


# -- who may see what -------------------------------------------------------------------


def test_a_restricted_caller_sees_only_its_objects(
        mesh: ApiMesh, api: pb_grpc.GatewayServiceStub) -> None:
    alice = mesh.as_caller("alice")
    found = api.Search(pb.SearchRequest(pattern="*"), timeout=30, metadata=alice)
    assert [(r.object_type, r.name) for r in found.results] == [
        ("domain", "web-1"), ("storage_pool", "images"), ("storage_vol", "web-disk.img")]
    # Types alice may not list are not even asked for: no failures about them.
    assert not found.failures
    summary = api.GetHostSummary(pb.GetHostSummaryRequest(), timeout=30, metadata=alice)
    assert [(c.service, c.object_type, c.count) for c in summary.counts] == [
        ("compute", "domain", 1), ("storage", "storage_pool", 1), ("storage", "storage_vol", 1)]
    assert summary.node.cpus > 0 and not summary.failures
    # The service's log names the caller the gateway acted for.
    log = compute_log(mesh)
    assert any("ComputeService/ListDomains OK" in line and line.split(" ms ")[1]
               .startswith("by alice") for line in log.splitlines()), log[-2000:]


def test_callers_without_permission_or_identity_are_refused(
        mesh: ApiMesh, api: pb_grpc.GatewayServiceStub) -> None:
    bob = mesh.as_caller("bob")
    for method, request in ((api.ListServices, pb.ListServicesRequest()),
                            (api.GetHostSummary, pb.GetHostSummaryRequest()),
                            (api.Search, pb.SearchRequest(pattern="*"))):
        error = failure(method, request, metadata=bob)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
        assert "'bob' lacks permission connect:" in error.details()
        error = failure(method, request, metadata=(("authorization", "Bearer not-a-token"),))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error


# -- the command line ------------------------------------------------------------------


def test_cli_services_summary_and_search(mesh: ApiMesh, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    flags = ["--gateway", f"127.0.0.1:{mesh.port}", "--state-dir", str(mesh.state_dir)]
    assert main([*flags, "services"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert sorted(rows) == DRIVERS
    assert rows["compute"][1:3] == ["serving", VERSION]
    assert rows[next(iter(set(DRIVERS) - RUNNING))][1:3] == ["unreachable", "-"]

    assert main([*flags, "host-summary"]) == 0
    captured = capsys.readouterr()
    assert "compute  domain        4" in captured.out and "CPUs:" in captured.out
    assert any(line.split() == ["Node:", NODE_NAME] for line in captured.out.splitlines())
    assert {line.split()[2] for line in captured.err.splitlines()} == down_drivers()

    token_file = tmp_path / "alice.token"
    token_file.write_text(mesh.tokens["alice"])
    # the token on top of the admin certificate (mutual TLS): the token names the caller
    pki = mesh.state_dir / "pki"
    assert main([*flags, "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"),
                 "--token-file", str(token_file), "--json", "search", "*"]) == 0
    found = json.loads(capsys.readouterr().out)["results"]
    assert [(r["object_type"], r["name"]) for r in found] == [
        ("domain", "web-1"), ("storage_pool", "images"), ("storage_vol", "web-disk.img")]
