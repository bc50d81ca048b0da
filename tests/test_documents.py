"""services/common/documents.py (the checks before libvirt parses a caller's XML),
the parse sandbox, and the caller's deadline on the way to libvirt."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.common import deadline
from services.common.documents import Limits, check
from services.common.errors import ServiceError
from services.common.sandbox import ParseSandbox
from tests.conftest import running_service
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

SMALL = Limits(max_bytes=1000, max_depth=4, max_elements=10, max_attributes=12,
               max_attributes_per_element=5, max_name_bytes=8)


def refusal(xml: str, **kwargs: object) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(ServiceError) as caught:
        check(xml, **kwargs)  # type: ignore[arg-type]
    return caught.value.code, caught.value.reason, caught.value.message


@pytest.mark.parametrize(("xml", "reason", "said"), [
    ("<a>" + "x" * 1000 + "</a>", "DOCUMENT_TOO_LARGE", "1000 libvirt accepts"),
    ("<a>" + "é" * 600 + "</a>", "DOCUMENT_TOO_LARGE", "1207 bytes"),  # bytes, not chars
    ("<a><b><c><d><e/></d></c></b></a>", "DOCUMENT_TOO_COMPLEX", "deeper than 4"),
    ("<a>" + "<b/>" * 10 + "</a>", "DOCUMENT_TOO_COMPLEX", "more than 10 elements"),
    ("<a b='1' c='2' d='3' e='4' f='5' g='6'/>", "DOCUMENT_TOO_COMPLEX", "<a> has 6"),
    ("<a>" + "<b c='1' d='2' e='3'/>" * 5 + "</a>", "DOCUMENT_TOO_COMPLEX",
     "more than 12 attributes"),
    ("<!DOCTYPE a><a/>", "DOCTYPE_REFUSED", "DOCTYPE"),
    ("<!DOCTYPE a [<!ENTITY e 'x'>]><a>&e;</a>", "DOCTYPE_REFUSED", "DOCTYPE"),
    ("<?xml version='1.0' encoding='UTF-16'?><a/>", "VIR_ERR_XML_ERROR", "UTF-16"),
    ("<a xmlns:x='urn:x' name='1' x:name='2'/>", "VIR_ERR_XML_ERROR", "local name"),
    ("<a>\x00</a>", "VIR_ERR_XML_ERROR", "NUL"),
    ("<a><b></a>", "VIR_ERR_XML_ERROR", "line 1, column"),
    ("<a/><b/>", "VIR_ERR_XML_ERROR", "not well-formed"),
    ("<a>&undeclared;</a>", "VIR_ERR_XML_ERROR", "undefined entity"),
    ("<b/>", "VIR_ERR_XML_ERROR", "expected <a>"),
    ("<a><name>123456789</name></a>", "NAME_TOO_LONG", "longer than 8 bytes"),
    ("<a><name>1234<!-- -->56789</name></a>", "NAME_TOO_LONG", "longer than 8 bytes"),
    ("<a><name>éééée</name></a>", "NAME_TOO_LONG", "longer than 8 bytes"),  # bytes
    ("<a name='123456789'/>", "NAME_TOO_LONG", "longer than 8 bytes"),
])
def test_documents_past_the_bounds_are_refused(xml: str, reason: str, said: str) -> None:
    code, got, message = refusal(xml, root="a", limits=SMALL)
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert said in message and message.startswith("xml: ")


def test_documents_within_the_bounds_pass_with_their_root() -> None:
    document = check("<?xml version='1.0' encoding='utf-8'?>\n<x:a xmlns:x='urn:x' "
                     "ephemeral='yes' private='no'><b/><b/></x:a>", root="a", limits=SMALL)
    assert document.root == "a"
    assert document.attributes == {"x": "urn:x", "ephemeral": "yes", "private": "no"}
    assert check("<disk type='file'/>", fragment=True).root == "disk"
    # only the object's own name is bounded, not a <name> deeper down
    assert check("<a name='12345678'><name>12345678</name><b><name>123456789</name></b></a>",
                 limits=SMALL).root == "a"
    code, _, message = refusal("<?xml version='1.0'?><disk/>", fragment=True)
    assert "fragment" in message
    code, reason, _ = refusal("")
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD")


def test_a_passed_deadline_stops_the_check() -> None:
    deadline.set_remaining(-1)
    try:
        code, reason, message = refusal("<a/>")
    finally:
        deadline.set_remaining(None)
    assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_PASSED")
    assert "nothing was changed" in message


# -- the parse sandbox ---------------------------------------------------------------

DOMAIN = ("<domain type='qemu'><name>sandboxed</name><memory>65536</memory>"
          "<vcpu>{}</vcpu><os><type>hvm</type></os></domain>")


@pytest.fixture
def sandbox() -> Iterator[ParseSandbox]:
    box = ParseSandbox(timeout=2)
    try:
        yield box
    finally:
        box.close()


def child_pid(box: ParseSandbox) -> int:
    assert box._child is not None  # noqa: SLF001 - the test kills the child on purpose
    return box._child.pid  # noqa: SLF001


def test_the_sandbox_refuses_schema_errors_and_passes_the_rest(sandbox: ParseSandbox) -> None:
    sandbox.parse("domain", DOMAIN.format(1))
    with pytest.raises(ServiceError) as caught:
        sandbox.parse("domain", DOMAIN.format(-1))
    assert (caught.value.code, caught.value.reason) == \
        (grpc.StatusCode.INVALID_ARGUMENT, "VIR_ERR_XML_INVALID_SCHEMA")
    sandbox.parse("device", "<disk type='file' device='disk'><source file='/x'/>"
                            "<target dev='vda'/></disk>")
    sandbox.parse("network", "<network><name>n</name></network>")


def test_a_crashed_parser_refuses_the_document_and_is_replaced(sandbox: ParseSandbox) -> None:
    sandbox.parse("domain", DOMAIN.format(1))
    first = child_pid(sandbox)
    os.kill(first, signal.SIGSTOP)  # the next document "crashes" it mid-parse
    threading.Timer(0.3, os.kill, (first, signal.SIGSEGV)).start()
    threading.Timer(0.35, os.kill, (first, signal.SIGCONT)).start()
    with pytest.raises(ServiceError) as caught:
        sandbox.parse("domain", DOMAIN.format(2))
    assert (caught.value.code, caught.value.reason) == \
        (grpc.StatusCode.INVALID_ARGUMENT, "LIBVIRT_PARSER_CRASHED")
    sandbox.parse("domain", DOMAIN.format(2))
    assert child_pid(sandbox) != first


def test_a_parser_that_hangs_is_killed(sandbox: ParseSandbox) -> None:
    sandbox.parse("domain", DOMAIN.format(1))
    first = child_pid(sandbox)
    os.kill(first, signal.SIGSTOP)
    with pytest.raises(ServiceError) as caught:
        sandbox.parse("domain", DOMAIN.format(2))
    assert caught.value.reason == "DOCUMENT_TOO_COMPLEX"
    assert not Path(f"/proc/{first}").exists() or \
        Path(f"/proc/{first}/stat").read_text().split()[2] == "Z"
    sandbox.parse("domain", DOMAIN.format(2))


# -- the caller's deadline, end to end -------------------------------------------------


def domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory>65536</memory><vcpu>1</vcpu>"
            "<os><type>hvm</type></os></domain>")


def defined_within(stub: pb_grpc.ComputeServiceStub, name: str, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while True:
        listed = stub.ListDomains(pb.ListDomainsRequest(page_size=1000), timeout=30)
        if name in {domain.name for domain in listed.domains}:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def test_a_define_whose_caller_gave_up_defines_nothing(
        tmp_path: Path, node_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's deadline passes while the service works on its document (held in
    the parse sandbox here, as a slow parse would): the define does not go on."""
    received = threading.Event()
    original_parse = ParseSandbox.parse

    def slow_parse(self: ParseSandbox, kind: str, xml: str) -> None:
        received.set()
        time.sleep(1.5)  # past the caller's deadline below
        original_parse(self, kind, xml)

    monkeypatch.setattr(ParseSandbox, "parse", slow_parse)
    with running_service(tmp_path, node_uri, grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = pb_grpc.ComputeServiceStub(channel)

        def define_in_a_hurry(name: str) -> None:
            received.clear()
            with pytest.raises(grpc.RpcError) as caught:
                stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml(name)), timeout=1)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert received.is_set(), "the call never reached the service"

        # first with the deadline ignored: the abandoned define does land (so this
        # test can fail), and how long it takes bounds the wait below
        with monkeypatch.context() as patch:
            patch.setattr(deadline, "remaining", lambda: float("inf"))
            started = time.monotonic()
            control = f"control-{secrets.token_hex(3)}"
            define_in_a_hurry(control)
            assert defined_within(stub, control, 30)
            landed = time.monotonic() - started
        name = f"hurried-{secrets.token_hex(3)}"
        define_in_a_hurry(name)
        assert not defined_within(stub, name, 3 * landed + 1)
