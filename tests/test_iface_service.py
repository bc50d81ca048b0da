"""The iface service over its UNIX socket: the writable operations on a private
test:/// node, and the host's read-only udev backend through interface:///system."""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.iface import SPEC
from tests.conftest import XML_REFUSED, running_service
from tests.test_compute_service import error_of, reason_of
from virtmesh.iface.v1 import iface_service_pb2 as pb
from virtmesh.iface.v1 import iface_service_pb2_grpc as pb_grpc

Stub = pb_grpc.InterfaceServiceStub
C = grpc.StatusCode

NODE_XML = """<node>
  <interface type='ethernet' name='eth1'>
    <start mode='onboot'/><mac address='aa:bb:cc:dd:ee:ff'/>
  </interface>
</node>
"""


def iface_xml(name: str, mac: str = "52:54:00:12:34:56") -> str:
    return (f"<interface type='ethernet' name='{name}'><start mode='none'/>"
            f"<mac address='{mac}'/></interface>")


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Stub]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    with running_service(tmp_path, f"test://{node}", spec=SPEC, grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield Stub(channel)


def names(stub: Stub, **filters: object) -> list[str]:
    request = pb.ListInterfacesRequest(**filters)  # type: ignore[arg-type]
    return [i.name for i in stub.ListInterfaces(request).interfaces]


def test_list_and_get(stub: Stub) -> None:
    [eth1] = stub.ListInterfaces(pb.ListInterfacesRequest()).interfaces
    assert (eth1.name, eth1.mac, eth1.active, eth1.type) == (
        "eth1", "aa:bb:cc:dd:ee:ff", True, "ethernet")
    assert stub.GetInterface(pb.GetInterfaceRequest(name="eth1")).interface == eth1
    by_mac = stub.GetInterface(pb.GetInterfaceRequest(mac="AA:BB:CC:DD:EE:FF")).interface
    assert by_mac == eth1
    reply = stub.GetInterfaceXML(pb.GetInterfaceXMLRequest(name="eth1"))
    assert reply.name == "eth1" and ET.fromstring(reply.xml).get("name") == "eth1"


def test_define_start_stop_undefine(stub: Stub) -> None:
    defined = stub.DefineInterface(pb.DefineInterfaceRequest(xml=iface_xml("vm0"))).interface
    assert (defined.name, defined.mac, defined.active) == ("vm0", "52:54:00:12:34:56", False)
    assert names(stub, active=False) == ["vm0"]
    assert names(stub, active=True) == ["eth1"]
    assert stub.StartInterface(pb.StartInterfaceRequest(name="vm0")).interface.active
    error = error_of(stub.StartInterface, pb.StartInterfaceRequest(name="vm0"))
    assert (error.code(), reason_of(error)) == (C.FAILED_PRECONDITION,
                                                "VIR_ERR_OPERATION_INVALID")
    assert names(stub, active=True) == ["eth1", "vm0"]
    stub.StopInterface(pb.StopInterfaceRequest(name="vm0"))
    error = error_of(stub.StopInterface, pb.StopInterfaceRequest(name="vm0"))
    assert error.code() == C.FAILED_PRECONDITION
    stub.UndefineInterface(pb.UndefineInterfaceRequest(name="vm0"))
    assert names(stub) == ["eth1"]
    error = error_of(stub.UndefineInterface, pb.UndefineInterfaceRequest(name="vm0"))
    assert (error.code(), reason_of(error)) == (C.NOT_FOUND, "VIR_ERR_NO_INTERFACE")


def test_define_again_replaces(stub: Stub) -> None:
    stub.DefineInterface(pb.DefineInterfaceRequest(xml=iface_xml("vm1")))
    again = stub.DefineInterface(pb.DefineInterfaceRequest(
        xml=iface_xml("vm1", "52:54:00:00:00:02"))).interface
    assert again.mac == "52:54:00:00:00:02"
    assert names(stub) == ["eth1", "vm1"]  # one vm1, with the new MAC
    assert stub.GetInterface(pb.GetInterfaceRequest(name="vm1")).interface.mac == \
        "52:54:00:00:00:02"


def test_change_transactions(stub: Stub) -> None:
    stub.BeginInterfaceChange(pb.BeginInterfaceChangeRequest())
    error = error_of(stub.BeginInterfaceChange, pb.BeginInterfaceChangeRequest())
    assert error.code() == C.FAILED_PRECONDITION and "transaction" in str(error.details())
    stub.DefineInterface(pb.DefineInterfaceRequest(xml=iface_xml("dropped")))
    assert names(stub) == ["dropped", "eth1"]
    stub.RollbackInterfaceChange(pb.RollbackInterfaceChangeRequest())
    assert names(stub) == ["eth1"]

    stub.BeginInterfaceChange(pb.BeginInterfaceChangeRequest())
    stub.DefineInterface(pb.DefineInterfaceRequest(xml=iface_xml("kept")))
    stub.CommitInterfaceChange(pb.CommitInterfaceChangeRequest())
    assert names(stub) == ["eth1", "kept"]
    for call, request in ((stub.CommitInterfaceChange, pb.CommitInterfaceChangeRequest()),
                          (stub.RollbackInterfaceChange, pb.RollbackInterfaceChangeRequest())):
        error = error_of(call, request)
        assert error.code() == C.FAILED_PRECONDITION and "no transaction" in str(
            error.details())


def test_pagination(stub: Stub) -> None:
    for i in range(4):
        stub.DefineInterface(pb.DefineInterfaceRequest(
            xml=iface_xml(f"pg{i}", f"52:54:00:00:01:0{i}")))
    pages, token = [], ""
    while True:
        reply = stub.ListInterfaces(pb.ListInterfacesRequest(page_size=2, page_token=token))
        pages.append([i.name for i in reply.interfaces])
        token = reply.next_page_token
        if not token:
            break
    assert pages == [["eth1", "pg0"], ["pg1", "pg2"], ["pg3"]]
    first = stub.ListInterfaces(pb.ListInterfacesRequest(page_size=2))
    error = error_of(stub.ListInterfaces, pb.ListInterfacesRequest(
        page_size=2, page_token=first.next_page_token, active=True))
    assert error.code() == C.INVALID_ARGUMENT


def test_bad_input_gets_precise_status_and_leaves_nothing(stub: Stub) -> None:
    error = error_of(stub.DefineInterface, pb.DefineInterfaceRequest(xml="<interface"))
    assert error.code() == C.INVALID_ARGUMENT
    assert reason_of(error) in XML_REFUSED
    error = error_of(stub.DefineInterface, pb.DefineInterfaceRequest(
        xml="<interface type='warp' name='x'/>"))
    assert error.code() == C.INVALID_ARGUMENT
    error = error_of(stub.DefineInterface, pb.DefineInterfaceRequest())
    assert error.code() == C.INVALID_ARGUMENT and "xml" in str(error.details())
    assert names(stub) == ["eth1"]  # nothing half-defined

    for request, code in ((pb.GetInterfaceRequest(name="nope"), C.NOT_FOUND),
                          (pb.GetInterfaceRequest(mac="52:54:00:00:00:99"), C.NOT_FOUND),
                          (pb.GetInterfaceRequest(mac="garbage"), C.INVALID_ARGUMENT),
                          (pb.GetInterfaceRequest(name=""), C.INVALID_ARGUMENT),
                          (pb.GetInterfaceRequest(), C.INVALID_ARGUMENT)):
        error = error_of(stub.GetInterface, request)
        assert error.code() == code, request
    error = error_of(stub.GetInterface, pb.GetInterfaceRequest(mac="aa:bb:cc:dd:ee"))
    assert reason_of(error) == "INVALID_MAC"
    # the test driver keeps no separate inactive configuration
    error = error_of(stub.GetInterfaceXML, pb.GetInterfaceXMLRequest(name="eth1",
                                                                     inactive=True))
    assert error.code() == C.UNIMPLEMENTED and "unsupported flags" in str(error.details())


# -- the host's libvirtd ---------------------------------------------------------

@pytest.fixture
def host(tmp_path: Path, host_libvirtd: None) -> Iterator[Stub]:
    with running_service(tmp_path, "interface:///system", spec=SPEC,
                         grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield Stub(channel)


def listing(host: Stub, **filters: object) -> dict[str, pb.Interface]:
    request = pb.ListInterfacesRequest(**filters)  # type: ignore[arg-type]
    return {i.name: i for i in host.ListInterfaces(request).interfaces}


def test_host_interfaces(host: Stub) -> None:
    first = listing(host)
    assert "lo" in first
    xmls: dict[str, list[str]] = {}
    found: dict[str, pb.Interface] = {}
    for name in first:
        try:
            xmls[name] = [host.GetInterfaceXML(pb.GetInterfaceXMLRequest(
                name=name, inactive=configured)).xml for configured in (False, True)]
            found[name] = host.GetInterface(pb.GetInterfaceRequest(name=name)).interface
        except grpc.RpcError as gone:  # another test's bridge or tap went away meanwhile
            assert gone.code() == C.NOT_FOUND  # type: ignore[attr-defined]
    active, inactive = set(listing(host, active=True)), set(listing(host, active=False))
    second = listing(host)
    # what stayed as it was: the host is shared, other tests' networks come and go
    steady = {name for name, summary in first.items()
              if second.get(name) == summary and found.get(name) == summary}
    assert "lo" in steady
    for name in steady:
        for xml in xmls[name]:
            root = ET.fromstring(xml)
            assert (root.get("name"), root.get("type")) == (name, first[name].type)
    assert active & steady == {name for name in steady if first[name].active}
    assert inactive & steady == {name for name in steady if not first[name].active}
    macs = [i.mac for i in first.values()]
    for name in steady:
        if first[name].mac and macs.count(first[name].mac) == 1:
            by_mac = host.GetInterface(pb.GetInterfaceRequest(mac=first[name].mac.upper()))
            assert by_mac.interface.name == name
    error = error_of(host.GetInterface, pb.GetInterfaceRequest(name="vmtest-nope"))
    assert (error.code(), reason_of(error)) == (C.NOT_FOUND, "VIR_ERR_NO_INTERFACE")


def test_host_backend_is_read_only(host: Stub) -> None:
    """Debian's udev backend answers every change with VIR_ERR_NO_SUPPORT."""
    name = f"vmtest-{secrets.token_hex(3)}"
    try:
        error = error_of(host.DefineInterface, pb.DefineInterfaceRequest(xml=iface_xml(name)))
    except pytest.fail.Exception:  # a writable (netcf) backend defined it
        host.UndefineInterface(pb.UndefineInterfaceRequest(name=name))
        pytest.skip("the host's interface backend is writable")
    assert (error.code(), reason_of(error)) == (C.UNIMPLEMENTED, "VIR_ERR_NO_SUPPORT")
    # a malformed document is refused before any driver sees it
    error = error_of(host.DefineInterface, pb.DefineInterfaceRequest(xml="<interface"))
    assert (error.code(), reason_of(error)) == (C.INVALID_ARGUMENT, "VIR_ERR_XML_ERROR")
    # the backend refuses before it looks at an interface
    cases = [(host.StartInterface, pb.StartInterfaceRequest(name="lo")),
             (host.StopInterface, pb.StopInterfaceRequest(name="lo")),
             (host.UndefineInterface, pb.UndefineInterfaceRequest(name="lo")),
             (host.BeginInterfaceChange, pb.BeginInterfaceChangeRequest()),
             (host.CommitInterfaceChange, pb.CommitInterfaceChangeRequest()),
             (host.RollbackInterfaceChange, pb.RollbackInterfaceChangeRequest())]
    for call, request in cases:
        error = error_of(call, request)
        assert (error.code(), reason_of(error)) == (C.UNIMPLEMENTED, "VIR_ERR_NO_SUPPORT"), \
            request
    listed = [i.name for i in host.ListInterfaces(pb.ListInterfacesRequest()).interfaces]
    assert "lo" in listed and name not in listed
