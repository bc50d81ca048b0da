"""The secret service over its UNIX socket.

libvirt's test driver has no secrets, and its embedded secret driver can be opened
once per process only, so the in-process tests use the host daemon's driver
(secret:///system, every secret with a unique "vmtest-" usage and undefined
afterwards) and the embedded driver, the default, runs as its own process.
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import libvirt
import pytest

from services.secret import SPEC
from services.secret.backend import embedded_undefine_crashes
from services.supervisor import wait_serving
from tests.conftest import Process, error_of, reason_of, running_service, service_process
from virtmesh.secret.v1 import secret_service_pb2 as pb
from virtmesh.secret.v1 import secret_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

Stub = pb_grpc.SecretServiceStub
SYSTEM = "secret:///system"


def unique(prefix: str = "vmtest") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def ceph_xml(usage: str, *, uuid_: str = "", private: bool = False,
             ephemeral: bool = False, description: str = "") -> str:
    return (f"<secret ephemeral='{'yes' if ephemeral else 'no'}' "
            f"private='{'yes' if private else 'no'}'>"
            + (f"<uuid>{uuid_}</uuid>" if uuid_ else "")
            + (f"<description>{description}</description>" if description else "")
            + f"<usage type='ceph'><name>{usage}</name></usage></secret>")


def ours(stub: Stub, prefix: str, **filters: object) -> list[pb.Secret]:
    """Our secrets (usage ids containing ``prefix``)."""
    return [s for s in stub.ListSecrets(pb.ListSecretsRequest(**filters)).secrets  # type: ignore[arg-type]
            if prefix in s.usage.id]


def remove_host_secrets(prefix: str) -> None:
    """Undefine every host secret whose usage id contains ``prefix``."""
    conn = libvirt.open(SYSTEM)
    try:
        for secret in conn.listAllSecrets(0):
            if prefix in (secret.usageID() or ""):
                secret.undefine()
    finally:
        conn.close()


@pytest.fixture
def system(tmp_path: Path, host_libvirtd: None) -> Iterator[tuple[Stub, str]]:
    """A stub of an in-process service on the host's secret driver, and the usage-id
    prefix this test's secrets must use (they are undefined afterwards)."""
    prefix = unique()
    try:
        with running_service(tmp_path, SYSTEM, spec=SPEC, grace_period=0.5) as daemon, \
                grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            yield Stub(channel), prefix
    finally:
        remove_host_secrets(prefix)


def test_define_get_value_and_undefine(system: tuple[Stub, str]) -> None:
    stub, prefix = system
    defined = stub.DefineSecret(pb.DefineSecretRequest(
        xml=ceph_xml(f"{prefix}-a", description="cluster a"))).secret
    assert uuid.UUID(defined.name)
    assert defined.usage == pb.Usage(type=pb.USAGE_TYPE_CEPH, id=f"{prefix}-a")
    assert defined.description == "cluster a" and not defined.private and not defined.ephemeral

    by_usage = stub.GetSecret(pb.GetSecretRequest(usage=defined.usage)).secret
    assert by_usage == defined
    assert stub.GetSecret(pb.GetSecretRequest(name=defined.name.upper())).secret == defined
    xml = stub.GetSecretXML(pb.GetSecretXMLRequest(name=defined.name)).xml
    assert f"<uuid>{defined.name}</uuid>" in xml and f"<name>{prefix}-a</name>" in xml

    error = error_of(stub.GetSecretValue, pb.GetSecretValueRequest(name=defined.name))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # no value yet
    value = bytes(range(256))  # any bytes, not only text
    stub.SetSecretValue(pb.SetSecretValueRequest(name=defined.name, value=value))
    assert stub.GetSecretValue(pb.GetSecretValueRequest(name=defined.name)).value == value
    assert "value" not in stub.GetSecretXML(pb.GetSecretXMLRequest(name=defined.name)).xml

    stub.UndefineSecret(pb.UndefineSecretRequest(name=defined.name))
    assert ours(stub, prefix) == []
    error = error_of(stub.GetSecret, pb.GetSecretRequest(name=defined.name))
    assert error.code() == grpc.StatusCode.NOT_FOUND and reason_of(error) == "VIR_ERR_NO_SECRET"


def test_filters_and_pagination(system: tuple[Stub, str]) -> None:
    stub, prefix = system
    for i in range(5):
        stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml(f"{prefix}-{i}", private=i == 0)))
    stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml(f"{prefix}-eph", ephemeral=True)))
    stub.DefineSecret(pb.DefineSecretRequest(
        xml=f"<secret><usage type='volume'><volume>/{prefix}/disk.img</volume></usage></secret>"))

    assert len(ours(stub, prefix)) == 7
    private = ours(stub, prefix, private=True)
    assert [s.usage.id for s in private] == [f"{prefix}-0"] and private[0].private
    ephemeral = ours(stub, prefix, ephemeral=True)
    assert [s.usage.id for s in ephemeral] == [f"{prefix}-eph"] and ephemeral[0].ephemeral
    assert f"{prefix}-eph" not in {s.usage.id for s in ours(stub, prefix, ephemeral=False)}
    volumes = stub.ListSecrets(pb.ListSecretsRequest(usage_types=[pb.USAGE_TYPE_VOLUME])).secrets
    assert f"/{prefix}/disk.img" in [s.usage.id for s in volumes]
    assert all(s.usage.type == pb.USAGE_TYPE_VOLUME for s in volumes)

    pages, token = [], ""
    while True:
        reply = stub.ListSecrets(pb.ListSecretsRequest(usage_types=[pb.USAGE_TYPE_CEPH],
                                                       page_size=2, page_token=token))
        pages.append([s.name for s in reply.secrets])
        token = reply.next_page_token
        if not token:
            break
    listed = sum(pages, [])
    assert listed == sorted(listed) and len(listed) == len(set(listed))
    assert all(len(page) <= 2 for page in pages)
    assert {s.name for s in ours(stub, prefix, usage_types=[pb.USAGE_TYPE_CEPH])} <= set(listed)
    error = error_of(stub.ListSecrets, pb.ListSecretsRequest(page_size=2, page_token="garbage"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(stub.ListSecrets, pb.ListSecretsRequest(usage_types=[pb.UsageType.Value(
        "USAGE_TYPE_UNSPECIFIED")]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_private_secret_value_is_refused(system: tuple[Stub, str]) -> None:
    stub, prefix = system
    secret = stub.DefineSecret(pb.DefineSecretRequest(
        xml=ceph_xml(f"{prefix}-p", private=True))).secret
    assert secret.private
    stub.SetSecretValue(pb.SetSecretValueRequest(name=secret.name, value=b"hidden"))
    error = error_of(stub.GetSecretValue, pb.GetSecretValueRequest(name=secret.name))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "SECRET_PRIVATE" and "private" in str(error.details())
    error = error_of(stub.DefineSecret, pb.DefineSecretRequest(
        xml=ceph_xml(f"{prefix}-p", uuid_=secret.name)))  # private -> public
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ours(stub, prefix)[0].private


def test_bad_input_gets_precise_status_and_leaves_nothing(system: tuple[Stub, str]) -> None:
    stub, prefix = system
    for xml in ("<secret", "<foo/>", "<secret><usage type='bogus'/></secret>",
                "<secret><usage type='volume'/></secret>",
                f"<secret><uuid>nope</uuid>{ceph_xml(prefix)[8:]}"):
        error = error_of(stub.DefineSecret, pb.DefineSecretRequest(xml=xml))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (xml, error.details())
    error = error_of(stub.DefineSecret, pb.DefineSecretRequest(xml=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "xml" in str(error.details())
    assert ours(stub, prefix) == []

    first = stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml(f"{prefix}-dup"))).secret
    error = error_of(stub.DefineSecret, pb.DefineSecretRequest(
        xml=ceph_xml(f"{prefix}-dup", uuid_=str(uuid.uuid4()))))  # same usage, other UUID
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = error_of(stub.DefineSecret, pb.DefineSecretRequest(
        xml=ceph_xml(f"{prefix}-other", uuid_=first.name)))  # same UUID, other usage
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert [s.name for s in ours(stub, prefix)] == [first.name]

    unknown = str(uuid.uuid4())
    for call, request in ((stub.GetSecret, pb.GetSecretRequest(name=unknown)),
                          (stub.GetSecretXML, pb.GetSecretXMLRequest(name=unknown)),
                          (stub.UndefineSecret, pb.UndefineSecretRequest(name=unknown)),
                          (stub.GetSecret, pb.GetSecretRequest(usage=pb.Usage(
                              type=pb.USAGE_TYPE_CEPH, id=f"{prefix}-none")))):
        error = error_of(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, request
    for bad_call, bad_request in ((stub.GetSecret, pb.GetSecretRequest()),
                                  (stub.GetSecret, pb.GetSecretRequest(name="not-a-uuid")),
                                  (stub.GetSecret, pb.GetSecretRequest(usage=pb.Usage(id="x"))),
                                  (stub.GetSecret, pb.GetSecretRequest(usage=pb.Usage(
                                      type=pb.USAGE_TYPE_CEPH))),
                                  (stub.SetSecretValue, pb.SetSecretValueRequest(name=first.name))):
        error = error_of(bad_call, bad_request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad_request


def test_watch_events(system: tuple[Stub, str]) -> None:
    stub, prefix = system
    first = stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml(f"{prefix}-ev"))).secret
    events: list[pb.WatchSecretEventsResponse] = []
    stream = stub.WatchSecretEvents(pb.WatchSecretEventsRequest(names=[first.name]))
    stream.initial_metadata()  # subscribed once headers arrive

    def collect() -> None:
        for event in stream:
            events.append(event)
            if len(events) == 3:
                return

    reader = threading.Thread(target=collect)
    reader.start()
    stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml(f"{prefix}-other")))  # filtered out
    stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml(f"{prefix}-ev", uuid_=first.name,
                                                          description="again")))
    stub.SetSecretValue(pb.SetSecretValueRequest(name=first.name, value=b"v"))
    stub.UndefineSecret(pb.UndefineSecretRequest(name=first.name))
    reader.join(30)
    stream.cancel()
    assert [(e.name, e.WhichOneof("event"), e.lifecycle.type) for e in events] == [
        (first.name, "lifecycle", pb.LIFECYCLE_EVENT_TYPE_DEFINED),
        (first.name, "value_changed", pb.LIFECYCLE_EVENT_TYPE_UNSPECIFIED),
        (first.name, "lifecycle", pb.LIFECYCLE_EVENT_TYPE_UNDEFINED),
    ]
    assert all(e.usage.id == f"{prefix}-ev" and e.time.seconds > 0 for e in events)


# -- the embedded driver (the default), as its own process ------------------------

@contextlib.contextmanager
def embedded_service(state_dir: Path, *args: str) -> Iterator[tuple[Stub, Process]]:
    """The service on the embedded driver (on request: its default is the host's daemon)."""
    uri = SPEC.embedded_uri.format(state_dir=state_dir)
    process = service_process(state_dir, "secret", "--uri", uri, *args).start()
    try:
        socket = state_dir / "run" / "secret.sock"
        wait_serving(f"unix:{socket}", "", 60)
        with grpc.insecure_channel(f"unix:{socket}") as channel:
            yield Stub(channel), process
    finally:
        assert process.stop() == 0, process.log()


def test_embedded_secrets_persist_across_restart(tmp_path: Path) -> None:
    with embedded_service(tmp_path) as (stub, _):
        defined = stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml("kept"))).secret
        stub.SetSecretValue(pb.SetSecretValueRequest(name=defined.name, value=b"persisted"))
    assert (tmp_path / "secret" / "etc" / "secrets" / f"{defined.name}.xml").exists()
    with embedded_service(tmp_path) as (stub, _):
        assert [s.name for s in stub.ListSecrets(pb.ListSecretsRequest()).secrets] == [
            defined.name]
        assert stub.GetSecretValue(pb.GetSecretValueRequest(name=defined.name)).value == \
            b"persisted"


def test_embedded_driver_refuses_what_would_crash_it(tmp_path: Path) -> None:
    """On a libvirt whose embedded driver crashes on undefine (9.0), the service refuses
    undefine and ephemeral secrets, keeps running and keeps the secret; elsewhere both
    work."""
    crashes = embedded_undefine_crashes()
    with embedded_service(tmp_path) as (stub, process):
        secret = stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml("gone"))).secret
        if crashes:
            error = error_of(stub.UndefineSecret, pb.UndefineSecretRequest(name=secret.name))
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
            assert reason_of(error) == "EMBEDDED_DRIVER_UNSUPPORTED"
            assert "secret:///system" in str(error.details())
            error = error_of(stub.DefineSecret, pb.DefineSecretRequest(
                xml=ceph_xml("eph", ephemeral=True)))
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
            assert [s.name for s in stub.ListSecrets(pb.ListSecretsRequest()).secrets] == [
                secret.name]
        else:
            stub.UndefineSecret(pb.UndefineSecretRequest(name=secret.name))
            stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml("eph", ephemeral=True)))
            assert [s.usage.id for s in stub.ListSecrets(pb.ListSecretsRequest()).secrets] == [
                "eph"]
        assert process.popen is not None and process.popen.poll() is None  # still serving


def test_embedded_private_secret_value_is_refused(tmp_path: Path) -> None:
    with embedded_service(tmp_path) as (stub, _):
        secret = stub.DefineSecret(pb.DefineSecretRequest(
            xml=ceph_xml("priv", private=True))).secret
        stub.SetSecretValue(pb.SetSecretValueRequest(name=secret.name, value=b"x"))
        error = error_of(stub.GetSecretValue, pb.GetSecretValueRequest(name=secret.name))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(error) == "SECRET_PRIVATE"


def test_secret_values_never_leave_the_service(tmp_path: Path) -> None:
    """With debug logging and metrics on, a value set, read back and sent with a failing
    call appears in none of the logs, error messages and /metrics."""
    value = f"vmtest-value-{uuid.uuid4().hex}".encode()
    leaks = (value, base64.b64encode(value), base64.urlsafe_b64encode(value))
    with embedded_service(tmp_path, "--log-level", "DEBUG", "--log-format", "json",
                          "--metrics-listen", "127.0.0.1:0") as (stub, process):
        secret = stub.DefineSecret(pb.DefineSecretRequest(xml=ceph_xml("leak"))).secret
        stub.SetSecretValue(pb.SetSecretValueRequest(name=secret.name, value=value))
        assert stub.GetSecretValue(pb.GetSecretValueRequest(name=secret.name)).value == value
        errors = [error_of(stub.SetSecretValue, pb.SetSecretValueRequest(
                      name=str(uuid.uuid4()), value=value)),
                  error_of(stub.SetSecretValue, pb.SetSecretValueRequest(value=value))]
        assert [e.code() for e in errors] == [grpc.StatusCode.NOT_FOUND,
                                              grpc.StatusCode.INVALID_ARGUMENT]
        found = re.search(r"metrics on http://(\S+)/metrics", process.log())
        assert found, process.log()
        with urllib.request.urlopen(f"http://{found.group(1)}/metrics", timeout=10) as reply:
            metrics = reply.read()
        assert b'grpc_method="SetSecretValue"' in metrics  # the calls were counted
    log = (tmp_path / "log" / "secret.log").read_bytes()
    assert b"SetSecretValue" in log and b"DEBUG" in log  # the calls were logged, verbosely
    details = b"".join(str(e.details()).encode() + b"".join(
        m.value if isinstance(m.value, bytes) else str(m.value).encode()
        for m in e.trailing_metadata() or ())
        for e in errors)  # the message, and the google.rpc.Status with its ErrorInfo
    for leak in leaks:
        for where, text in (("log", log), ("errors", details), ("metrics", metrics)):
            assert leak not in text, f"the secret value leaked into the {where}"


def test_runs_on_the_test_driver_without_events(tmp_path: Path) -> None:
    """libvirt's test driver has neither secrets nor secret events: the service still
    comes up (its event registration is refused, not retried forever) and answers
    every call with the precise UNIMPLEMENTED."""
    with running_service(tmp_path, "test:///default", spec=SPEC, grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = pb_grpc.SecretServiceStub(channel)
        for call in (lambda: stub.ListSecrets(pb.ListSecretsRequest(), timeout=30),
                     lambda: next(stub.WatchSecretEvents(pb.WatchSecretEventsRequest(),
                                                         timeout=30))):
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
