"""The gateway as a real process in front of real backends, over mTLS.

Two kinds of backend sit behind the gateway here: the compute service on
libvirt's test driver (``running_mesh``), and a small recording gRPC server that
implements ``ComputeService`` on ``<dir>/compute.sock`` and reports the deadline,
metadata and cancellation it saw, so that what the gateway propagates can be
checked from the backend's side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.protobuf import any_pb2, descriptor_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from gateway import pki
from services.supervisor import client_credentials, wait_serving
from tests.conftest import (
    NODE_XML,
    Mesh,
    Process,
    domain_xml,
    free_port,
    gateway_process,
    running_mesh,
)
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)

COMPUTE_SERVICE = "virtmesh.compute.v1.ComputeService"
DETAILS_KEY = "grpc-status-details-bin"
Status = health_pb2.HealthCheckResponse


class Failed(Protocol):
    """What a failed call raises: an RpcError that is also a grpc.Call."""

    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str: ...
    def initial_metadata(self) -> Any: ...
    def trailing_metadata(self) -> Any: ...


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Failed:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return cast(Failed, caught.value)


def as_dict(metadata: Any) -> dict[str, str | bytes]:
    return {key: value for key, value in metadata or ()}


def status_details(error: Failed) -> str | bytes | None:
    return as_dict(error.trailing_metadata()).get(DETAILS_KEY)


def error_info(error: Failed) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, "no google.rpc.Status in the trailers"
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info)
    return info


def without_clock(reply: pb.ListDomainsResponse) -> bytes:
    """The reply's bytes without the test driver's ever-growing CPU time."""
    copy = pb.ListDomainsResponse()
    copy.CopyFrom(reply)
    for domain in copy.domains:
        domain.ClearField("cpu_time_ns")
    return copy.SerializeToString()


def within_deadline(backend_remaining: float | None, client_timeout: float) -> bool:
    """Did the backend get a deadline, no later than the client's?

    gRPC rounds a timeout up to its wire encoding's granularity on each hop (1 ms
    under 1 s, 10 ms under 10 s, 100 ms under 100 s), hence the 1 % + 1 ms slack.
    """
    return backend_remaining is not None and \
        0 < backend_remaining <= client_timeout * 1.01 + 0.001


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def write_node(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.xml").write_text(NODE_XML)
    return f"test://{directory / 'node.xml'}"


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """compute (test driver) + gateway, shared by the tests that do not stop them."""
    state_dir = tmp_path_factory.mktemp("mesh")
    with running_mesh(state_dir, write_node(state_dir / "node")) as mesh:
        yield mesh


@pytest.fixture
def gw(shared_mesh: Mesh) -> Iterator[grpc.Channel]:
    with shared_mesh.channel() as channel:
        yield channel


@pytest.fixture
def direct(shared_mesh: Mesh) -> Iterator[grpc.Channel]:
    """The same compute service, straight on its UNIX socket."""
    with grpc.insecure_channel(f"unix:{shared_mesh.state_dir / 'run' / 'compute.sock'}") \
            as channel:
        yield channel


# -- a backend that records what reached it ---------------------------------------


@dataclasses.dataclass
class Seen:
    metadata: dict[str, Any]
    time_remaining: float | None
    #: set when the call ends for the backend (completion, deadline or cancel)
    ended: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: a slow call: had it ended (deadline, cancel) before the handler was done?
    ended_while_busy: bool | None = None


def _custom_status() -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="CUSTOM_REASON", domain="backend.test",
                                          metadata={"k": "v", "ünï": "cödé"}))
    return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION,
                             message="custom failure from the backend", details=[info])


#: what the recording backend's GetDomain("fail...") ends with
CUSTOM_STATUS = _custom_status()


@dataclasses.dataclass(frozen=True)
class AbortStatus(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class RecordingCompute(pb_grpc.ComputeServiceServicer):
    """GetDomain's behaviour is chosen by the requested name."""

    def __init__(self) -> None:
        self.seen: dict[str, Seen] = {}

    def _record(self, key: str, context: grpc.ServicerContext) -> Seen:
        seen = Seen(dict(context.invocation_metadata()), context.time_remaining())
        context.add_callback(seen.ended.set)
        self.seen[key] = seen
        return seen

    def GetDomain(self, request: pb.GetDomainRequest,
                  context: grpc.ServicerContext) -> pb.GetDomainResponse:
        seen = self._record(request.name, context)
        if request.name.startswith("slow"):
            time.sleep(2)
            seen.ended_while_busy = seen.ended.is_set()
        elif request.name.startswith("meta"):
            context.send_initial_metadata((("x-backend-initial", "hello"),))
            context.set_trailing_metadata((("x-backend-trailer", "bye"),
                                           ("x-backend-trailer-bin", b"\x00\xffraw")))
        elif request.name.startswith("fail"):
            context.send_initial_metadata((("x-backend-initial", "failing"),))
            status = rpc_status.to_status(CUSTOM_STATUS)
            context.abort_with_status(AbortStatus(  # abort_with_status replaces the trailers
                status.code, status.details,
                (*status.trailing_metadata, ("x-backend-trailer", "failed"))))
        return pb.GetDomainResponse(domain=pb.Domain(name=request.name, vcpus=3))

    def WatchDomainEvents(self, request: pb.WatchDomainEventsRequest,
                          context: grpc.ServicerContext
                          ) -> Iterator[pb.WatchDomainEventsResponse]:
        seen = self._record("watch:" + ",".join(request.names), context)
        context.send_initial_metadata(())
        deadline = time.monotonic() + 30
        count = 0
        while context.is_active() and not seen.ended.is_set() and time.monotonic() < deadline:
            count += 1
            yield pb.WatchDomainEventsResponse(name=f"tick-{count}")
            time.sleep(0.05)


@dataclasses.dataclass
class FakeMesh:
    backend: RecordingCompute
    socket_dir: Path
    target: str
    credentials: grpc.ChannelCredentials


@contextlib.contextmanager
def recording_backend(socket_dir: Path) -> Iterator[RecordingCompute]:
    servicer = RecordingCompute()  # type: ignore[abstract]  # only what the tests call
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_ComputeServiceServicer_to_server(servicer, server)
    socket_dir.mkdir(parents=True, exist_ok=True)
    assert server.add_insecure_port(f"unix:{socket_dir / 'compute.sock'}")
    server.start()
    try:
        yield servicer
    finally:
        server.stop(0).wait(5)


@contextlib.contextmanager
def running_gateway(state_dir: Path, *args: str) -> Iterator[tuple[Process, str]]:
    pki.ensure_dev_pki(state_dir / "pki")
    port = free_port()
    gateway = gateway_process(state_dir, port, *args).start()
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, "", 30, client_credentials(state_dir / "pki"))
        yield gateway, target
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeMesh]:
    root = tmp_path_factory.mktemp("fake")
    with recording_backend(root / "sockets") as backend, \
            running_gateway(root / "state", "--socket-dir", str(root / "sockets")) \
            as (_, target):
        yield FakeMesh(backend, root / "sockets", target,
                       client_credentials(root / "state" / "pki"))


@pytest.fixture
def fake_stub(fake: FakeMesh) -> Iterator[pb_grpc.ComputeServiceStub]:
    with grpc.secure_channel(fake.target, fake.credentials) as channel:
        yield pb_grpc.ComputeServiceStub(channel)


# -- forwarding to the compute service ---------------------------------------------


def test_unary_calls_are_forwarded(gw: grpc.Channel, direct: grpc.Channel) -> None:
    stub, local = pb_grpc.ComputeServiceStub(gw), pb_grpc.ComputeServiceStub(direct)
    listed = stub.ListDomains(pb.ListDomainsRequest(), timeout=10)
    assert "alpha" in [d.name for d in listed.domains]
    assert without_clock(listed) == without_clock(local.ListDomains(pb.ListDomainsRequest(),
                                                                    timeout=10))
    alpha = stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=10).domain
    assert alpha.name == "alpha" and alpha.vcpus == 2 and alpha.memory_kib == 65536
    assert alpha.uuid == local.GetDomain(pb.GetDomainRequest(name="alpha")).domain.uuid
    by_uuid = stub.GetDomain(pb.GetDomainRequest(name=alpha.uuid), timeout=10).domain
    assert by_uuid.name == "alpha"


def test_event_stream_is_forwarded(gw: grpc.Channel) -> None:
    stub = pb_grpc.ComputeServiceStub(gw)
    stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=["gw-ev"]), timeout=20)
    stream.initial_metadata()  # the backend has subscribed once its headers came through
    events: list[pb.WatchDomainEventsResponse] = []

    def collect() -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in stream:
                events.append(event)
                if len(events) == 2:
                    return

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("gw-ev-other")), timeout=10)
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("gw-ev")), timeout=10)
    stub.StartDomain(pb.StartDomainRequest(name="gw-ev"), timeout=10)
    reader.join(10)
    stream.cancel()
    got = [(e.name, pb.LifecycleEventType.Name(e.lifecycle.type)) for e in events]
    assert got == [("gw-ev", "LIFECYCLE_EVENT_TYPE_DEFINED"),
                   ("gw-ev", "LIFECYCLE_EVENT_TYPE_STARTED")]
    stub.DestroyDomain(pb.DestroyDomainRequest(name="gw-ev"), timeout=10)


def test_backend_error_is_relayed_unchanged(gw: grpc.Channel, direct: grpc.Channel) -> None:
    request = pb.GetDomainRequest(name="no-such-domain")
    through = rpc_error(pb_grpc.ComputeServiceStub(gw).GetDomain, request, timeout=10)
    local = rpc_error(pb_grpc.ComputeServiceStub(direct).GetDomain, request, timeout=10)
    assert through.code() == local.code() == grpc.StatusCode.NOT_FOUND
    assert through.details() == local.details() and through.details()
    assert status_details(through) is not None
    assert status_details(through) == status_details(local)
    info = error_info(through)
    assert info.reason == "VIR_ERR_NO_DOMAIN" and info.domain == "libvirt.org"


def test_unknown_service_or_method_is_unimplemented(gw: grpc.Channel) -> None:
    for path, name in (("/virtmesh.nope.v1.NopeService/Foo", "virtmesh.nope.v1.NopeService"),
                       (f"/{COMPUTE_SERVICE}/NoSuchMethod", "NoSuchMethod"),
                       ("/grpc.nope.Other/Bar", "grpc.nope.Other")):
        call: grpc.UnaryUnaryMultiCallable = gw.unary_unary(path)
        error = rpc_error(call, b"\x0a\x03abc", timeout=10)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED, path
        assert name in error.details(), error.details()
    # a client-streaming or bidi caller that has sent nothing is answered at once too
    path = "/virtmesh.nope.v1.NopeService/Stream"
    error = rpc_error(gw.stream_unary(path), iter(()), timeout=5)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "NopeService" in error.details()
    error = rpc_error(lambda: list(gw.stream_stream(path)(iter(()), timeout=5)))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "NopeService" in error.details()


def test_large_messages_pass_intact(gw: grpc.Channel, direct: grpc.Channel) -> None:
    stub, local = pb_grpc.ComputeServiceStub(gw), pb_grpc.ComputeServiceStub(direct)
    for i in range(300):
        local.DefineDomain(pb.DefineDomainRequest(xml=domain_xml(f"bulk-{i:03d}")), timeout=10)
    request = pb.ListDomainsRequest(page_size=1000)
    through = stub.ListDomains(request, timeout=10)
    assert len([d for d in through.domains if d.name.startswith("bulk-")]) == 300
    assert without_clock(through) == without_clock(local.ListDomains(request, timeout=10))
    assert through.ByteSize() > 20_000

    # ~3 MB each way: a request and a response far above one HTTP/2 window
    description = "".join(f"line {i} of a long description\n" for i in range(100_000))
    xml = domain_xml("big").replace("</name>", f"</name><description>{description}"
                                               "</description>")
    stub.DefineDomain(pb.DefineDomainRequest(xml=xml), timeout=20)
    big = stub.GetDomainXML(pb.GetDomainXMLRequest(name="big"), timeout=20).xml
    assert len(big) > len(description) and description in big
    assert big == local.GetDomainXML(pb.GetDomainXMLRequest(name="big")).xml


# -- health and reflection ---------------------------------------------------------


def test_health_through_gateway(gw: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(gw)
    for service in ("", COMPUTE_SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == Status.SERVING, service
    error = rpc_error(health.Check, health_pb2.HealthCheckRequest(
        service="virtmesh.nope.v1.NopeService"), timeout=10)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service=COMPUTE_SERVICE), timeout=10)
    assert next(watch).status == Status.SERVING
    watch.cancel()


def test_reflection_through_gateway(gw: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(gw)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=COMPUTE_SERVICE)]
    listing, files = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    listed = {s.name for s in listing.list_services_response.service}
    assert {COMPUTE_SERVICE, "grpc.health.v1.Health"} <= listed
    protos = files.file_descriptor_response.file_descriptor_proto
    assert protos, files
    parsed = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in protos]
    services = {f"{p.package}.{s.name}" for p in parsed for s in p.service}
    assert COMPUTE_SERVICE in services
    compute = next(s for p in parsed for s in p.service if s.name == "ComputeService")
    assert {"GetDomain", "WatchDomainEvents"} <= {m.name for m in compute.method}


# -- TLS ------------------------------------------------------------------------------


def _fails_handshake(target: str, credentials: grpc.ChannelCredentials | None) -> None:
    channel = (grpc.secure_channel(target, credentials) if credentials
               else grpc.insecure_channel(target))
    with channel:
        error = rpc_error(health_pb2_grpc.HealthStub(channel).Check,
                          health_pb2.HealthCheckRequest(), timeout=5)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error


def test_tls_refuses_clients_without_a_trusted_certificate(shared_mesh: Mesh,
                                                           tmp_path: Path) -> None:
    ca_pem = (shared_mesh.state_dir / "pki" / "ca.crt").read_bytes()
    # the trusted client works...
    with shared_mesh.channel() as channel:
        assert health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5).status == Status.SERVING
    # ...no client certificate does not
    _fails_handshake(shared_mesh.target, grpc.ssl_channel_credentials(ca_pem))
    # ...nor a client certificate from another CA
    other = tmp_path / "other-pki"
    ca_key = pki.new_key()
    ca_name = pki._name("some other CA")
    ca_cert = pki.issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    key = pki.new_key()
    pki.write_pair(other, "client", pki.issue(pki._name("admin"), key, ca_name, ca_key,
                                              usage=ExtendedKeyUsageOID.CLIENT_AUTH), key)
    pki.write_pair(other, "ca", ca_cert, ca_key)
    _fails_handshake(shared_mesh.target, grpc.ssl_channel_credentials(
        ca_pem, (other / "client.key").read_bytes(), (other / "client.crt").read_bytes()))
    # ...nor plaintext
    _fails_handshake(shared_mesh.target, None)
    # and a client that trusts another CA does not accept the gateway
    _fails_handshake(shared_mesh.target, client_credentials(other))


# -- a backend that goes away and comes back ---------------------------------------


def test_backend_down_then_back(tmp_path: Path) -> None:
    with running_mesh(tmp_path, write_node(tmp_path / "node")) as mesh, \
            mesh.channel() as channel:
        stub, health = pb_grpc.ComputeServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        assert stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=10).domain.name == \
            "alpha"
        assert mesh.compute.stop() == 0

        error = rpc_error(stub.GetDomain, pb.GetDomainRequest(name="alpha"), timeout=10)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "compute" in error.details(), error.details()
        info = error_info(error)
        assert info.reason == "SERVICE_UNAVAILABLE" and info.metadata["service"] == "compute"
        stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(), timeout=10)
        error = rpc_error(next, stream)
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "compute" in error.details()

        check = health.Check
        assert check(health_pb2.HealthCheckRequest(service=COMPUTE_SERVICE),
                     timeout=10).status == Status.NOT_SERVING
        assert check(health_pb2.HealthCheckRequest(service=""),
                     timeout=10).status == Status.SERVING

        mesh.compute.start()
        wait_serving(f"unix:{mesh.state_dir / 'run' / 'compute.sock'}", "", 30)

        def works() -> bool:
            try:
                stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=2)
            except grpc.RpcError:
                return False
            return True

        assert wait_until(works, 10, step=0.1), "the gateway did not reconnect to compute"
        assert check(health_pb2.HealthCheckRequest(service=COMPUTE_SERVICE),
                     timeout=10).status == Status.SERVING


def test_gateway_with_no_backends(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with running_gateway(tmp_path / "state", "--socket-dir", str(tmp_path / "empty")) \
            as (_, target), \
            grpc.secure_channel(target, client_credentials(tmp_path / "state" / "pki")) \
            as channel:
        error = rpc_error(pb_grpc.ComputeServiceStub(channel).ListDomains,
                          pb.ListDomainsRequest(), timeout=10)
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "compute" in error.details()
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=COMPUTE_SERVICE),
                            timeout=10).status == Status.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            Status.SERVING


# -- deadline, metadata and cancellation, seen from the backend ----------------------


def test_deadline_and_metadata_reach_the_backend(fake: FakeMesh,
                                                 fake_stub: pb_grpc.ComputeServiceStub) -> None:
    metadata = (("x-request-id", "req-42"), ("x-blob-bin", b"\x00\x01\xfe\xff"))
    reply = fake_stub.GetDomain(pb.GetDomainRequest(name="echo"), timeout=5,
                                metadata=metadata)
    assert reply.domain.name == "echo" and reply.domain.vcpus == 3
    seen = fake.backend.seen["echo"]
    assert seen.metadata.get("x-request-id") == "req-42"
    assert seen.metadata.get("x-blob-bin") == b"\x00\x01\xfe\xff"
    assert within_deadline(seen.time_remaining, 5)


def test_the_request_id_comes_back_in_trailers_and_in_a_streams_headers(
        fake: FakeMesh, fake_stub: pb_grpc.ComputeServiceStub) -> None:
    """Every call ends with its request id in the trailers, a unary one without a
    separate send of headers for it; a stream's headers carry it from the start."""
    given = (("x-request-id", "req-43"),)
    _, call = fake_stub.GetDomain.with_call(pb.GetDomainRequest(name="echo"), timeout=5,
                                            metadata=given)
    assert as_dict(call.trailing_metadata()).get("x-request-id") == "req-43"
    assert "x-request-id" not in as_dict(call.initial_metadata())
    _, call = fake_stub.GetDomain.with_call(pb.GetDomainRequest(name="echo-2"), timeout=5)
    assigned = as_dict(call.trailing_metadata()).get("x-request-id")
    assert assigned and assigned == fake.backend.seen["echo-2"].metadata.get("x-request-id")
    failed = rpc_error(fake_stub.GetDomain, pb.GetDomainRequest(name="fail-rid"), timeout=10,
                       metadata=(("x-request-id", "req-44"),))
    assert as_dict(failed.trailing_metadata()).get("x-request-id") == "req-44"
    stream = fake_stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=["rid"]),
                                         timeout=20, metadata=(("x-request-id", "stream-2"),))
    assert as_dict(stream.initial_metadata()).get("x-request-id") == "stream-2"
    stream.cancel()


def test_deadline_exceeded_is_propagated(fake: FakeMesh,
                                         fake_stub: pb_grpc.ComputeServiceStub) -> None:
    error = rpc_error(fake_stub.GetDomain, pb.GetDomainRequest(name="slow-1"), timeout=0.3)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    seen = fake.backend.seen["slow-1"]
    assert within_deadline(seen.time_remaining, 0.3)
    assert wait_until(lambda: seen.ended_while_busy is not None, 5)
    assert seen.ended_while_busy, "the deadline did not expire on the backend too"


def test_unary_cancel_reaches_the_backend(fake: FakeMesh,
                                          fake_stub: pb_grpc.ComputeServiceStub) -> None:
    future = fake_stub.GetDomain.future(pb.GetDomainRequest(name="slow-2"), timeout=20)
    assert wait_until(lambda: "slow-2" in fake.backend.seen, 5)
    future.cancel()
    seen = fake.backend.seen["slow-2"]
    assert wait_until(lambda: seen.ended_while_busy is not None, 5)
    assert seen.ended_while_busy, "the backend never heard of the client's cancel"


def test_stream_cancel_reaches_the_backend(fake: FakeMesh,
                                           fake_stub: pb_grpc.ComputeServiceStub) -> None:
    stream = fake_stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=["c1"]),
                                         timeout=20, metadata=(("x-request-id", "stream-1"),))
    names = [next(stream).name for _ in range(3)]
    assert names == ["tick-1", "tick-2", "tick-3"]
    seen = fake.backend.seen["watch:c1"]
    assert seen.metadata.get("x-request-id") == "stream-1"
    assert within_deadline(seen.time_remaining, 20)
    assert not seen.ended.is_set()
    stream.cancel()
    assert seen.ended.wait(5), "the backend never heard of the client's cancel"


def test_backend_metadata_and_custom_details_pass_unchanged(
        fake: FakeMesh, fake_stub: pb_grpc.ComputeServiceStub) -> None:
    reply, call = fake_stub.GetDomain.with_call(pb.GetDomainRequest(name="meta"), timeout=10)
    assert reply.domain.name == "meta"
    trailers = as_dict(call.trailing_metadata())
    assert trailers.get("x-backend-trailer") == "bye"
    assert trailers.get("x-backend-trailer-bin") == b"\x00\xffraw"
    assert as_dict(call.initial_metadata()).get("x-backend-initial") == "hello"

    request = pb.GetDomainRequest(name="fail")
    through = rpc_error(fake_stub.GetDomain, request, timeout=10)
    with grpc.insecure_channel(f"unix:{fake.socket_dir / 'compute.sock'}") as channel:
        local = rpc_error(pb_grpc.ComputeServiceStub(channel).GetDomain, request, timeout=10)
    assert through.code() == local.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert through.details() == local.details() == "custom failure from the backend"
    assert status_details(through) == status_details(local) == \
        CUSTOM_STATUS.SerializeToString()
    info = error_info(through)
    assert info.reason == "CUSTOM_REASON" and info.domain == "backend.test"
    assert dict(info.metadata) == {"k": "v", "ünï": "cödé"}
    assert as_dict(through.trailing_metadata()).get("x-backend-trailer") == "failed"
    forwarded = as_dict(through.trailing_metadata())
    assert forwarded.pop("x-request-id")  # the gateway's one addition
    assert forwarded == as_dict(local.trailing_metadata())
    assert as_dict(through.initial_metadata()).get("x-backend-initial") == "failing"
