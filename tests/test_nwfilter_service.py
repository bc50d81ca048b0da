"""The nwfilter service over its UNIX socket, against the host's libvirt daemon.

libvirt's test driver has no network filters, so every test uses the host's
nwfilter driver with unique "vmtest-" names and removes what it made. A binding
needs a port device: a tap device the test creates (and deletes).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import libvirt
import pytest

from services.nwfilter import SPEC
from tests.conftest import error_of, reason_of, running_service
from virtmesh.nwfilter.v1 import nwfilter_service_pb2 as pb
from virtmesh.nwfilter.v1 import nwfilter_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

Stub = pb_grpc.NWFilterServiceStub
URI = "nwfilter:///system"


def filter_xml(name: str, uuid_: str = "", port: int = 22) -> str:
    return (f"<filter name='{name}' chain='ipv4'>" + (f"<uuid>{uuid_}</uuid>" if uuid_ else "")
            + f"<rule action='accept' direction='in' priority='500'><tcp dstportstart='{port}'/>"
            "</rule><filterref filter='" + f"{name}-inner'/></filter>")


def binding_xml(port_dev: str, filter_name: str, mac: str = "52:54:00:aa:bb:cc") -> str:
    return (f"<filterbinding><owner><name>{port_dev}-vm</name>"
            "<uuid>ec20f7ec-f202-4c29-b12f-4fdfad227207</uuid></owner>"
            f"<portdev name='{port_dev}'/><mac address='{mac}'/>"
            f"<filterref filter='{filter_name}'><parameter name='PORT' value='22'/>"
            "<parameter name='PORT' value='80'/></filterref></filterbinding>")


def our_filters(stub: Stub, prefix: str) -> list[str]:
    return [f.name for f in stub.ListNWFilters(pb.ListNWFiltersRequest()).nwfilters
            if f.name.startswith(prefix)]


def our_bindings(stub: Stub, prefix: str) -> list[str]:
    return [b.name for b in stub.ListNWFilterBindings(pb.ListNWFilterBindingsRequest()).bindings
            if b.name.startswith(prefix)]


def remove_host_objects(prefix: str) -> None:
    """Delete every host binding and filter whose name starts with ``prefix``
    (bindings first: they keep their filters in use; inner filters last)."""
    conn = libvirt.open(URI)
    try:
        for binding in conn.listAllNWFilterBindings(0):
            if binding.portDev().startswith(prefix):
                binding.delete()
        for nwfilter in sorted(conn.listAllNWFilters(0), key=lambda f: f.name().endswith("-inner")):
            if nwfilter.name().startswith(prefix):
                nwfilter.undefine()
    finally:
        conn.close()


@pytest.fixture
def system(tmp_path: Path, host_libvirtd: None) -> Iterator[tuple[Stub, str]]:
    """A stub of an in-process service on the host's nwfilter driver, and the name
    prefix this test's objects must use (they are removed afterwards)."""
    prefix = f"vmtest-{uuid.uuid4().hex[:6]}"
    try:
        with running_service(tmp_path, URI, spec=SPEC, grace_period=0.5) as daemon, \
                grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            yield Stub(channel), prefix
    finally:
        remove_host_objects(prefix)


@pytest.fixture
def tap(system: tuple[Stub, str]) -> Iterator[str]:
    """A tap device to bind filters to, named with the test's prefix (15 characters
    at most, the kernel's limit)."""
    name = system[1]
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "tuntap", "del", "dev", name, "mode", "tap"], check=True)


def define_pair(stub: Stub, name: str) -> pb.NWFilter:
    """``name`` and the ``name-inner`` filter it includes."""
    stub.DefineNWFilter(pb.DefineNWFilterRequest(
        xml=f"<filter name='{name}-inner' chain='root'/>"))
    return stub.DefineNWFilter(pb.DefineNWFilterRequest(xml=filter_xml(name))).nwfilter


def test_define_read_and_undefine(system: tuple[Stub, str]) -> None:
    stub, prefix = system
    defined = define_pair(stub, prefix)
    assert defined.name == prefix and uuid.UUID(defined.uuid)
    assert (defined.chain, defined.rule_count, list(defined.filter_refs)) == (
        "ipv4", 1, [f"{prefix}-inner"])
    assert defined.priority == -700  # libvirt's default for the ipv4 chain
    assert stub.GetNWFilter(pb.GetNWFilterRequest(name=defined.uuid)).nwfilter == defined
    xml = stub.GetNWFilterXML(pb.GetNWFilterXMLRequest(name=prefix)).xml
    assert f"<uuid>{defined.uuid}</uuid>" in xml and "dstportstart='22'" in xml

    # redefining with the same name and UUID changes the filter
    changed = stub.DefineNWFilter(pb.DefineNWFilterRequest(
        xml=filter_xml(prefix, defined.uuid, port=2222))).nwfilter
    assert changed.uuid == defined.uuid
    assert "dstportstart='2222'" in stub.GetNWFilterXML(
        pb.GetNWFilterXMLRequest(name=prefix)).xml

    stub.UndefineNWFilter(pb.UndefineNWFilterRequest(name=defined.uuid))
    stub.UndefineNWFilter(pb.UndefineNWFilterRequest(name=f"{prefix}-inner"))
    assert our_filters(stub, prefix) == []
    error = error_of(stub.GetNWFilter, pb.GetNWFilterRequest(name=prefix))
    assert error.code() == grpc.StatusCode.NOT_FOUND and reason_of(error) == "VIR_ERR_NO_NWFILTER"


def test_pagination(system: tuple[Stub, str]) -> None:
    stub, prefix = system
    for i in range(5):
        stub.DefineNWFilter(pb.DefineNWFilterRequest(xml=f"<filter name='{prefix}-{i}'/>"))
    pages, token = [], ""
    while True:
        reply = stub.ListNWFilters(pb.ListNWFiltersRequest(page_size=2, page_token=token))
        pages.append([f.name for f in reply.nwfilters])
        token = reply.next_page_token
        if not token:
            break
    listed = sum(pages, [])
    assert all(len(page) <= 2 for page in pages) and listed == sorted(listed)
    assert [name for name in listed if name.startswith(prefix)] == [
        f"{prefix}-{i}" for i in range(5)]
    error = error_of(stub.ListNWFilters, pb.ListNWFiltersRequest(page_token="garbage"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(stub.ListNWFilterBindings, pb.ListNWFilterBindingsRequest(page_size=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_binding_round_trip(system: tuple[Stub, str], tap: str) -> None:
    stub, prefix = system
    define_pair(stub, prefix)
    created = stub.CreateNWFilterBinding(pb.CreateNWFilterBindingRequest(
        xml=binding_xml(tap, prefix))).binding
    assert (created.name, created.filter, created.owner_name, created.mac) == (
        tap, prefix, f"{tap}-vm", "52:54:00:aa:bb:cc")
    assert created.owner_uuid == "ec20f7ec-f202-4c29-b12f-4fdfad227207"
    assert dict(created.parameters) == {"MAC": "52:54:00:aa:bb:cc", "PORT": "22,80"}
    assert our_bindings(stub, prefix) == [tap]
    assert stub.GetNWFilterBinding(pb.GetNWFilterBindingRequest(name=tap)).binding == created
    xml = stub.GetNWFilterBindingXML(pb.GetNWFilterBindingXMLRequest(name=tap)).xml
    assert f"<portdev name='{tap}'/>" in xml

    error = error_of(stub.CreateNWFilterBinding, pb.CreateNWFilterBindingRequest(
        xml=binding_xml(tap, prefix, mac="52:54:00:aa:bb:dd")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = error_of(stub.UndefineNWFilter, pb.UndefineNWFilterRequest(name=prefix))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # the binding uses it
    assert reason_of(error) == "VIR_ERR_OPERATION_INVALID"

    stub.DeleteNWFilterBinding(pb.DeleteNWFilterBindingRequest(name=tap))
    assert our_bindings(stub, prefix) == []
    for call, request in (
            (stub.GetNWFilterBinding, pb.GetNWFilterBindingRequest(name=tap)),
            (stub.GetNWFilterBindingXML, pb.GetNWFilterBindingXMLRequest(name=tap)),
            (stub.DeleteNWFilterBinding, pb.DeleteNWFilterBindingRequest(name=tap))):
        error = error_of(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(error) == "VIR_ERR_NO_NWFILTER_BINDING"
    stub.UndefineNWFilter(pb.UndefineNWFilterRequest(name=prefix))  # no longer in use


def test_bad_input_gets_precise_status_and_leaves_nothing(system: tuple[Stub, str],
                                                          tap: str) -> None:
    stub, prefix = system
    for xml in (f"<filter name='{prefix}'", "<filter/>", f"<filter name='{prefix}/x'/>",
                f"<filter name='{prefix}' chain='bogus'/>",
                f"<filter name='{prefix}' priority='abc'/>",
                f"<filter name='{prefix}'><uuid>zzz</uuid></filter>",
                f"<filter name='{prefix}'><rule action='accept' direction='sideways'/></filter>",
                f"<filter name='{prefix}'><rule action='accept' direction='in'>"
                "<tcp dstportstart='99999'/></rule></filter>"):
        error = error_of(stub.DefineNWFilter, pb.DefineNWFilterRequest(xml=xml))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (xml, error.details())
    error = error_of(stub.DefineNWFilter, pb.DefineNWFilterRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "xml" in str(error.details())
    assert our_filters(stub, prefix) == []

    first = stub.DefineNWFilter(pb.DefineNWFilterRequest(
        xml=f"<filter name='{prefix}'/>")).nwfilter
    error = error_of(stub.DefineNWFilter, pb.DefineNWFilterRequest(
        xml=f"<filter name='{prefix}'><uuid>{uuid.uuid4()}</uuid></filter>"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS  # same name, other UUID
    error = error_of(stub.DefineNWFilter, pb.DefineNWFilterRequest(
        xml=f"<filter name='{prefix}-2'><uuid>{first.uuid}</uuid></filter>"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS  # same UUID, other name
    assert our_filters(stub, prefix) == [prefix]

    good = binding_xml(tap, prefix)
    for xml in ("<filterbinding>", "<filterbinding/>",
                good.replace("<mac address='52:54:00:aa:bb:cc'/>", ""),
                good.replace("52:54:00:aa:bb:cc", "zz"),
                good.replace(f"<owner><name>{tap}-vm</name>", "<owner>")):
        error = error_of(stub.CreateNWFilterBinding, pb.CreateNWFilterBindingRequest(xml=xml))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (xml, error.details())
    error = error_of(stub.CreateNWFilterBinding, pb.CreateNWFilterBindingRequest(
        xml=binding_xml(tap, f"{prefix}-missing")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert our_bindings(stub, prefix) == []

    for call, request in ((stub.GetNWFilter, pb.GetNWFilterRequest(name=f"{prefix}-none")),
                          (stub.GetNWFilter, pb.GetNWFilterRequest(name=str(uuid.uuid4()))),
                          (stub.GetNWFilterXML, pb.GetNWFilterXMLRequest(name=f"{prefix}-x")),
                          (stub.UndefineNWFilter, pb.UndefineNWFilterRequest(name=f"{prefix}-x")),
                          (stub.GetNWFilterBinding,
                           pb.GetNWFilterBindingRequest(name=f"{prefix}-x"))):
        error = error_of(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, request
    for bad_call, bad_request in ((stub.GetNWFilter, pb.GetNWFilterRequest()),
                                  (stub.GetNWFilterBinding, pb.GetNWFilterBindingRequest()),
                                  (stub.CreateNWFilterBinding, pb.CreateNWFilterBindingRequest())):
        error = error_of(bad_call, bad_request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad_request
