"""virtmesh-admin: per-person certificates and tokens, through a real gateway.

What the tool issues is admitted with exactly the groups it was given; what it
revokes is refused while the gateway runs (it reloads the identities file).
Real gateway process (both ports) in front of a real compute service (test
driver) in this process; the identities file is make run's, at its default path.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway import admin, authn, pki
from services.supervisor import client_credentials, wait_serving
from tests.conftest import NODE_XML, free_ports, gateway_process, running_service
from tests.test_gateway import wait_until
from tests.test_gateway_authn import backend_calls, client_pair, credentials, with_token
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """(state dir, mutual TLS target, token target): make run's identities, compute on
    the test driver, a gateway on both ports reading the default identities file."""
    root = tmp_path_factory.mktemp("admin")
    authn.ensure_dev_identities(root)
    (root / "node.xml").write_text(NODE_XML)
    port, token_port = free_ports(2)
    with running_service(root, f"test://{root / 'node.xml'}"):
        gateway = gateway_process(root, port, "--reload-interval", "0.1",
                                  token_port=token_port).start()
        target, token_target = f"localhost:{port}", f"localhost:{token_port}"
        try:
            wait_serving(target, "", 30, client_credentials(root / "pki"))
            wait_serving(token_target, "", 30, credentials(root / "pki"))
            yield root, target, token_target
        finally:
            gateway.stop()


def run(state: Path, *argv: str) -> int:
    return admin.main(["--state-dir", str(state), *argv])


def status(stub: pb_grpc.ComputeServiceStub, method: str, **fields: str
           ) -> tuple[grpc.StatusCode, str]:
    request = getattr(pb, f"{method}Request")(**fields)
    try:
        getattr(stub, method)(request, timeout=20)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def test_issued_credentials_have_exactly_their_groups_rights(
        mesh: tuple[Path, str, str], tmp_path: Path) -> None:
    state, target, token_target = mesh
    # a certificate for carol, read-only
    assert run(state, "issue-cert", "carol", "--group", "readonly", "--out", str(tmp_path)) == 0
    assert stat.S_IMODE((tmp_path / "carol.key").stat().st_mode) == 0o600
    carol_pair = ((tmp_path / "carol.key").read_bytes(), (tmp_path / "carol.crt").read_bytes())
    # a token for dave, operator
    assert run(state, "add-token", "dave", "--group", "operator", "--out",
               str(tmp_path / "dave.token")) == 0
    dave = (tmp_path / "dave.token").read_text().strip()
    with grpc.secure_channel(target, credentials(state / "pki", carol_pair)) as carol_channel, \
            grpc.secure_channel(token_target, with_token(credentials(state / "pki"), dave)) \
            as dave_channel:
        carol = pb_grpc.ComputeServiceStub(carol_channel)
        dave_stub = pb_grpc.ComputeServiceStub(dave_channel)
        assert wait_until(lambda: status(carol, "ListDomains")[0] == grpc.StatusCode.OK, 30)
        assert wait_until(lambda: status(dave_stub, "ListDomains")[0] == grpc.StatusCode.OK, 30)
        # readonly: reads, never suspends
        code, message = status(carol, "SuspendDomain", name="alpha")
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "'O=virtmesh,CN=carol' lacks permission domain:suspend" in message
        # operator: suspends and resumes, never deletes
        assert status(dave_stub, "SuspendDomain", name="alpha")[0] == grpc.StatusCode.OK
        assert status(dave_stub, "ResumeDomain", name="alpha")[0] == grpc.StatusCode.OK
        before = backend_calls("UndefineDomain")
        code, message = status(dave_stub, "UndefineDomain", name="alpha")
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "'dave' lacks permission domain:delete" in message
        assert backend_calls("UndefineDomain") == before
    # another certificate from the same CA, never issued an identity: not admitted
    stranger = client_pair(state / "pki", "mallory")
    with grpc.secure_channel(target, credentials(state / "pki", stranger)) as channel:
        code, message = status(pb_grpc.ComputeServiceStub(channel), "ListDomains")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "'O=virtmesh,CN=mallory' is not in tls_allowed_dn_list" in message


def test_revocation_takes_effect_live(mesh: tuple[Path, str, str], tmp_path: Path) -> None:
    """Revoked on connections already open: every call is authenticated anew."""
    state, target, token_target = mesh
    assert run(state, "issue-cert", "erin", "--group", "admin", "--out", str(tmp_path)) == 0
    assert run(state, "add-token", "frank", "--group", "readonly", "--out",
               str(tmp_path / "frank.token")) == 0
    frank = (tmp_path / "frank.token").read_text().strip()
    erin_pair = ((tmp_path / "erin.key").read_bytes(), (tmp_path / "erin.crt").read_bytes())
    with grpc.secure_channel(target, credentials(state / "pki", erin_pair)) as erin_channel, \
            grpc.secure_channel(token_target, with_token(credentials(state / "pki"), frank)) \
            as frank_channel:
        erin = pb_grpc.ComputeServiceStub(erin_channel)
        frank_stub = pb_grpc.ComputeServiceStub(frank_channel)
        assert wait_until(lambda: status(erin, "ListDomains")[0] == grpc.StatusCode.OK, 30)
        assert wait_until(lambda: status(frank_stub, "ListDomains")[0] == grpc.StatusCode.OK,
                          30)
        assert run(state, "revoke-token", "frank") == 0
        assert wait_until(lambda: status(frank_stub, "ListDomains")[0]
                          == grpc.StatusCode.UNAUTHENTICATED, 30)
        assert status(frank_stub, "ListDomains")[1] == "the bearer token of 'frank' is revoked"
        assert status(erin, "ListDomains")[0] == grpc.StatusCode.OK  # only frank's
        assert run(state, "revoke-cert", "erin") == 0
        assert wait_until(lambda: status(erin, "ListDomains")[0]
                          == grpc.StatusCode.UNAUTHENTICATED, 30)
        assert "'O=virtmesh,CN=erin' is not in tls_allowed_dn_list" in \
            status(erin, "ListDomains")[1]
    # make run's admin is untouched
    with grpc.secure_channel(target, client_credentials(state / "pki")) as channel:
        assert status(pb_grpc.ComputeServiceStub(channel), "ListDomains")[0] == \
            grpc.StatusCode.OK


def test_list_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    identities = authn.ensure_dev_identities(state)
    capsys.readouterr()
    assert run(state, "add-token", "ci", "--group", "readonly", "--group", "team-a") == 0
    token = capsys.readouterr().out.strip()
    entry = authn.load_identities(identities).token(token)
    assert entry is not None and (entry.name, entry.groups) == ("ci", {"readonly", "team-a"})
    assert token not in identities.read_text()  # its digest only
    assert stat.S_IMODE(identities.stat().st_mode) == 0o600
    assert run(state, "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)["identities"]
    assert [(row["kind"], row["name"], row["groups"], row["status"]) for row in rows] == [
        ("certificate", "O=virtmesh,CN=admin", ["admin"], "allowed"),
        ("certificate", "O=virtmesh,CN=readonly", ["readonly"], "allowed"),
        ("token", "admin", ["admin"], "active"),
        ("token", "readonly", ["readonly"], "active"),
        ("token", "ci", ["readonly", "team-a"], "active")]
    before = identities.read_text()
    for argv, message in (
            (["add-token", "x"], "at least one group"),
            (["revoke-token", "nobody"], "no live token of 'nobody'"),
            (["revoke-cert", "O=virtmesh,CN=nobody"], "is not in tls_allowed_dn_list"),
            (["issue-cert", "../evil", "--group", "admin"], "no '/'"),
            (["issue-cert", "a*", "--group", "admin", "--out", str(tmp_path)],
             "glob characters"),
            (["--tls-ca", str(tmp_path / "missing.crt"), "issue-cert", "x", "--group", "a"],
             "cannot read the CA")):
        assert run(state, *argv) == 1, argv
        assert message in capsys.readouterr().err, argv
    assert identities.read_text() == before  # nothing half-done
    # the CA key must be the CA certificate's
    other = tmp_path / "other"
    pki.ensure_dev_pki(other)
    assert run(state, "--ca-key", str(other / "ca.key"), "issue-cert", "x", "--group", "a",
               "--out", str(tmp_path)) == 1
    assert "is not the (EC) key of" in capsys.readouterr().err
    # existing files are not replaced without --force
    assert run(state, "issue-cert", "gina", "--group", "a", "--out", str(tmp_path)) == 0
    assert run(state, "issue-cert", "gina", "--group", "a", "--out", str(tmp_path)) == 1
    assert "--force replaces them" in capsys.readouterr().err
    # a file that does not load is never touched
    identities.write_text(before + "\n[[token]]\nname = 3\n")
    broken = identities.read_text()
    assert run(state, "add-token", "y", "--group", "a") == 1
    assert "does not load" in capsys.readouterr().err
    assert identities.read_text() == broken


def test_issued_certificate_is_a_client_certificate_of_the_ca(tmp_path: Path) -> None:
    state = tmp_path / "state"
    authn.ensure_dev_identities(state)
    assert run(state, "issue-cert", "hal", "--group", "ops", "--organization", "Example",
               "--days", "10", "--out", str(tmp_path)) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "hal.crt").read_bytes())
    ca, _ = pki.load_pair(state / "pki", "ca")
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert authn.libvirt_dn(cert.subject) == "O=Example,CN=hal"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 10
    identities = authn.load_identities(state / "gateway" / "identities.toml")
    assert identities.certificate_identity("O=Example,CN=hal") == {"ops"}


def test_make_run_keeps_what_the_tool_added(tmp_path: Path) -> None:
    """ensure_dev_identities adds only what it creates: a lost readonly token is
    replaced, the admin-issued entries stay."""
    state = tmp_path / "state"
    identities = authn.ensure_dev_identities(state)
    assert run(state, "add-token", "ci", "--group", "readonly") == 0
    old = (state / "tokens" / "readonly.token").read_text().strip()
    (state / "tokens" / "readonly.token").unlink()
    authn.ensure_dev_identities(state)
    new = (state / "tokens" / "readonly.token").read_text().strip()
    loaded = authn.load_identities(identities)
    assert [token.name for token in loaded.tokens] == ["admin", "ci", "readonly"]
    assert loaded.token(old) is None
    entry = loaded.token(new)
    assert entry is not None and entry.name == "readonly"
    assert loaded.certificate_identity("O=virtmesh,CN=readonly") == {"readonly"}
