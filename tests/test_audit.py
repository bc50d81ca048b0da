"""The audit log: every call that may change something, once, allowed or not; no reads,
no request bodies."""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from gateway.audit import AUDIT_SUPPRESSED, AuditLog
from gateway.identity import Identity
from gateway.routes import proxied_services
from services.common import acl
from tests.conftest import domain_xml
from tests.test_gateway_authz import AuthzMesh, authz_mesh, invoke
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

SECRET_VALUE = b"s3cr3t-audit-canary-7f2c"


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_json_lines_appended_without_bodies(tmp_path: Path) -> None:
    path = tmp_path / "log" / "audit.jsonl"
    path.parent.mkdir()
    path.write_text('{"earlier": true}\n')
    audit = AuditLog(path)
    who = Identity("alice", frozenset({"team-a"}), "token", "ipv4:127.0.0.1:5000")
    threads = [threading.Thread(target=audit.record, kwargs=dict(
        method="/virtmesh.compute.v1.ComputeService/StartDomain", identity=who,
        peer=who.peer, objects=(f"vm-{n}",), code=grpc.StatusCode.OK, duration=0.0125))
        for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit.record(method="/virtmesh.compute.v1.ComputeService/StartDomain", identity=None,
                 peer="ipv4:10.0.0.1:1", objects=(), code=grpc.StatusCode.UNAUTHENTICATED,
                 duration=0.001)
    audit.close()
    records = lines(path)
    assert records[0] == {"earlier": True}  # appended, never rewritten
    assert sorted(r["objects"][0] for r in records[1:51]) == sorted(  # type: ignore[index]
        f"vm-{n}" for n in range(50))
    first = records[1]
    assert first["identity"] == "alice" and first["auth"] == "token"
    assert first["groups"] == ["team-a"] and first["code"] == "OK"
    assert first["duration_ms"] == 12.5 and first["peer"] == "ipv4:127.0.0.1:5000"
    when = datetime.datetime.fromisoformat(str(first["time"]))
    assert str(first["time"]).endswith("Z") and when.utcoffset() == datetime.timedelta(0)
    assert records[-1]["identity"] is None and records[-1]["code"] == "UNAUTHENTICATED"


def test_anonymous_records_are_rate_limited_and_counted(tmp_path: Path) -> None:
    """Anyone who reaches the port can make unauthenticated calls: their records are
    bounded (here 1/s, bursts of 10) and the rest counted; callers with an identity
    are always recorded."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, anonymous_rate=1.0)
    alice = Identity("alice", method="token")
    before = AUDIT_SUPPRESSED._value.get()

    def record(identity: Identity | None) -> None:
        audit.record(method="/m/Start", identity=identity, peer="ipv4:192.0.2.1:1",
                     objects=(), code=grpc.StatusCode.UNAUTHENTICATED if identity is None
                     else grpc.StatusCode.OK, duration=0.001)

    for _ in range(25):
        record(None)
        record(alice)
    written = lines(path)
    assert [r["identity"] for r in written].count("alice") == 25
    anonymous = [r for r in written if r["identity"] is None]
    assert len(anonymous) == 10 and {r["suppressed_before"] for r in anonymous} == {0}
    assert audit.suppressed == 15 and AUDIT_SUPPRESSED._value.get() - before == 15
    time.sleep(1.1)  # one record's worth again: it carries the count
    record(None)
    assert lines(path)[-1]["suppressed_before"] == 15 and audit.suppressed == 0
    record(None)  # over the rate again: counted, and written when the log closes
    audit.close()
    last = lines(path)[-1]
    assert last["suppressed_before"] == 1 and "method" not in last


def test_a_rotated_log_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    record = dict(method="/m/M", identity=None, peer="p", objects=(),
                  code=grpc.StatusCode.OK, duration=0.0)
    audit.record(**record)  # type: ignore[arg-type]
    path.rename(tmp_path / "audit.jsonl.1")
    audit.record(**record)  # type: ignore[arg-type]
    audit.close()
    assert len(lines(tmp_path / "audit.jsonl.1")) == 1
    assert len(lines(path)) == 1
    assert AuditLog(path).path.stat().st_mode & 0o777 == 0o600


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthzMesh]:
    with authz_mesh(tmp_path_factory.mktemp("audit")) as running:
        yield running


def bytes_method() -> tuple[MethodDescriptor, Any] | None:
    """A mutating RPC with a bytes field (a secret's value), and its request."""
    for service in proxied_services():
        for method in service.methods:
            fields = [f for f in method.input_type.fields if f.type == FieldDescriptor.TYPE_BYTES]
            if fields and not acl.is_read_only(method) and not method.client_streaming:
                request = message_factory.GetMessageClass(method.input_type)()
                setattr(request, fields[0].name, SECRET_VALUE)
                return method, request
    return None


def test_every_mutating_call_is_recorded_once_and_reads_never(mesh: AuthzMesh) -> None:
    audit = mesh.state_dir / "log" / "audit.jsonl"
    before = len(lines(audit)) if audit.exists() else 0
    xml = domain_xml("audit-vm")
    with mesh.channel() as admin, mesh.channel("readonly") as readonly, \
            mesh.channel("alice") as alice:
        admin_stub = pb_grpc.ComputeServiceStub(admin)
        admin_stub.DefineDomain(pb.DefineDomainRequest(xml=xml), timeout=10)
        admin_stub.GetDomain(pb.GetDomainRequest(name="audit-vm"), timeout=10)
        admin_stub.ListDomains(pb.ListDomainsRequest(), timeout=10)
        pb_grpc.ComputeServiceStub(readonly).GetDomainXML(
            pb.GetDomainXMLRequest(name="audit-vm"), timeout=10)
        expected = [("DefineDomain", "O=virtmesh,CN=admin", "OK", ["audit-vm"])]
        for channel, who, request, code in (
                (readonly, "readonly", pb.StartDomainRequest(name="audit-vm"),
                 "PERMISSION_DENIED"),
                (alice, "alice", pb.StartDomainRequest(name="audit-vm"), "PERMISSION_DENIED"),
                (admin, "O=virtmesh,CN=admin", pb.StartDomainRequest(name="no-such-vm"),
                 "NOT_FOUND")):
            with pytest.raises(grpc.RpcError):
                pb_grpc.ComputeServiceStub(channel).StartDomain(request, timeout=10)
            expected.append(("StartDomain", who, code, [request.name]))
        with pytest.raises(grpc.RpcError):  # read_secure: not read-only, so recorded
            pb_grpc.ComputeServiceStub(readonly).GetDomainXML(
                pb.GetDomainXMLRequest(name="audit-vm", secure=True), timeout=10)
        expected.append(("GetDomainXML", "readonly", "PERMISSION_DENIED", ["audit-vm"]))
        admin_stub.UndefineDomain(pb.UndefineDomainRequest(name="audit-vm"), timeout=10)
        expected.append(("UndefineDomain", "O=virtmesh,CN=admin", "OK", ["audit-vm"]))
        secret = bytes_method()
        if secret is not None:
            invoke(admin, *secret)
    # an anonymous caller (a token nobody issued) is recorded too, without identity
    mesh.tokens["forged"] = "not-a-token"
    with mesh.channel("forged") as forged, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.ComputeServiceStub(forged).StartDomain(pb.StartDomainRequest(name="x"),
                                                       timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    expected.append(("StartDomain", None, "UNAUTHENTICATED", []))  # type: ignore[arg-type]

    records = lines(audit)[before:]
    compute = [(str(r["method"]).rsplit("/", 1)[1], r["identity"], r["code"], r["objects"])
               for r in records if "ComputeService" in str(r["method"])]
    assert compute == expected
    assert all(r["auth"] in ("certificate", "token", None) and r["peer"] for r in records)
    assert not [r for r in records if str(r["method"]).endswith(("/GetDomain", "/ListDomains"))]
    text = audit.read_text()
    assert xml not in text and "<domain" not in text
    assert SECRET_VALUE.decode() not in text
    assert base64.b64encode(SECRET_VALUE).decode() not in text
    if secret is not None:  # recorded, but without its value
        assert [r for r in records if str(r["method"]).endswith(f"/{secret[0].name}")]


def test_the_record_is_written_before_the_caller_sees_the_status(mesh: AuthzMesh) -> None:
    """Whoever has seen a call end finds its record: checked right after each of many
    refused calls (the gateway's own statuses) and relayed ones (the backend's)."""
    audit = mesh.state_dir / "log" / "audit.jsonl"
    mesh.tokens["forged"] = "not-a-token"
    with mesh.channel("forged") as forged, mesh.channel("readonly") as readonly, \
            mesh.channel() as admin:
        for round_ in range(20):
            for channel, code in ((forged, grpc.StatusCode.UNAUTHENTICATED),
                                  (readonly, grpc.StatusCode.PERMISSION_DENIED),
                                  (admin, grpc.StatusCode.NOT_FOUND)):
                name = f"order-{round_}-{code.name.lower()}"
                before = len(lines(audit))
                with pytest.raises(grpc.RpcError) as caught:
                    pb_grpc.ComputeServiceStub(channel).StartDomain(
                        pb.StartDomainRequest(name=name), timeout=10)
                assert caught.value.code() == code  # type: ignore[attr-defined]
                records = lines(audit)[before:]
                assert [r["code"] for r in records] == [code.name], (name, records)
