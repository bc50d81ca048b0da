"""Request ids: the gateway assigns one to each call (or keeps the caller's), forwards
it, returns it in the response headers, and the gateway and the service log it for
the same call, in text and in JSON logs."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common.logs import REQUEST_ID_KEY, request_id_from
from tests.conftest import Mesh, Process, running_mesh
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)

GET_DOMAIN = "/virtmesh.compute.v1.ComputeService/GetDomain"
TEXT_RPC_LINE = re.compile(r" (?:INFO|DEBUG) virtmesh\.rpc: (?P<method>\S+) (?P<code>[A-Z_]+) "
                           r"[\d.]+ ms.* \[request_id=(?P<request_id>\S+)\]$")


def rpc_entries(process: Process, log_format: str) -> list[dict[str, Any]]:
    """The per-call lines of a process's log, as dicts with at least method, code and
    request_id."""
    entries = []
    for line in process.log().splitlines():
        if log_format == "json":
            if line.startswith("{"):
                entry = json.loads(line)  # every line our logging writes is JSON
                if entry["logger"] == "virtmesh.rpc":
                    entries.append(entry)
        elif match := TEXT_RPC_LINE.search(line):
            entries.append(match.groupdict())
    return entries


def calls_logged(process: Process, log_format: str, request_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        found = [entry for entry in rpc_entries(process, log_format)
                 if entry["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def returned_id(call: Any) -> str:
    """The request id the gateway returned: in the trailers of a unary call."""
    return str(dict(call.trailing_metadata())[REQUEST_ID_KEY])


@pytest.fixture(params=["json", "text"])
def logging_mesh(request: pytest.FixtureRequest, tmp_path: Path, node_uri: str,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Mesh, str]]:
    monkeypatch.setenv("VIRTMESH_LOG_FORMAT", request.param)
    monkeypatch.setenv("VIRTMESH_LOG_LEVEL", "DEBUG")  # successful reads are said at DEBUG
    with running_mesh(tmp_path, node_uri) as mesh:
        yield mesh, request.param


def test_gateway_and_service_log_the_same_request_id(logging_mesh: tuple[Mesh, str]) -> None:
    mesh, log_format = logging_mesh
    with mesh.channel() as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        _, call = stub.GetDomain.with_call(pb.GetDomainRequest(name="alpha"), timeout=10,
                                           metadata=((REQUEST_ID_KEY, "client-chosen.1"),))
        assert returned_id(call) == "client-chosen.1"
        _, call = stub.GetDomain.with_call(pb.GetDomainRequest(name="alpha"), timeout=10)
        assigned = returned_id(call)
        assert re.fullmatch(r"[0-9a-f]{32}", assigned), assigned
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetDomain(pb.GetDomainRequest(name="nope"), timeout=10)
        failed = returned_id(caught.value)
        assert failed != assigned

    for request_id, code in (("client-chosen.1", "OK"), (assigned, "OK"),
                             (failed, "NOT_FOUND")):
        for process in (mesh.gateway, mesh.compute):
            logged = calls_logged(process, log_format, request_id)
            assert len(logged) == 1, (process.argv, request_id, logged)  # once per call
            assert logged[0]["method"] == GET_DOMAIN
            assert logged[0]["code"] == code
            if log_format == "json":
                assert logged[0]["duration_ms"] >= 0


def test_unfit_request_ids_are_replaced() -> None:
    assert request_id_from([(REQUEST_ID_KEY, "abc-123")]) == "abc-123"
    for unfit in ("", "has space", "x" * 129, "ünï"):
        replaced = request_id_from([(REQUEST_ID_KEY, unfit)])
        assert re.fullmatch(r"[0-9a-f]{32}", replaced), unfit
    assert request_id_from(None) != request_id_from(None)


FORGED = "2026-01-01 00:00:00,000 compute[1] INFO virtmesh.rpc: FORGED"


def test_names_cannot_forge_log_lines(logging_mesh: tuple[Mesh, str]) -> None:
    """A name is the caller's text: its newlines, line separators and other control
    characters are escaped, so every line of every log is one record of ours."""
    mesh, log_format = logging_mesh
    names = [f"ghost\n{FORGED}", f"ghost\r{FORGED}", f"ghost\u2028{FORGED}",
             f"ghost\x1b[2K\x85{FORGED}"]
    with mesh.channel() as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        for name in names:
            with pytest.raises(grpc.RpcError) as caught:  # libvirt's message quotes it
                stub.GetSnapshot(pb.GetSnapshotRequest(name="alpha", snapshot=name),
                                 timeout=10, metadata=((REQUEST_ID_KEY, "forgery"),))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    logged = calls_logged(mesh.compute, log_format, "forgery")
    assert len(logged) == len(names)
    for process in (mesh.gateway, mesh.compute):
        text = process.log()
        assert "FORGED" in text  # the names were logged, escaped
        for line in text.split("\n"):
            assert not line.startswith(FORGED[:10]) and not re.search(r"[\r\x1b\x85\u2028]", line)
            if log_format == "json" and line:
                assert line.startswith("{") and json.loads(line), line
