"""Hostile input on every define path, and malformed requests on every method.

All seven services run as their own processes (compute on its embedded QEMU
driver, secret on its embedded driver, the rest on the host's libvirtd), as in
production, so a crash shows as a process that died. Each hostile document must
get a clean refusal within the call's one-second deadline; afterwards every
service has the same PID, its resident memory has grown by less than
``RSS_GROWTH``, and every list is what it was before: nothing was defined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from services.supervisor import wait_serving
from tests.conftest import Process, reason_of, service_process

pytestmark = pytest.mark.timeout(300)

SERVICES = ("compute", "network", "storage", "nwfilter", "secret", "nodedev", "iface")
RSS_GROWTH = 64 * 1024 * 1024
CLEAN = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


def pb(service: str) -> Any:
    return importlib.import_module(f"virtmesh.{service}.v1.{service}_service_pb2")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclasses.dataclass
class Mesh:
    state: Path
    processes: dict[str, Process]
    channels: dict[str, grpc.Channel]
    names: dict[str, str]  # the objects each define path needs, by role

    def stub(self, service: str) -> Any:
        module = importlib.import_module(f"virtmesh.{service}.v1.{service}_service_pb2_grpc")
        stub_class = next(getattr(module, n) for n in dir(module) if n.endswith("ServiceStub"))
        return stub_class(self.channels[service])

    def pid(self, service: str) -> int:
        popen = self.processes[service].popen
        assert popen is not None and popen.poll() is None, \
            f"{service} died:\n{self.processes[service].log()[-3000:]}"
        return popen.pid


def _objects(mesh: Mesh) -> None:
    """A domain, a network and a pool with one volume: what attach, snapshot, update,
    port, volume and clone documents are sent against."""
    tag = secrets.token_hex(3)
    names = {"domain": f"vmh-{tag}", "network": f"vmh-{tag}", "pool": f"vmh-{tag}",
             "volume": "seed.img"}
    compute, network, storage = pb("compute"), pb("network"), pb("storage")
    mesh.stub("compute").DefineDomain(compute.DefineDomainRequest(xml=(
        f"<domain type='qemu'><name>{names['domain']}</name><memory>65536</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>")), timeout=60)
    mesh.stub("network").DefineNetwork(network.DefineNetworkRequest(xml=(
        f"<network><name>{names['network']}</name><bridge name='vmh{tag}'/></network>")),
        timeout=30)
    pool_dir = mesh.state / "pool"
    pool_dir.mkdir()
    stub = mesh.stub("storage")
    stub.CreateStoragePool(storage.CreateStoragePoolRequest(xml=(
        f"<pool type='dir'><name>{names['pool']}</name>"
        f"<target><path>{pool_dir}</path></target></pool>")), timeout=30)
    stub.CreateStorageVolume(storage.CreateStorageVolumeRequest(pool=names["pool"], xml=(
        f"<volume><name>{names['volume']}</name><capacity>1048576</capacity>"
        "<target><format type='raw'/></target></volume>")), timeout=30)
    mesh.names = names


def _remove_objects(mesh: Mesh) -> None:
    compute, network, storage = pb("compute"), pb("network"), pb("storage")
    names = mesh.names
    for call in (
        lambda: mesh.stub("compute").UndefineDomain(compute.UndefineDomainRequest(
            name=names["domain"]), timeout=30),
        lambda: mesh.stub("network").UndefineNetwork(network.UndefineNetworkRequest(
            name=names["network"]), timeout=30),
        lambda: mesh.stub("storage").DeleteStorageVolume(storage.DeleteStorageVolumeRequest(
            pool=names["pool"], name=names["volume"]), timeout=30),
        lambda: mesh.stub("storage").StopStoragePool(storage.StopStoragePoolRequest(
            name=names["pool"]), timeout=30),
    ):
        with contextlib.suppress(grpc.RpcError):
            call()


def _wait_connected(mesh: Mesh, timeout: float = 60) -> None:
    """Until every service reaches its libvirt (a libvirtd the session just started may
    not answer yet: the services serve meanwhile, and answer UNAVAILABLE)."""
    probes = {"compute": "ListDomains", "network": "ListNetworks", "storage":
              "ListStoragePools", "nwfilter": "ListNWFilters", "secret": "ListSecrets",
              "nodedev": "ListNodeDevices", "iface": "ListInterfaces"}
    end = time.monotonic() + timeout
    for service, method in probes.items():
        request = getattr(pb(service), f"{method}Request")()
        while True:
            try:
                getattr(mesh.stub(service), method)(request, timeout=30)
                break
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > end:
                    raise
                time.sleep(0.2)


@pytest.fixture(scope="module")
def mesh(host_libvirtd: None) -> Iterator[Mesh]:
    state = Path(tempfile.mkdtemp(prefix="vmh-", dir="/tmp"))  # short socket paths
    processes: dict[str, Process] = {}
    channels: dict[str, grpc.Channel] = {}
    running = Mesh(state, processes, channels, {})
    try:
        for name in SERVICES:
            processes[name] = service_process(state, name).start()
        for name in SERVICES:
            target = f"unix:{state / 'run' / f'{name}.sock'}"
            wait_serving(target, "", 60)
            channels[name] = grpc.insecure_channel(target, options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        _wait_connected(running)
        _objects(running)
        yield running
    finally:
        if running.names:
            _remove_objects(running)
        for channel in channels.values():
            channel.close()
        for process in processes.values():
            process.stop(60)
        shutil.rmtree(state, ignore_errors=True)


# -- every define path, and the document root each one takes ------------------------

#: (service, method, root element, request fields besides the document)
PATHS: list[tuple[str, str, str, dict[str, str]]] = [
    ("compute", "DefineDomain", "domain", {}),
    ("compute", "CreateDomain", "domain", {}),
    ("compute", "AttachDevice", "disk", {"name": "domain"}),
    ("compute", "DetachDevice", "disk", {"name": "domain"}),
    ("compute", "CreateSnapshot", "domainsnapshot", {"name": "domain"}),
    ("network", "DefineNetwork", "network", {}),
    ("network", "CreateNetwork", "network", {}),
    ("network", "UpdateNetwork", "host", {"name": "network"}),
    ("network", "CreateNetworkPort", "networkport", {"name": "network"}),
    ("storage", "DefineStoragePool", "pool", {}),
    ("storage", "CreateStoragePool", "pool", {}),
    ("storage", "CreateStorageVolume", "volume", {"pool": "pool"}),
    ("storage", "CloneStorageVolume", "volume",
     {"pool": "pool", "name": "volume", "new_name": "=clone.img"}),
    ("nwfilter", "DefineNWFilter", "filter", {}),
    ("nwfilter", "CreateNWFilterBinding", "filterbinding", {}),
    ("secret", "DefineSecret", "secret", {}),
    ("nodedev", "CreateNodeDevice", "device", {}),
    ("nodedev", "DefineNodeDevice", "device", {}),
    ("iface", "DefineInterface", "interface", {}),
]


def request_for(mesh: Mesh, service: str, method: str, extra: dict[str, str],
                xml: str) -> Message:
    """The request of ``method`` carrying ``xml``; ``extra`` names the fixture's
    objects by role (or gives a literal value after ``=``)."""
    module = pb(service)
    request = getattr(module, f"{method}Request")()
    field = "device" if "device" in request.DESCRIPTOR.fields_by_name \
        and method.endswith("Device") and service == "compute" else "xml"
    setattr(request, field, xml)
    for key, role in extra.items():
        setattr(request, key, role[1:] if role.startswith("=") else mesh.names[role])
    if method == "UpdateNetwork":
        request.command = module.UPDATE_COMMAND_ADD_LAST
        request.section = module.NETWORK_SECTION_IP_DHCP_HOST
        request.config = True
    return request


def hostile_documents(root: str) -> dict[str, str]:
    """Documents meant to hurt a parser, each rooted at ``root``."""
    laughs = "".join(f"<!ENTITY l{i} '{f'&l{i - 1};' * 10}'>" for i in range(1, 10))
    return {
        "billion laughs": (f"<?xml version='1.0'?><!DOCTYPE {root} [<!ENTITY l0 'lol'>"
                           f"{laughs}]><{root}>&l9;</{root}>"),
        "external entity": (f"<!DOCTYPE {root} [<!ENTITY x SYSTEM 'file:///etc/shadow'>]>"
                            f"<{root}><name>&x;</name></{root}>"),
        "parameter entity": (f"<!DOCTYPE {root} [<!ENTITY % p SYSTEM 'http://127.0.0.1:9/'>"
                             f"%p;]><{root}/>"),
        "deep nesting": f"<{root}>" + "<a>" * 50_000 + "</a>" * 50_000 + f"</{root}>",
        "100k attributes on one element": (
            f"<{root} " + " ".join(f"a{i}='{i}'" for i in range(100_000)) + "/>"),
        "100k attributes in all": (
            f"<{root}>" + "<a b='1' c='2' d='3' e='4' f='5'/>" * 50_000 + f"</{root}>"),
        "200k elements": f"<{root}>" + "<a/>" * 200_000 + f"</{root}>",
        "10 MB": f"<{root}><description>{'x' * 10_000_000}</description></{root}>",
        "latin-1 declared": f"<?xml version='1.0' encoding='ISO-8859-1'?><{root}/>",
        "not well-formed": f"<{root}><name>x</nam></{root}>",
        "namespaced duplicate attribute": (
            f"<{root} xmlns:x='urn:x' type='a' x:type='b'/>"),
        "wrong root": "<gadget/>" if root != "gadget" else "<widget/>",
    }


def identities(response: Message) -> list[tuple[tuple[str, str], ...]]:
    """The string fields of each item a list response holds: what names an object
    (its sizes and states may change meanwhile)."""
    items = next(value for field, value in response.ListFields()
                 if field.type == FieldDescriptor.TYPE_MESSAGE and field.is_repeated) \
        if response.ListFields() else []
    return sorted(tuple((field.name, value) for field, value in item.ListFields()
                        if field.type == FieldDescriptor.TYPE_STRING) for item in items)


def lists(mesh: Mesh) -> dict[str, object]:
    """What every list the define paths could change holds (an error as its status:
    the ports of an inactive network cannot be listed, before and after)."""
    names = mesh.names
    calls: dict[str, tuple[str, Message]] = {
        "domains": ("compute", pb("compute").ListDomainsRequest(page_size=1000)),
        "snapshots": ("compute", pb("compute").ListSnapshotsRequest(name=names["domain"])),
        "networks": ("network", pb("network").ListNetworksRequest(page_size=1000)),
        "ports": ("network", pb("network").ListNetworkPortsRequest(name=names["network"])),
        "pools": ("storage", pb("storage").ListStoragePoolsRequest(page_size=1000)),
        "volumes": ("storage", pb("storage").ListStorageVolumesRequest(pool=names["pool"])),
        "filters": ("nwfilter", pb("nwfilter").ListNWFiltersRequest(page_size=1000)),
        "bindings": ("nwfilter", pb("nwfilter").ListNWFilterBindingsRequest(page_size=1000)),
        "secrets": ("secret", pb("secret").ListSecretsRequest(page_size=1000)),
        "devices": ("nodedev", pb("nodedev").ListNodeDevicesRequest(page_size=1000)),
        "interfaces": ("iface", pb("iface").ListInterfacesRequest(page_size=1000)),
    }
    found: dict[str, object] = {}
    for key, (service, request) in calls.items():
        method = type(request).__name__.removesuffix("Request")
        try:
            found[key] = identities(getattr(mesh.stub(service), method)(request, timeout=30))
        except grpc.RpcError as error:
            found[key] = f"{error.code().name}: {error.details()}"
    return found


def refused(call: Callable[..., Any], request: Message) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, timeout=1.0)
    except grpc.RpcError as error:
        return error.code(), reason_of(error) if error.code() in CLEAN else error.details() or ""
    raise AssertionError("the hostile document was accepted")


def test_hostile_documents_are_refused_on_every_define_path(mesh: Mesh) -> None:
    pids = {name: mesh.pid(name) for name in SERVICES}
    memory = {name: rss(pid) for name, pid in pids.items()}
    before = lists(mesh)
    growth = []
    for _ in range(3):
        failures = []
        for service, method, root, extra in PATHS:
            call = getattr(mesh.stub(service), method)
            for case, xml in hostile_documents(root).items():
                code, reason = refused(call, request_for(mesh, service, method, extra, xml))
                if code not in CLEAN:
                    failures.append(f"{service}.{method} {case}: {code.name} {reason}")
        assert not failures, "\n".join(failures)
        growth.append({name: rss(pid) - memory[name] for name, pid in pids.items()})
    assert {name: mesh.pid(name) for name in SERVICES} == pids
    # bounded: what one round costs, the next ones do not add to
    assert all(grown < RSS_GROWTH for grown in growth[-1].values()), growth
    assert lists(mesh) == before


def test_reasons_name_the_bound(mesh: Mesh) -> None:
    stub = mesh.stub("network")
    documents = hostile_documents("network")
    expected = {"billion laughs": "DOCTYPE_REFUSED", "external entity": "DOCTYPE_REFUSED",
                "deep nesting": "DOCUMENT_TOO_COMPLEX", "10 MB": "DOCUMENT_TOO_LARGE",
                "100k attributes on one element": "DOCUMENT_TOO_COMPLEX",
                "not well-formed": "VIR_ERR_XML_ERROR"}
    for case, reason in expected.items():
        request = pb("network").DefineNetworkRequest(xml=documents[case])
        with pytest.raises(grpc.RpcError) as caught:
            stub.DefineNetwork(request, timeout=5)
        assert (caught.value.code(), reason_of(caught.value)) == \
            (grpc.StatusCode.INVALID_ARGUMENT, reason), case
        if reason == "DOCUMENT_TOO_LARGE":
            assert "4194304" in (caught.value.details() or "")


def test_a_negative_vcpu_count_does_not_kill_compute(mesh: Mesh) -> None:
    """libvirt reads -1 as 2^32 - 1 vCPUs, allocates 32 GiB and aborts; the schema
    refuses it before the embedded driver parses it."""
    pid = mesh.pid("compute")
    module = pb("compute")
    xml = (f"<domain type='qemu'><name>vmh-{secrets.token_hex(3)}</name>"
           "<memory>65536</memory><vcpu>-1</vcpu><os><type>hvm</type></os></domain>")
    stub = mesh.stub("compute")
    for request in (module.DefineDomainRequest(xml=xml), module.CreateDomainRequest(xml=xml)):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, type(request).__name__.removesuffix("Request"))(request, timeout=10)
        assert (caught.value.code(), reason_of(caught.value)) == \
            (grpc.StatusCode.INVALID_ARGUMENT, "VIR_ERR_XML_INVALID_SCHEMA")
    assert mesh.pid("compute") == pid


def test_an_ephemeral_secret_behind_a_doctype_is_refused(mesh: Mesh) -> None:
    """libvirt 9.0's embedded secret driver crashes on ephemeral secrets; an entity
    must not hide the attribute from the guard that refuses them (UNIMPLEMENTED: the
    embedded driver lacks the lock they need)."""
    pid = mesh.pid("secret")
    stub = mesh.stub("secret")
    hidden = ("<!DOCTYPE secret [<!ENTITY yes 'yes'>]>"
              "<secret ephemeral='&yes;' private='no'><usage type='ceph'>"
              "<name>vmh-hidden</name></usage></secret>")
    plain = ("<secret ephemeral='yes' private='no'><usage type='ceph'>"
             "<name>vmh-plain</name></usage></secret>")
    expected = {hidden: (grpc.StatusCode.INVALID_ARGUMENT, "DOCTYPE_REFUSED"),
                plain: (grpc.StatusCode.UNIMPLEMENTED, "EMBEDDED_DRIVER_UNSUPPORTED")}
    for xml, (code, reason) in expected.items():
        with pytest.raises(grpc.RpcError) as caught:
            stub.DefineSecret(pb("secret").DefineSecretRequest(xml=xml), timeout=10)
        assert (caught.value.code(), reason_of(caught.value)) == (code, reason)
    assert mesh.pid("secret") == pid


@pytest.mark.parametrize(("case", "devices"), [
    ("two memory balloons", "<memballoon model='virtio'/><memballoon model='virtio'/>"),
    ("a serial device without a source path",
     "<serial type='file'><target port='0'/></serial>"),
])
def test_documents_libvirt_refuses_are_invalid_argument(mesh: Mesh, case: str,
                                                         devices: str) -> None:
    """libvirt's parsers say VIR_ERR_INTERNAL_ERROR for many a wrong document: the
    caller gets INVALID_ARGUMENT, with libvirt's message and code kept."""
    xml = (f"<domain type='qemu'><name>vmh-{secrets.token_hex(3)}</name>"
           "<memory>65536</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
           f"<devices>{devices}</devices></domain>")
    with pytest.raises(grpc.RpcError) as caught:
        mesh.stub("compute").DefineDomain(pb("compute").DefineDomainRequest(xml=xml),
                                          timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert reason_of(caught.value) in ("VIR_ERR_INTERNAL_ERROR", "VIR_ERR_XML_ERROR",
                                       "VIR_ERR_XML_INVALID_SCHEMA",
                                       "VIR_ERR_CONFIG_UNSUPPORTED"), case


def test_numa_cpus_beyond_the_vcpu_count_are_invalid_argument(mesh: Mesh) -> None:
    xml = (f"<domain type='qemu'><name>vmh-{secrets.token_hex(3)}</name>"
           "<memory>65536</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
           "<cpu><numa><cell id='0' cpus='0-3' memory='65536' unit='KiB'/></numa></cpu>"
           "</domain>")
    with pytest.raises(grpc.RpcError) as caught:
        mesh.stub("compute").DefineDomain(pb("compute").DefineDomainRequest(xml=xml),
                                          timeout=30)
    assert (caught.value.code(), reason_of(caught.value)) == \
        (grpc.StatusCode.INVALID_ARGUMENT, "VIR_ERR_INTERNAL_ERROR")
    assert "exceed" in (caught.value.details() or "")


# -- malformed requests on every method, on both sockets ------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field(number: int, data: bytes) -> bytes:
    """A length-delimited field, written by hand so it may hold what protobuf's own
    serializer would refuse (invalid UTF-8)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _first_string_field(descriptor: Any) -> int | None:
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return int(field.number)
    return None


def _raw_call(channel: grpc.Channel, service: ServiceDescriptor, method: Any,
              payload: bytes) -> grpc.StatusCode:
    """``payload`` sent as it is (no serializer) to ``method``, and the status."""
    path = f"/{service.full_name}/{method.name}"
    kind = ("stream" if method.client_streaming else "unary") + "_" + \
        ("stream" if method.server_streaming else "unary")
    multicallable: Any = getattr(channel, kind)(path)
    try:
        result = multicallable(iter([payload]) if method.client_streaming else payload,
                               timeout=10)
        if method.server_streaming:
            for _ in result:
                pass
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_malformed_requests_are_invalid_argument_on_every_method(mesh: Mesh) -> None:
    """Undecodable bytes, invalid UTF-8 and a NUL in a string field, on every method of
    every service, on the main and the read-only socket: INVALID_ARGUMENT (or, on the
    read-only socket, PERMISSION_DENIED for a method it never serves)."""
    pids = {name: mesh.pid(name) for name in SERVICES}
    failures = []
    for name in SERVICES:
        service = pb(name).DESCRIPTOR.services_by_name[
            next(iter(pb(name).DESCRIPTOR.services_by_name))]
        sockets = {"main": mesh.state / "run" / f"{name}.sock",
                   "read-only": mesh.state / "run" / f"{name}-ro.sock"}
        for socket_name, path in sockets.items():
            allowed = {grpc.StatusCode.INVALID_ARGUMENT}
            if socket_name == "read-only":
                allowed.add(grpc.StatusCode.PERMISSION_DENIED)
            with grpc.insecure_channel(f"unix:{path}") as channel:
                for method in service.methods:
                    number = _first_string_field(method.input_type)
                    payloads = {"truncated": b"\x0a\x7f"}
                    if number is not None:
                        payloads["invalid UTF-8"] = _string_field(number, b"vm\xff\xfe")
                        payloads["NUL"] = _string_field(number, b"vm\x00x")
                    for case, payload in payloads.items():
                        code = _raw_call(channel, service, method, payload)
                        if code not in allowed:
                            failures.append(f"{socket_name} {name}.{method.name} {case}: "
                                            f"{code.name}")
    assert not failures, "\n".join(failures)
    assert {name: mesh.pid(name) for name in SERVICES} == pids
