"""Who gets through the gateway: admitted certificates and bearer tokens, nobody else.

Real gateway processes in front of a real compute service (test driver) that runs
in this process, so its own RPC counter shows whether a refused call ever reached
it. Certificates of every kind come from gateway/pki.py, signed by the dev CA or
by a stranger's.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import REGISTRY

from gateway import authn, pki
from gateway.identity import AuthenticationError
from gateway.pki import ensure_dev_pki, is_dev_ca
from services.supervisor import client_credentials, wait_serving
from tests.conftest import NODE_XML, Process, free_port, gateway_process, running_service
from tests.test_gateway import rpc_error, wait_until
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh_client import cli
from virtmesh_client.client import Client, ConfigError

pytestmark = pytest.mark.timeout(120)

ADMIN_DN = "O=virtmesh,CN=admin"
NOW = datetime.datetime.now(datetime.UTC)


def backend_calls(method: str = "ListDomains", kind: str = "unary") -> float:
    """Calls the in-process compute service has started (its go-grpc-prometheus counter)."""
    return REGISTRY.get_sample_value("grpc_server_started_total", {
        "grpc_type": kind, "grpc_service": "virtmesh.compute.v1.ComputeService",
        "grpc_method": method}) or 0.0


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: pki.Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def client_pair(pki_dir: Path, common_name: str, *, organization: str = "virtmesh",
                usage: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
                stranger: bool = False, not_before: datetime.datetime | None = None,
                days: int = 30) -> tuple[bytes, bytes]:
    """(key, certificate) PEM, signed by the dev CA in ``pki_dir`` or by a new CA."""
    if stranger:
        ca_key = pki.new_key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "virtmesh development CA"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "virtmesh")])
        pki.issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    else:
        ca_cert, ca_key = pki.load_pair(pki_dir, "ca")
        ca_name = ca_cert.subject
    key = pki.new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = pki.issue(subject, key, ca_name, ca_key, usage=usage, not_before=not_before,
                     days=days)
    return key_pem(key), pem(cert)


def credentials(pki_dir: Path, pair: tuple[bytes, bytes] | None = None
                ) -> grpc.ChannelCredentials:
    ca = (pki_dir / "ca.crt").read_bytes()
    if pair is None:
        return grpc.ssl_channel_credentials(ca)
    return grpc.ssl_channel_credentials(ca, *pair)


def with_token(channel_credentials: grpc.ChannelCredentials, token: str
               ) -> grpc.ChannelCredentials:
    return grpc.composite_channel_credentials(channel_credentials,
                                              grpc.access_token_call_credentials(token))


def list_domains(target: str, channel_credentials: grpc.ChannelCredentials,
                 metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """The reply, or the error the call failed with."""
    with grpc.secure_channel(target, channel_credentials) as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        try:
            return stub.ListDomains(pb.ListDomainsRequest(), timeout=20, metadata=metadata)
        except grpc.RpcError as error:
            return error


def identities_text(allowed: list[str], groups: dict[str, list[str]],
                    tokens: list[tuple[str, list[str], str, bool]]) -> str:
    """An identities file; tokens as (name, groups, token, revoked)."""
    lines = [f"tls_allowed_dn_list = {allowed!r}".replace("'", '"'), "[tls_dn_groups]"]
    lines += [f'"{glob}" = {names!r}'.replace("'", '"') for glob, names in groups.items()]
    text = "\n".join(lines) + "\n"
    for name, token_groups, token, revoked in tokens:
        entry = authn.token_entry(name, token_groups, token)
        text += entry.replace("revoked = false", "revoked = true") if revoked else entry
    return text


def write_identities(path: Path, text: str) -> None:
    """Replace the file with a new modification time, whatever the clock's resolution."""
    old = path.stat().st_mtime_ns if path.exists() else 0
    authn.write_private(path, text)
    if path.stat().st_mtime_ns <= old:
        os.utime(path, ns=(old + 1_000_000, old + 1_000_000))


@contextlib.contextmanager
def running_gateway(state_dir: Path, serving_credentials: grpc.ChannelCredentials,
                    *args: str, token_port: int = 0) -> Iterator[tuple[Process, str]]:
    """A gateway process on the state dir's PKI and run/ sockets, quick to reload; with
    ``token_port``, token-only TLS there too."""
    port = free_port()
    gateway = gateway_process(state_dir, port, "--reload-interval", "0.1", *args,
                              token_port=token_port).start()
    target = f"localhost:{port}"
    try:
        wait_serving(target, "", 30, serving_credentials)
        yield gateway, target
    finally:
        gateway.stop()


ALICE, BOB = authn.new_token(), authn.new_token()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A dev PKI, an identities file, and the compute service on run/compute.sock."""
    root = tmp_path_factory.mktemp("authn")
    pki.ensure_dev_pki(root / "pki")
    (root / "node.xml").write_text(NODE_XML)
    write_identities(root / "identities.toml", identities_text(
        [ADMIN_DN, "O=virtmesh,CN=team-*"], {ADMIN_DN: ["admin"], "*CN=team-*": ["readonly"]},
        [("alice", ["readonly"], ALICE, False), ("bob", ["readonly"], BOB, True)]))
    with running_service(root, f"test://{root / 'node.xml'}"):
        yield root


@pytest.fixture(scope="module")
def strict(state: Path) -> Iterator[str]:
    """A gateway that requires client certificates (the default)."""
    with running_gateway(state, client_credentials(state / "pki"), "--identities-file",
                         str(state / "identities.toml")) as (_, target):
        yield target


@pytest.fixture(scope="module")
def tokens(state: Path) -> Iterator[str]:
    """A gateway that does not ask for certificates: bearer tokens only."""
    with running_gateway(state, credentials(state / "pki"), "--client-auth", "optional",
                         "--identities-file", str(state / "identities.toml")) as (_, target):
        yield target


# --- certificates -----------------------------------------------------------------

def test_admitted_certificate_reaches_the_backend(state: Path, strict: str) -> None:
    before = backend_calls()
    reply = list_domains(strict, client_credentials(state / "pki"))
    assert [domain.name for domain in reply.domains] == ["alpha"]
    team = list_domains(strict, credentials(state / "pki", client_pair(state / "pki",
                                                                        "team-7")))
    assert [domain.name for domain in team.domains] == ["alpha"]
    assert backend_calls() == before + 2


@pytest.mark.parametrize("kind", ["unknown CA", "expired", "not yet valid", "server only"])
def test_bad_certificates_fail_the_handshake(state: Path, strict: str, kind: str) -> None:
    pair = {
        "unknown CA": lambda: client_pair(state / "pki", "admin", stranger=True),
        "expired": lambda: client_pair(state / "pki", "admin",
                                       not_before=NOW - datetime.timedelta(days=10), days=1),
        "not yet valid": lambda: client_pair(state / "pki", "admin",
                                             not_before=NOW + datetime.timedelta(days=1)),
        "server only": lambda: client_pair(state / "pki", "admin",
                                           usage=ExtendedKeyUsageOID.SERVER_AUTH),
    }[kind]()
    before = backend_calls()
    error = list_domains(strict, credentials(state / "pki", pair))
    # no TLS connection, so no call: what gRPC reports for a failed handshake
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert backend_calls() == before


def test_certificate_without_client_usage_is_unauthenticated(state: Path, strict: str) -> None:
    """No extended key usage at all passes TLS (X.509: any use); the gateway refuses it."""
    before = backend_calls()
    error = list_domains(strict, credentials(state / "pki", client_pair(
        state / "pki", "admin", usage=None)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no clientAuth extended key usage" in error.details()
    assert backend_calls() == before


def test_certificate_not_in_allowed_list_is_unauthenticated(state: Path, strict: str) -> None:
    before = backend_calls()
    error = list_domains(strict, credentials(state / "pki", client_pair(
        state / "pki", "mallory", organization="virtmesh")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == ("client certificate 'O=virtmesh,CN=mallory' is not in "
                               "tls_allowed_dn_list")
    assert backend_calls() == before


def test_libvirt_dn_form_and_globs() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Ltd"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    dn = authn.libvirt_dn(name)
    assert dn == r"C=GB,O=Example\, Ltd,CN=alice"
    identities = authn.parse_identities({"tls_allowed_dn_list": ["C=GB,O=Example*,CN=*"],
                                         "tls_dn_groups": {"*CN=alice": ["ops"],
                                                           "C=GB,*": ["uk"]}})
    assert identities.certificate_identity(dn) == {"ops", "uk"}
    assert identities.certificate_identity("C=FR,O=Example,CN=alice") is None
    assert authn.Identities().certificate_identity(dn) is None  # empty list: nobody


@pytest.mark.parametrize("text, message", [
    ("tls_allowed_dn_list = 'O=x'", "tls_allowed_dn_list: expected a list of non-empty strings"),
    ("[[token]]\nname = 'a'\nsha256 = 'abc'", "token #1 (a): sha256 must be 64 lowercase"),
    ("[[token]]\nname = 'a'\nsha256 = '" + "0" * 64 + "'\ntoken = 'x'",
     "token #1: only name, groups, sha256 and revoked are allowed"),
    ("allowed = []", "unknown keys ['allowed']"),
    ("tls_allowed_dn_list = [", "Invalid value (at end of document)"),
    ("[[token]]\nname = 'a'\nsha256 = '" + "0" * 64 + "'\nrevoked = true\n"
     "[[token]]\nname = 'b'\nsha256 = '" + "0" * 64 + "'",
     "token #2 (b): the same token as an earlier entry"),
])
def test_bad_identities_file_admits_nobody(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "identities.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        authn.load_identities(path)
    assert authn.Authenticator(path).identities == authn.Identities()


# --- tokens -----------------------------------------------------------------------

def test_valid_token_is_the_identity(state: Path, tokens: str, strict: str) -> None:
    before = backend_calls()
    reply = list_domains(tokens, with_token(credentials(state / "pki"), ALICE))
    assert [domain.name for domain in reply.domains] == ["alpha"]
    # on a certificate connection too: the token names the caller
    reply = list_domains(strict, with_token(client_credentials(state / "pki"), ALICE))
    assert [domain.name for domain in reply.domains] == ["alpha"]
    assert backend_calls() == before + 2


@pytest.mark.parametrize("token, metadata, message", [
    (None, (), "no client certificate and no bearer token"),
    ("not-a-token", (), "unknown bearer token"),
    (BOB, (), "the bearer token of 'bob' is revoked"),
    (None, (("authorization", "Basic YWxpY2U6cHc="),),
     "authorization header: expected `Bearer <token>`"),
])
def test_missing_wrong_or_revoked_token_is_unauthenticated(
        state: Path, tokens: str, token: str | None, metadata: tuple[tuple[str, str], ...],
        message: str) -> None:
    plain = credentials(state / "pki")
    before = backend_calls()
    error = list_domains(tokens, with_token(plain, token) if token else plain, metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == message
    assert backend_calls() == before


def test_optional_gateway_does_not_take_certificates(state: Path, tokens: str) -> None:
    """gRPC Python cannot ask for a certificate without requiring it: `optional`
    does not ask, so a certificate identifies nobody there."""
    error = list_domains(tokens, client_credentials(state / "pki"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_is_never_sent_or_taken_in_plaintext(state: Path, tokens: str) -> None:
    with pytest.raises(ConfigError, match="refusing to send a bearer token over the "
                                          "plaintext channel unix:"):
        Client(f"unix:{state / 'run' / 'compute.sock'}", token=ALICE, environ={})
    with pytest.raises(ConfigError, match="refusing to send a bearer token"):
        Client(f"unix:{state / 'run' / 'compute.sock'}", environ={"VIRTMESH_TOKEN": ALICE})
    # a plaintext connection to the gateway gets nowhere near a call
    before = backend_calls()
    with grpc.insecure_channel(tokens) as channel:
        error = rpc_error(pb_grpc.ComputeServiceStub(channel).ListDomains,
                          pb.ListDomainsRequest(), timeout=20,
                          metadata=(("authorization", f"Bearer {ALICE}"),))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert backend_calls() == before


class FakeContext:
    """What Authenticator reads of a ServicerContext."""

    def __init__(self, auth: dict[str, list[bytes]], metadata: tuple[tuple[str, str], ...]
                 ) -> None:
        self.auth, self.metadata = auth, metadata

    def peer(self) -> str:
        return "ipv4:192.0.2.1:4000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def test_tokens_need_tls_at_the_gateway_too(tmp_path: Path) -> None:
    path = tmp_path / "identities.toml"
    path.write_text(authn.token_entry("alice", ["readonly"], ALICE))
    authenticator = authn.Authenticator(path)
    bearer = (("authorization", f"Bearer {ALICE}"),)
    tls = FakeContext({"transport_security_type": [b"ssl"]}, bearer)
    identity = authenticator.authenticate(tls)  # type: ignore[arg-type]
    assert (identity.name, identity.groups, identity.method) == ("alice", {"readonly"}, "token")
    with pytest.raises(AuthenticationError, match="over TLS only"):
        authenticator.authenticate(FakeContext({}, bearer))  # type: ignore[arg-type]


# --- reload -----------------------------------------------------------------------

def test_token_file_reloads_without_restart(state: Path, tmp_path: Path) -> None:
    path = tmp_path / "identities.toml"
    write_identities(path, "")
    carol = authn.new_token()
    with running_gateway(state, credentials(state / "pki"), "--client-auth", "optional",
                         "--identities-file", str(path)) as (gateway, target), \
            grpc.secure_channel(target, with_token(credentials(state / "pki"), carol)) \
            as channel:
        stub = pb_grpc.ComputeServiceStub(channel)

        def status() -> grpc.StatusCode:
            try:
                stub.ListDomains(pb.ListDomainsRequest(), timeout=20)
            except grpc.RpcError as error:
                return error.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        assert status() == grpc.StatusCode.UNAUTHENTICATED
        write_identities(path, authn.token_entry("carol", ["readonly"], carol))
        assert wait_until(lambda: status() == grpc.StatusCode.OK, 30)
        # revoked, then picked up on SIGHUP alone: the file keeps its old mtime
        mtime = path.stat().st_mtime_ns
        authn.write_private(path, path.read_text().replace("revoked = false",
                                                           "revoked = true"))
        os.utime(path, ns=(mtime, mtime))
        assert status() == grpc.StatusCode.OK  # not noticed: same mtime
        gateway.signal(signal.SIGHUP)
        assert wait_until(lambda: status() == grpc.StatusCode.UNAUTHENTICATED, 30)
        # and removed from the file
        write_identities(path, "")
        assert status() == grpc.StatusCode.UNAUTHENTICATED


def test_server_certificate_reloads_and_connections_survive(state: Path,
                                                             tmp_path: Path) -> None:
    """New handshakes use the new certificate; a connection made before goes on."""
    tls = tmp_path / "tls"
    old = state / "pki"
    for name in ("server.crt", "server.key"):
        (tls / name).parent.mkdir(exist_ok=True)
        (tls / name).write_bytes((old / name).read_bytes())
    new_ca = tmp_path / "new-ca"
    ca_key = pki.new_key()
    ca_name = pki._name("another CA")
    pki.write_pair(new_ca, "ca", pki.issue(ca_name, ca_key, ca_name, ca_key, ca=True), ca_key)
    tls_args = ("--tls-cert", str(tls / "server.crt"), "--tls-key", str(tls / "server.key"),
                "--identities-file", str(state / "identities.toml"))
    admin = client_credentials(old)
    with running_gateway(state, admin, *tls_args) as (_, target), \
            grpc.secure_channel(target, admin) as kept:
        stub = pb_grpc.ComputeServiceStub(kept)
        assert stub.ListDomains(pb.ListDomainsRequest(), timeout=20).domains
        key = pki.new_key()
        cert = pki.issue(pki._name("virtmesh gateway"), key, ca_name, ca_key,
                         usage=ExtendedKeyUsageOID.SERVER_AUTH,
                         sans=pki.server_names(["localhost"]))
        # the key first: a certificate and key that do not belong together are not used
        (tls / "server.key").write_bytes(key_pem(key))
        (tls / "server.crt").write_bytes(pem(cert))
        client_key = (old / "client.key").read_bytes()
        client_cert = (old / "client.crt").read_bytes()
        trusting_new = grpc.ssl_channel_credentials(pem(pki.load_pair(new_ca, "ca")[0]),
                                                    client_key, client_cert)
        # every worker reloads on its own: ten new connections in a row get the new chain
        assert wait_until(lambda: not any(isinstance(list_domains(target, trusting_new),
                                                     grpc.RpcError) for _ in range(10)),
                          30, step=0.2)
        # a new client that trusts only the old CA no longer accepts the gateway
        assert list_domains(target, admin).code() == grpc.StatusCode.UNAVAILABLE
        # the connection made before the change still carries calls
        assert stub.ListDomains(pb.ListDomainsRequest(), timeout=20).domains


def test_empty_allowed_list_admits_no_certificate(state: Path, tmp_path: Path) -> None:
    path = tmp_path / "identities.toml"
    write_identities(path, identities_text([ADMIN_DN], {ADMIN_DN: ["admin"]}, []))
    admin = client_credentials(state / "pki")
    with running_gateway(state, admin, "--identities-file", str(path)) as (_, target):
        assert not isinstance(list_domains(target, admin), grpc.RpcError)
        write_identities(path, identities_text([], {ADMIN_DN: ["admin"]}, []))
        # each gateway worker reloads the file on its own (--reload-interval 0.1): wait
        # until ten new connections in a row, spread over the workers, are refused
        assert wait_until(lambda: all(isinstance(list_domains(target, admin), grpc.RpcError)
                                      for _ in range(10)), 30)
        before = backend_calls()
        error = list_domains(target, admin)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "is not in tls_allowed_dn_list" in error.details()
        assert backend_calls() == before


def test_no_tls_material_refuses_to_start(tmp_path: Path) -> None:
    gateway = gateway_process(tmp_path, free_port()).start()
    assert gateway.popen is not None
    assert gateway.popen.wait(60) == 1
    assert "cannot start: TLS material:" in gateway.log()


# --- development identities and the client ---------------------------------------

def test_dev_identities_for_make_run(state: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    dev = tmp_path / "dev"
    identities = authn.ensure_dev_identities(dev)
    admin_token = dev / "tokens" / "admin.token"
    readonly_token = dev / "tokens" / "readonly.token"
    for path in (identities, admin_token, readonly_token, dev / "pki" / "client.key",
                 dev / "pki" / "readonly.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    text = identities.read_text()
    assert admin_token.read_text().strip() not in text  # digests only
    assert authn.ensure_dev_identities(dev) == identities and identities.read_text() == text
    # the supervisor's gateway: default identities path under its state dir, both ports
    (dev / "run").symlink_to(state / "run")
    token_port = free_port()
    token_target = f"localhost:{token_port}"
    with running_gateway(dev, client_credentials(dev / "pki"),
                         token_port=token_port) as (_, target):
        wait_serving(token_target, "", 30, credentials(dev / "pki"))
        # a token alone: the CA checks the gateway, no certificate is sent
        env = {"VIRTMESH_GATEWAY": token_target, "VIRTMESH_STATE_DIR": str(dev)}
        for token_file in (admin_token, readonly_token):
            with Client(environ={**env, "VIRTMESH_TOKEN_FILE": str(token_file)}) as client:
                assert [d.name for d in client.call("ListDomains",
                                                    pb.ListDomainsRequest()).domains]
        # the CLI: the token names the caller, whose role is too small to suspend
        capsys.readouterr()
        tokens = ["--gateway", token_target, "--state-dir", str(dev)]
        certificates = ["--gateway", target, "--state-dir", str(dev)]
        assert cli.main([*tokens, "--token-file", str(readonly_token), "list"]) == 0
        assert "alpha" in capsys.readouterr().out
        assert cli.main([*tokens, "--token-file", str(readonly_token), "suspend",
                         "alpha"]) == 1
        assert "PERMISSION_DENIED: 'readonly' lacks" in capsys.readouterr().err
        # the admin certificate stays the admin's; the token port never asks for it
        assert cli.main([*certificates, "suspend", "alpha"]) == 0
        assert cli.main([*tokens, "suspend", "alpha"]) == 1
        assert "UNAUTHENTICATED: no client certificate and no bearer token" in \
            capsys.readouterr().err
        assert cli.main([*tokens, "--token-file", str(admin_token), "resume", "alpha"]) == 0
        # the read-only identity's own certificate
        readonly = ["--cert", str(dev / "pki" / "readonly.crt"),
                    "--key", str(dev / "pki" / "readonly.key")]
        capsys.readouterr()
        assert cli.main([*certificates, *readonly, "list"]) == 0
        assert "alpha" in capsys.readouterr().out
        assert cli.main([*certificates, *readonly, "suspend", "alpha"]) == 1
        assert "PERMISSION_DENIED: 'O=virtmesh,CN=readonly' lacks" in capsys.readouterr().err
        # a token without --cert/--key never takes the admin certificate along: the
        # mutual TLS port then refuses the handshake
        assert cli.main([*certificates, "--token-file", str(readonly_token), "list"]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err


def test_cli_with_a_token_and_no_certificate(state: Path, tokens: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes((state / "pki" / "ca.crt").read_bytes())
    token_file = tmp_path / "alice.token"
    token_file.write_text(ALICE + "\n")
    common = ["--gateway", tokens, "--state-dir", str(tmp_path)]
    capsys.readouterr()
    assert cli.main([*common, "--token-file", str(token_file), "list"]) == 0
    assert "alpha" in capsys.readouterr().out
    assert cli.main(common + ["list"]) == 2  # no token: the certificate is required
    assert "cannot read client key" in capsys.readouterr().err
    token_file.write_text("")
    assert cli.main([*common, "--token-file", str(token_file), "list"]) == 2
    assert "expected one token on one line" in capsys.readouterr().err


def test_new_token_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "identities.toml"
    authn.main([str(path), "ci", "--group", "readonly", "--group", "team-a"])
    token = capsys.readouterr().out.strip()
    entry = authn.load_identities(path).token(token)
    assert entry is not None and (entry.name, entry.groups) == ("ci", {"readonly", "team-a"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_text()
    for bad in (["", "--group", "x"], ["ci2", "--group", ""]):
        with pytest.raises(SystemExit):
            authn.main([str(path), *bad])
        assert "non-empty string" in capsys.readouterr().err
    assert path.read_text() == before  # nothing half-done


def test_missing_identities_file_admits_the_dev_admin_only_with_the_dev_ca(
        tmp_path: Path) -> None:
    """A deleted or mis-mounted identities file must not let anyone in, except on a
    development PKI (make run, the tests), whose admin certificate is admitted."""
    missing = tmp_path / "no-such-identities.toml"
    assert authn.Authenticator(missing).identities == authn.Identities()
    dev = authn.Authenticator(missing, dev_fallback=True).identities
    assert dev.certificate_identity(authn.DEV_ADMIN_DN) == {"admin"}
    ensure_dev_pki(tmp_path / "pki")
    assert is_dev_ca(tmp_path / "pki" / "ca.crt")
    other = tmp_path / "other-ca.crt"
    key = pki.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example CA")])
    other.write_bytes(pki.issue(name, key, name, key, ca=True).public_bytes(
        serialization.Encoding.PEM))
    assert not is_dev_ca(other)
