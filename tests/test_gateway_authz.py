"""Per-call authorisation through a real gateway process in front of real services.

Every service found in the descriptors runs in this process on libvirt's test
driver, so that the test can read their grpc_server_started_total: a call the
gateway denies must never have reached its backend. Callers are the development
admin certificate and bearer tokens (gateway/authn.py) for a read-only identity
and for "alice", who may use only domains named team-a-*.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from gateway import authn, policy
from gateway.authz import Authorizer, Denied, object_names, xml_name
from gateway.identity import Identity
from gateway.routes import driver_of, proxied_services
from services.common import acl, metrics, registry
from services.common.config import ConfigError
from services.common.shared import GROUPS_KEY, IDENTITY_KEY
from services.supervisor import client_credentials, wait_serving
from tests.conftest import NODE_XML, domain_xml, free_port, gateway_process, running_service
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh.storage.v1 import storage_service_pb2 as spb

pytestmark = pytest.mark.timeout(120)

POLICY = """
[roles.vm-user]
permissions = ["connect:search_domains", "domain:getattr", "domain:read", "domain:start",
               "domain:stop", "domain:init_control"]

[[grants]]
identities = ["alice"]
role = "vm-user"
objects = ["team-a-*"]
"""


@dataclasses.dataclass
class AuthzMesh:
    state_dir: Path
    target: str
    tokens: dict[str, str]

    def channel(self, who: str = "admin") -> grpc.Channel:
        """A channel whose calls are ``who``'s: the admin certificate, or a token."""
        tls = client_credentials(self.state_dir / "pki")
        if who != "admin":
            tls = grpc.composite_channel_credentials(
                tls, grpc.access_token_call_credentials(self.tokens[who]))
        return grpc.secure_channel(self.target, tls)

    def audit(self) -> list[dict[str, Any]]:
        path = self.state_dir / "log" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def spec_of(driver: str) -> Any:
    return registry.spec(driver)


@contextlib.contextmanager
def authz_mesh(state_dir: Path, policy_text: str = POLICY) -> Iterator[AuthzMesh]:
    """Every service on the test driver, and a gateway with the policy and tokens."""
    identities = authn.ensure_dev_identities(state_dir)
    alice = authn.new_token()
    identities.write_text(identities.read_text() + authn.token_entry("alice", ["team-a"], alice))
    tokens = {stem: (state_dir / "tokens" / f"{stem}.token").read_text().strip()
              for stem in authn.DEV_TOKENS}
    tokens["alice"] = alice
    (state_dir / "gateway" / "policy.toml").write_text(policy_text)
    (state_dir / "node.xml").write_text(NODE_XML)
    uri = f"test://{state_dir / 'node.xml'}"
    port = free_port()
    with contextlib.ExitStack() as stack:
        for service in proxied_services():
            driver = driver_of(service.full_name) or ""
            stack.enter_context(running_service(state_dir, uri, spec_of(driver),
                                                grace_period=0.5))
        gateway = gateway_process(state_dir, port).start()
        stack.callback(gateway.stop)
        mesh = AuthzMesh(state_dir, f"127.0.0.1:{port}", tokens)
        wait_serving(mesh.target, "", 30, client_credentials(state_dir / "pki"))
        yield mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthzMesh]:
    with authz_mesh(tmp_path_factory.mktemp("authz")) as running:
        with running.channel() as channel:
            stub = pb_grpc.ComputeServiceStub(channel)
            for name in ("team-a-vm", "team-b-vm"):
                stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml(name)), timeout=10)
        yield running


# -- calling any RPC generically ---------------------------------------------------------


def every_method() -> list[MethodDescriptor]:
    return [method for service in proxied_services() for method in service.methods]


def request_for(method: MethodDescriptor) -> Any:
    """An empty request naming the test driver's domain "alpha" where it names anything."""
    request: Any = message_factory.GetMessageClass(method.input_type)()
    field = method.input_type.fields_by_name.get("name")
    if field is not None and field.type == FieldDescriptor.TYPE_STRING and \
            not field.is_repeated:
        request.name = "alpha"
    return request


def serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def failure(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    """The code and message a call that must fail ends with."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    error: Any = caught.value
    return error.code(), error.details() or ""


def invoke(channel: grpc.Channel, method: MethodDescriptor, request: Any,
           timeout: float = 10) -> grpc.StatusCode:
    """Make the call, reading at most one response message; its status code."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    shape: Any = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    call = shape(path, request_serializer=serialize, response_deserializer=lambda data: data)
    argument = iter([request]) if method.client_streaming else request
    try:
        result = call(argument, timeout=timeout)
        if method.server_streaming:
            next(result, None)
            result.cancel()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return,attr-defined]
    return grpc.StatusCode.OK


def started(service: str) -> float:
    """Calls the in-process services have started for ``service``."""
    return sum(sample.value for family in metrics.STARTED.collect()
               for sample in family.samples
               if sample.name == "grpc_server_started_total"
               and sample.labels["grpc_service"] == service)


def domains(channel: grpc.Channel) -> list[tuple[str, int]]:
    reply = pb_grpc.ComputeServiceStub(channel).ListDomains(pb.ListDomainsRequest(), timeout=10)
    return [(domain.name, domain.state) for domain in reply.domains]


def mutating(method: MethodDescriptor) -> bool:
    return not acl.is_read_only(method, request_for(method))


# -- the read-only identity, over every RPC of every service ---------------------------


@pytest.mark.parametrize("method", [m for m in every_method() if mutating(m)],
                         ids=lambda method: method.full_name)
def test_readonly_identity_cannot_make_a_mutating_call(mesh: AuthzMesh,
                                                       method: MethodDescriptor) -> None:
    service = method.containing_service.full_name
    with mesh.channel() as admin, mesh.channel("readonly") as readonly:
        before, calls = domains(admin), started(service)
        assert invoke(readonly, method, request_for(method)) == \
            grpc.StatusCode.PERMISSION_DENIED
        assert started(service) == calls, "the denied call reached its backend"
        assert domains(admin) == before


@pytest.mark.parametrize("method", [m for m in every_method() if not mutating(m)],
                         ids=lambda method: method.full_name)
def test_readonly_identity_may_make_a_read_only_call(mesh: AuthzMesh,
                                                     method: MethodDescriptor) -> None:
    service = method.containing_service.full_name
    calls = started(service)
    with mesh.channel("readonly") as readonly:
        # Watch streams may end by the deadline; NOT_FOUND, UNIMPLEMENTED... are the
        # backend's answers and fine: what matters is that the call got there.
        timeout = 3 if method.server_streaming else 10
        assert invoke(readonly, method, request_for(method), timeout) != \
            grpc.StatusCode.PERMISSION_DENIED
    assert started(service) == calls + 1


def test_conditional_permission_read_secure_is_enforced(mesh: AuthzMesh) -> None:
    with mesh.channel("readonly") as readonly:
        stub = pb_grpc.ComputeServiceStub(readonly)
        assert "<name>alpha</name>" in stub.GetDomainXML(
            pb.GetDomainXMLRequest(name="alpha"), timeout=10).xml
        code, details = failure(stub.GetDomainXML,
                                pb.GetDomainXMLRequest(name="alpha", secure=True))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "domain:read_secure" in details


# -- per-object policy ---------------------------------------------------------------


def test_team_a_cannot_see_or_touch_team_b(mesh: AuthzMesh) -> None:
    with mesh.channel("alice") as alice, mesh.channel() as admin:
        stub = pb_grpc.ComputeServiceStub(alice)
        assert stub.GetDomain(pb.GetDomainRequest(name="team-a-vm"),
                              timeout=10).domain.name == "team-a-vm"
        cases: list[tuple[Any, Any]] = [
            (stub.GetDomain, pb.GetDomainRequest(name="team-b-vm")),
            (stub.StartDomain, pb.StartDomainRequest(name="team-b-vm")),
            (stub.GetDomainXML, pb.GetDomainXMLRequest(name="team-b-vm"))]
        for call, request in cases:
            code, details = failure(call, request)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "'team-b-vm'" in details
        assert dict(domains(admin))["team-b-vm"] == pb.DOMAIN_STATE_SHUTOFF
        # a listing shows alice her domains only; the admin sees them all
        assert [name for name, _ in domains(alice)] == ["team-a-vm"]
        assert {"alpha", "team-a-vm", "team-b-vm"} <= {name for name, _ in domains(admin)}
        stats = stub.GetDomainStats(pb.GetDomainStatsRequest(), timeout=10)
        assert [entry.name for entry in stats.stats] == ["team-a-vm"]
        # not allowed by her role on any domain: denied even for her own
        code, details = failure(stub.DefineDomain,
                                pb.DefineDomainRequest(xml=domain_xml("team-a-new")))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "domain:write on domain 'team-a-new'" in details


def test_watch_drops_events_of_objects_the_caller_may_not_see(mesh: AuthzMesh) -> None:
    with mesh.channel("alice") as alice, mesh.channel() as admin:
        admin_stub = pb_grpc.ComputeServiceStub(admin)
        theirs = pb_grpc.ComputeServiceStub(alice).WatchDomainEvents(
            pb.WatchDomainEventsRequest(), timeout=60)
        everything = admin_stub.WatchDomainEvents(pb.WatchDomainEventsRequest(), timeout=60)
        theirs.initial_metadata()  # subscribed (the backend sends headers once it is)
        everything.initial_metadata()
        seen: dict[str, list[str]] = {"alice": [], "admin": []}

        def first(stream: Any, who: str) -> None:
            with contextlib.suppress(grpc.RpcError):
                seen[who].append(next(stream).name)

        readers = [threading.Thread(target=first, args=(theirs, "alice")),
                   threading.Thread(target=first, args=(everything, "admin"))]
        for reader in readers:
            reader.start()
        try:
            admin_stub.StartDomain(pb.StartDomainRequest(name="team-b-vm"), timeout=10)
            admin_stub.StartDomain(pb.StartDomainRequest(name="team-a-vm"), timeout=10)
            for reader in readers:
                reader.join(30)
        finally:
            theirs.cancel()
            everything.cancel()
            for name in ("team-a-vm", "team-b-vm"):
                admin_stub.DestroyDomain(pb.DestroyDomainRequest(name=name), timeout=10)
    assert seen == {"admin": ["team-b-vm"], "alice": ["team-a-vm"]}


def test_a_permission_outside_the_role_is_denied(mesh: AuthzMesh) -> None:
    """alice's role lacks connect:getattr, so she may not even ask for versions."""
    with mesh.channel("alice") as alice:
        stub = pb_grpc.ComputeServiceStub(alice)
        code, details = failure(stub.GetVersion, pb.GetVersionRequest())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "connect:getattr" in details


# -- identity metadata ---------------------------------------------------------------------


def test_client_cannot_spoof_its_identity_to_a_backend(tmp_path: Path) -> None:
    from tests.test_gateway import recording_backend, running_gateway

    with recording_backend(tmp_path / "sockets") as backend, \
            running_gateway(tmp_path / "state", "--socket-dir", str(tmp_path / "sockets")) \
            as (_, target), \
            grpc.secure_channel(target, client_credentials(tmp_path / "state" / "pki")) \
            as channel:
        pb_grpc.ComputeServiceStub(channel).GetDomain(
            pb.GetDomainRequest(name="spoof"), timeout=10,
            metadata=((IDENTITY_KEY, "root"), (GROUPS_KEY, "admin,team-b")))
    seen = backend.seen["spoof"].metadata
    assert seen[IDENTITY_KEY] == authn.DEV_ADMIN_DN
    assert seen[GROUPS_KEY] == "admin"


# -- the decisions themselves (no server needed) -------------------------------------------


COMPUTE = pb.DESCRIPTOR.services_by_name["ComputeService"]
ALICE = Identity("alice", frozenset({"team-a"}), "token")


def authorizer(text: str = POLICY) -> Authorizer:
    import tomllib

    return Authorizer(policy.parse(tomllib.loads(text)))


def test_a_storage_volume_is_named_pool_slash_volume() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool

    file = descriptor_pb2.FileDescriptorProto(name="authz_volume_test.proto",
                                              package="authztest", syntax="proto3")
    message = file.message_type.add(name="VolumeRequest")
    for number, name in enumerate(("pool", "name"), 1):
        message.field.add(name=name, number=number, type=FieldDescriptor.TYPE_STRING,
                          label=FieldDescriptor.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    request = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("authztest.VolumeRequest"))(pool="team-a-pool", name="disk")
    assert object_names("storage_vol", request) == ("team-a-pool/disk",)
    assert object_names("storage_pool", request) == ("team-a-pool",)


def test_object_names_come_from_name_names_or_the_xmls_name() -> None:
    assert object_names("domain", pb.GetDomainRequest(name="x")) == ("x",)
    assert object_names("domain", pb.GetDomainStatsRequest(names=["a", "b"])) == ("a", "b")
    assert object_names("domain", pb.DefineDomainRequest(xml=domain_xml("y"))) == ("y",)
    assert object_names("domain", pb.DefineDomainRequest(xml="<domain><name>")) is None


def test_malformed_xml_is_denied_to_restricted_identities_only() -> None:
    authz = authorizer(POLICY.replace('"domain:getattr"', '"domain:getattr", "domain:write",'
                                      ' "domain:save"'))
    define = COMPUTE.methods_by_name["DefineDomain"]
    with pytest.raises(Denied, match="does not name"):
        authz.authorize(ALICE, define, pb.DefineDomainRequest(xml="<domain"))
    admin = Identity("root", frozenset({"admin"}))
    assert authz.authorize(admin, define, pb.DefineDomainRequest(xml="<domain")).objects == ()
    assert authz.authorize(ALICE, define, pb.DefineDomainRequest(
        xml=domain_xml("team-a-1"))).objects == ("team-a-1",)


def test_builtin_roles() -> None:
    authz = authorizer("")
    operator = Identity("op", frozenset({"operator"}))
    readonly = Identity("ro", frozenset({"readonly"}))
    nobody = Identity("nobody")
    assert authz.visible(operator, "domain", "x") and authz.visible(readonly, "secret", "s")
    assert not authz.visible(nobody, "domain", "x")
    for permission, allowed in (("domain:start", True), ("domain:delete", False),
                                ("secret:read_secure", False), ("storage_vol:format", False),
                                ("domain:read_secure", False), ("network:write", True)):
        assert authz.policy.allows(operator, permission, "x") is allowed, permission
    assert not authz.policy.allows(readonly, "domain:start", "x")
    assert authz.policy.allows(readonly, "connect:search_secrets", None)


@pytest.mark.parametrize(("text", "error"), [
    ("[[grants]]\nidentities = ['a']\nrole = 'nope'\n", "unknown role 'nope'"),
    ("[[grants]]\nidentities = ['a']\npermissions = ['domain:launch']\n",
     "'domain:launch' matches none of libvirt's permissions"),
    ("[[grants]]\npermissions = ['domain:start']\n", "grants to nobody"),
    ("[[grants]]\nidentities = ['a']\n", "needs either role or permissions"),
    ("[roles.admin]\npermissions = ['*:*']\n", "built-in role cannot be redefined"),
    ("[[grants]]\nidentities = ['a']\nrole = 'admin'\nobject = ['x']\n", "unknown keys"),
    ("grants = 3\n", "array of tables"),
])
def test_bad_policy_is_refused_with_the_reason(text: str, error: str) -> None:
    import tomllib

    with pytest.raises(ConfigError, match=error):
        policy.parse(tomllib.loads(text))


def test_policy_file_is_reloaded_and_a_bad_one_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    authz = Authorizer.from_file(path)
    assert authz.visible(ALICE, "domain", "team-a-1")
    path.write_text(POLICY.replace("team-a-*", "team-c-*"))
    authz.reload(force=True)
    assert not authz.visible(ALICE, "domain", "team-a-1")
    path.write_text("[[grants]]\nrole = 1\n")
    authz.reload(force=True)
    assert authz.visible(ALICE, "domain", "team-c-1")


STORAGE = spb.DESCRIPTOR.services_by_name["StorageService"]
TEAM_A_STORAGE = """
[[grants]]
identities = ["alice"]
permissions = ["storage_pool:*", "storage_vol:*"]
objects = ["team-a-pool", "team-a-pool/*"]
"""


def test_a_uuid_is_judged_by_unrestricted_grants_only() -> None:
    """The services take a UUID where a name goes: a glob that happens to match its
    text ("db*") must not let it reach another team's object."""
    authz = authorizer(POLICY.replace('["team-a-*"]', '["team-a-*", "db*"]'))
    destroy = COMPUTE.methods_by_name["DestroyDomain"]
    assert authz.authorize(ALICE, destroy, pb.DestroyDomainRequest(name="db-1")).objects
    with pytest.raises(Denied, match="does not name"):
        authz.authorize(ALICE, destroy, pb.DestroyDomainRequest(
            name="db5e0000-0000-4000-8000-000000000001"))


def test_an_xml_name_is_read_as_libvirt_reads_it() -> None:
    assert xml_name("<domain><name> web3 </name></domain>") == " web3 "
    # libvirt reads this as "web2"; ambiguous names count as unreadable
    assert xml_name("<domain><name>web<x/>2</name></domain>") is None
    assert xml_name("<domain><name>a</name><name>b</name></domain>") is None
    authz = authorizer(POLICY.replace('"domain:getattr"', '"domain:getattr", "domain:write",'
                                      ' "domain:save"').replace('["team-a-*"]', '["web"]'))
    define = COMPUTE.methods_by_name["DefineDomain"]
    with pytest.raises(Denied):
        authz.authorize(ALICE, define, pb.DefineDomainRequest(
            xml="<domain><name>web<x/>2</name></domain>"))


def test_a_clone_needs_create_where_the_copy_goes() -> None:
    authz = authorizer(TEAM_A_STORAGE)
    clone = STORAGE.methods_by_name["CloneStorageVolume"]
    assert authz.authorize(ALICE, clone, spb.CloneStorageVolumeRequest(
        pool="team-a-pool", name="x", new_name="y")).objects == (
            "team-a-pool/x", "team-a-pool/y")
    for copy in (spb.CloneStorageVolumeRequest(pool="team-a-pool", name="x", new_name="y",
                                               target_pool="team-b-pool"),
                 spb.CloneStorageVolumeRequest(pool="team-a-pool", name="x",
                                               target_pool="team-b-pool",
                                               xml="<volume><name>y</name></volume>")):
        with pytest.raises(Denied, match="team-b-pool/y"):
            authz.authorize(ALICE, clone, copy)


def test_a_rename_needs_the_grant_on_the_new_name_too() -> None:
    authz = authorizer(POLICY.replace('"domain:init_control"',
                                      '"domain:init_control", "domain:write", "domain:save"'))
    rename = COMPUTE.methods_by_name["RenameDomain"]
    assert authz.authorize(ALICE, rename, pb.RenameDomainRequest(
        name="team-a-web", new_name="team-a-db")).objects == ("team-a-web", "team-a-db")
    with pytest.raises(Denied, match="team-b-web"):
        authz.authorize(ALICE, rename, pb.RenameDomainRequest(name="team-a-web",
                                                              new_name="team-b-web"))


def test_a_volume_without_its_pool_is_for_unrestricted_grants_only() -> None:
    """Without a pool the service looks the name up as a path or key in every pool."""
    authz = authorizer(TEAM_A_STORAGE)
    delete = STORAGE.methods_by_name["DeleteStorageVolume"]
    assert authz.authorize(ALICE, delete, spb.DeleteStorageVolumeRequest(
        pool="team-a-pool", name="x")).objects == ("team-a-pool/x",)
    with pytest.raises(Denied, match="does not name"):
        authz.authorize(ALICE, delete, spb.DeleteStorageVolumeRequest(name="team-a-pool/x"))


def test_items_without_a_name_are_dropped_when_the_list_is_filtered() -> None:
    """Network ports are known by UUID only: a caller whose port grants are limited by
    name cannot be shown any of them."""
    from virtmesh.network.v1 import network_service_pb2 as npb

    authz = authorizer("""
[[grants]]
identities = ["alice"]
permissions = ["network:read", "network:search_ports", "network_port:getattr"]
objects = ["team-a-*"]
""")
    ports = npb.DESCRIPTOR.services_by_name["NetworkService"].methods_by_name["ListNetworkPorts"]
    decision = authz.authorize(ALICE, ports, npb.ListNetworkPortsRequest(name="team-a-net"))
    reply = npb.ListNetworkPortsResponse(ports=[npb.NetworkPort(network="team-a-net",
                                                                uuid="u", owner_name="vm")])
    assert authz.filter_message(decision, reply, streamed=False)
    assert not reply.ports
    admin = Identity("root", frozenset({"admin"}))
    everything = authz.authorize(admin, ports, npb.ListNetworkPortsRequest(name="team-a-net"))
    reply = npb.ListNetworkPortsResponse(ports=[npb.NetworkPort(uuid="u")])
    assert authz.filter_message(everything, reply, streamed=False) and len(reply.ports) == 1
