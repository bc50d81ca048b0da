"""/metrics of a compute service and of a gateway, scraped over HTTP as Prometheus does.

Counters are compared before and after the calls a test makes (the in-process
service shares the test process's registry with every earlier test), with their
exact label sets.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.daemon import Daemon
from tests.conftest import Mesh, domain_xml, running_mesh, running_service
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)

COMPUTE = "virtmesh.compute.v1.ComputeService"
PROMTOOL = shutil.which("promtool")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def scrape(address: str) -> Samples:
    """Every sample of the endpoint, keyed by name and its exact label set."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(scrape_text(address))
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(method: str, grpc_type: str = "unary", service: str = COMPUTE) -> dict[str, str]:
    return {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.05)
    return result


def logged_address(log: Callable[[], str]) -> str:
    """The metrics address a process logged (it was asked for port 0)."""
    found = wait_for(lambda: re.search(r"metrics on http://(\S+)/metrics", log()),
                     "the metrics address in the log")
    return str(found.group(1))


def assert_bounded_labels(samples: Samples) -> None:
    """No label that names a caller or a call: identities, peers, request ids."""
    for name, labels in samples:
        for label, label_value in labels:
            assert label not in ("peer", "identity", "request_id", "user"), (name, label)
            assert not re.fullmatch(r"[0-9a-f]{32}", label_value), (name, label, label_value)
            assert not re.match(r"(unix|ipv4|ipv6):", label_value), (name, label, label_value)


def make_calls(stub: pb_grpc.ComputeServiceStub, define: str) -> None:
    """2 OK and 3 NOT_FOUND GetDomain calls, and an event stream the client cancels
    after one event (defining ``define``)."""
    for _ in range(2):
        stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=10)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetDomain(pb.GetDomainRequest(name="nope"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=[define]), timeout=30)
    stream.initial_metadata()  # subscribed
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml(define)), timeout=10)
    assert next(stream).name == define
    stream.cancel()


def assert_rpc_counted(before: Samples, after: Callable[[], Samples]) -> Samples:
    """What make_calls did, as exact counter increments."""
    cancelled = rpc("WatchDomainEvents", "server_stream") | {"grpc_code": "CANCELLED"}

    def settled() -> Samples | None:
        samples = after()
        done = value(samples, "grpc_server_handled_total", **cancelled) > \
            value(before, "grpc_server_handled_total", **cancelled)
        return samples if done else None

    now = wait_for(settled, "the cancelled stream to be counted")

    def delta(name: str, **labels: str) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    get = rpc("GetDomain")
    assert delta("grpc_server_started_total", **get) == 5
    assert delta("grpc_server_handled_total", **get, grpc_code="OK") == 2
    assert delta("grpc_server_handled_total", **get, grpc_code="NOT_FOUND") == 3
    assert delta("grpc_server_handling_seconds_count", **get) == 5
    assert delta("grpc_server_msg_received_total", **get) == 5
    assert delta("grpc_server_msg_sent_total", **get) == 2
    watch = rpc("WatchDomainEvents", "server_stream")
    assert delta("grpc_server_started_total", **watch) == 1
    assert delta("grpc_server_handled_total", **watch, grpc_code="CANCELLED") == 1
    assert delta("grpc_server_msg_sent_total", **watch) >= 1
    [build] = [(dict(labels), v) for (name, labels), v in now.items()
               if name == "virtmesh_build_info"]
    assert build[1] == 1 and set(build[0]) == {"version", "libvirt_version", "python_version"}
    assert all(build[0].values()), build
    assert_bounded_labels(now)
    return now


@pytest.fixture
def metered(tmp_path: Path, node_uri: str) -> Iterator[Daemon]:
    with running_service(tmp_path, node_uri, grace_period=0.5,
                         metrics_listen="127.0.0.1:0") as daemon:
        yield daemon


@pytest.fixture
def metered_mesh(tmp_path: Path, node_uri: str, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Mesh]:
    """compute and gateway processes, each with metrics on a port of its own choice."""
    monkeypatch.setenv("VIRTMESH_METRICS_LISTEN", "127.0.0.1:0")
    with running_mesh(tmp_path, node_uri) as mesh:
        yield mesh


def test_service_metrics(metered: Daemon) -> None:
    assert metered.metrics is not None
    address = metered.metrics.address
    before = scrape(address)
    with grpc.insecure_channel(f"unix:{metered.socket_path}") as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        make_calls(stub, "metered")
        now = assert_rpc_counted(before, lambda: scrape(address))
        assert value(now, "virtmesh_libvirt_connected") == 1
        assert value(now, "virtmesh_libvirt_reconnects_total") == 0
        assert value(now, "virtmesh_libvirt_call_seconds_count", api="virConnectOpen") >= 1

        watchers = value(now, "virtmesh_event_subscribers")
        stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(), timeout=30)
        stream.initial_metadata()  # subscribed
        assert value(scrape(address), "virtmesh_event_subscribers") == watchers + 1
        stream.cancel()
        wait_for(lambda: value(scrape(address), "virtmesh_event_subscribers") == watchers,
                 "the cancelled stream to unsubscribe")


def test_gateway_and_service_metrics(metered_mesh: Mesh) -> None:
    gateway = logged_address(metered_mesh.gateway.log)
    compute = logged_address(metered_mesh.compute.log)
    before = {address: scrape(address) for address in (gateway, compute)}
    with metered_mesh.channel() as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        make_calls(stub, "through-gw")
        with pytest.raises(grpc.RpcError):  # a path of the caller's choice: not a label value
            unknown: Any = channel.unary_unary("/virtmesh.compute.v1.ComputeService/Nope-0123")
            unknown(b"", timeout=10)
        for address in (gateway, compute):
            assert_rpc_counted(before[address], functools.partial(scrape, address))
        now = scrape(gateway)
        assert value(now, "virtmesh_gateway_upstream_requests_total", upstream="compute",
                     grpc_code="NOT_FOUND") == 3
        assert value(now, "virtmesh_gateway_upstream_requests_total", upstream="compute",
                     grpc_code="OK") >= 3  # GetDomain x2, DefineDomain
        assert value(now, "virtmesh_gateway_upstream_seconds_count", upstream="compute") >= 7
        assert value(now, "grpc_server_handled_total", grpc_type="bidi_stream",
                     grpc_service="unknown", grpc_method="unknown",
                     grpc_code="UNIMPLEMENTED") == 1
        assert not any(name.startswith("virtmesh_libvirt") for name, _ in now)
        assert value(scrape(compute), "virtmesh_libvirt_connected") == 1

        # Two open streams on one channel are one client connection; none once closed.
        assert value(now, "virtmesh_gateway_client_connections") == 0
        streams = [stub.WatchDomainEvents(pb.WatchDomainEventsRequest(), timeout=30)
                   for _ in range(2)]
        for stream in streams:
            stream.initial_metadata()
        assert value(scrape(gateway), "virtmesh_gateway_client_connections") == 1
        for stream in streams:
            stream.cancel()
        wait_for(lambda: value(scrape(gateway), "virtmesh_gateway_client_connections") == 0,
                 "the streams to end")

        metered_mesh.compute.stop()
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    now = scrape(gateway)
    assert value(now, "virtmesh_gateway_upstream_unavailable_total", upstream="compute") == 1
    assert value(now, "virtmesh_gateway_upstream_requests_total", upstream="compute",
                 grpc_code="UNAVAILABLE") == 1


def promtool_check(text: str) -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package "
                    "prometheus; tools/install-deps.sh installs it for make test)")
def test_promtool_accepts_every_endpoint(metered_mesh: Mesh, tmp_path: Path,
                                         node_uri: str) -> None:
    with metered_mesh.channel() as channel:
        make_calls(pb_grpc.ComputeServiceStub(channel), "linted")
    for process in (metered_mesh.gateway, metered_mesh.compute):
        promtool_check(scrape_text(logged_address(process.log)))
    with running_service(tmp_path / "inproc", node_uri, grace_period=0.5,
                         metrics_listen="127.0.0.1:0") as daemon:
        assert daemon.metrics is not None
        promtool_check(scrape_text(daemon.metrics.address))
