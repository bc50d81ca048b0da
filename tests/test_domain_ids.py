"""A running domain found by its ID (LookupDomainById), and virsh's domname/domid,
against a real compute service on libvirt's test driver."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.conftest import CliRun, domain_xml, error_of, reason_of
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc


def test_a_running_domain_is_found_by_its_id(stub: pb_grpc.ComputeServiceStub) -> None:
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("by-id")), timeout=10)
    stub.StartDomain(pb.StartDomainRequest(name="by-id"), timeout=10)
    running = stub.GetDomain(pb.GetDomainRequest(name="by-id"), timeout=10).domain
    assert running.id > 0
    found = stub.LookupDomainById(pb.LookupDomainByIdRequest(id=running.id), timeout=10).domain
    assert (found.name, found.uuid, found.id) == ("by-id", running.uuid, running.id)
    assert found.state == pb.DOMAIN_STATE_RUNNING
    stub.DestroyDomain(pb.DestroyDomainRequest(name="by-id"), timeout=10)
    gone = error_of(stub.LookupDomainById, pb.LookupDomainByIdRequest(id=running.id))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("domain_id", [-1, -2**31])
def test_a_negative_id_is_refused_before_libvirt(stub: pb_grpc.ComputeServiceStub,
                                                  domain_id: int) -> None:
    error = error_of(stub.LookupDomainById, pb.LookupDomainByIdRequest(id=domain_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "INVALID_ID"


def write(path: Path, name: str) -> Path:
    path.write_text(domain_xml(name))
    return path


def test_domname_and_domid(virtmesh: CliRun, run_dir: Path, tmp_path: Path) -> None:
    socket = ("--socket", str(run_dir))
    code, out, err = virtmesh(*socket, "domid", "test")
    assert code == 0, err
    test_id = out.strip()
    assert test_id.isdigit()
    assert virtmesh(*socket, "domname", test_id)[1].strip() == "test"
    uuid = json.loads(virtmesh(*socket, "--json", "info", "test")[1])["uuid"]
    assert virtmesh(*socket, "domname", uuid)[1].strip() == "test"
    code, _, err = virtmesh(*socket, "domname", "4242")
    assert code == 1 and "NOT_FOUND" in err
    # a domain of its own: test:///default is one driver per process, shared by tests
    assert virtmesh(*socket, "define", str(write(tmp_path / "off.xml", "ids-off")))[0] == 0
    assert virtmesh(*socket, "domid", "ids-off")[1].strip() == "-"
