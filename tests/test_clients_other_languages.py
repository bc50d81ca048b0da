"""The Go client (clients/go), built from its sources with Debian's Go packages, and
the Node client (clients/node), compiled with tsc from npm, each run against a real
mesh: with a client certificate, and with a bearer token alone on a gateway that asks
for no certificate. Each run lists and gets a domain and turns the NOT_FOUND of a
missing one into the client's typed error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway import authn, pki
from services.supervisor import client_credentials, wait_serving
from tests.conftest import NODE_XML, ROOT, free_port, gateway_process, running_service

GO_IMPORT = "github.com/virtmesh/virtmesh/clients/go"
ADMIN_DN = "O=virtmesh,CN=admin"
TOKEN = authn.new_token()


class Gateways:
    def __init__(self, state: Path, certificate: str, token: str) -> None:
        self.state, self.certificate, self.token = state, certificate, token
        self.ca = state / "pki" / "ca.crt"
        (state / "token").write_text(TOKEN + "\n")


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """compute on a test driver and one gateway: mutual TLS on one port, token-only
    TLS (no client certificate asked for) on the other."""
    state = tmp_path_factory.mktemp("clients")
    pki.ensure_dev_pki(state / "pki")
    (state / "node.xml").write_text(NODE_XML)
    authn.write_private(state / "identities.toml", "\n".join([
        f'tls_allowed_dn_list = ["{ADMIN_DN}"]', "[tls_dn_groups]",
        f'"{ADMIN_DN}" = ["admin"]', ""]) + authn.token_entry("reader", ["readonly"], TOKEN))
    ports = free_port(), free_port()
    while ports[1] == ports[0]:
        ports = ports[0], free_port()
    gateway = gateway_process(state, ports[0], "--identities-file",
                              str(state / "identities.toml"), token_port=ports[1])
    with running_service(state, f"test://{state / 'node.xml'}"):
        gateway.start()
        try:
            targets = [f"localhost:{port}" for port in ports]
            wait_serving(targets[0], "", 30, client_credentials(state / "pki"))
            wait_serving(targets[1], "", 30, grpc.ssl_channel_credentials(
                (state / "pki" / "ca.crt").read_bytes()))
            yield Gateways(state, *targets)
        finally:
            gateway.stop()


def run(argv: list[str], **kwargs: object) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                          **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv[0]}: {done.stdout}\n{done.stderr}"
    return str(done.stdout)


# -- Go ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/go/cmd/virtmesh-example, built offline in GOPATH mode against Debian's
    packaged sources (/usr/share/gocode); Go's build cache makes a rebuild quick."""
    assert shutil.which("go"), "Debian's golang-go is missing: run make deps"
    root = tmp_path_factory.mktemp("go")
    link = root / "gopath" / "src" / GO_IMPORT
    link.parent.mkdir(parents=True)
    link.symlink_to(ROOT / "clients" / "go")
    cache = os.environ.get("GOCACHE") or str(Path.home() / ".cache" / "go-build")
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "GOCACHE": cache,
           "GOPATH": f"{root / 'gopath'}:/usr/share/gocode"}
    binary = root / "virtmesh-example"
    run(["go", "build", "-o", str(binary), f"{GO_IMPORT}/cmd/virtmesh-example"], env=env)
    run(["go", "vet", f"{GO_IMPORT}/virtmesh", f"{GO_IMPORT}/cmd/..."], env=env)
    go = ROOT / "clients" / "go"
    assert run(["gofmt", "-l", str(go / "virtmesh"), str(go / "cmd")]) == ""
    return binary


def check_example_output(output: str) -> None:
    """list, get, and the typed error of a missing domain, as the examples print them."""
    lines = output.splitlines()
    assert "domain alpha DOMAIN_STATE_RUNNING" in lines, output
    get = next(line for line in lines if line.startswith("get "))
    name, uuid = get.split()[1:]
    assert name == "alpha" and len(uuid) == 36, output
    error = json.loads(next(line for line in lines if line.startswith("error "))[6:])
    assert error["code"] in ("NotFound", "NOT_FOUND", 5), error
    assert error["reason"] == "VIR_ERR_NO_DOMAIN", error
    assert error["domain"] == "libvirt.org", error
    assert error["metadata"]["libvirt_code"] == "42", error


def test_go_client_with_a_certificate(gateways: Gateways, go_example: Path) -> None:
    pki_dir = gateways.state / "pki"
    check_example_output(run([
        str(go_example), "-address", gateways.certificate, "-ca", str(gateways.ca),
        "-cert", str(pki_dir / "client.crt"), "-key", str(pki_dir / "client.key"), "alpha"]))


def test_go_client_with_a_token(gateways: Gateways, go_example: Path) -> None:
    check_example_output(run([
        str(go_example), "-address", gateways.token, "-ca", str(gateways.ca),
        "-token-file", str(gateways.state / "token"), "alpha"]))


def test_go_client_refused_with_a_wrong_token(gateways: Gateways, go_example: Path) -> None:
    """A wrong token gets the gateway's typed refusal, not a domain."""
    bad = gateways.state / "bad-token"
    bad.write_text("not-a-token\n")
    done = subprocess.run([str(go_example), "-address", gateways.token, "-ca",
                           str(gateways.ca), "-token-file", str(bad), "alpha"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "domain alpha" not in done.stdout
    assert "Unauthenticated" in done.stderr, done.stderr


# -- Node ----------------------------------------------------------------------------

NODE = ROOT / "clients" / "node"


@pytest.fixture(scope="module")
def node_example() -> list[str]:
    """clients/node compiled by tsc (CommonJS), once per state of its sources: the
    output is kept under ~/.cache/virtmesh, named by a digest of what it is made of."""
    assert shutil.which("node"), "nodejs is missing: run make deps"
    tsc = NODE / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), "clients/node/node_modules is missing: run make deps"
    digest = hashlib.sha256()
    for path in sorted([*(NODE / "src").rglob("*.ts"), NODE / "tsconfig.json",
                        NODE / "package-lock.json"]):
        digest.update(str(path.relative_to(NODE)).encode() + b"\0" + path.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "virtmesh"
    out = cache / f"node-client-{digest.hexdigest()[:16]}"
    if not (out / "example.js").exists():
        cache.mkdir(parents=True, exist_ok=True)
        scratch = cache / f".{out.name}.{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        run([str(tsc), "-p", str(NODE), "--outDir", str(scratch)])
        shutil.rmtree(out, ignore_errors=True)
        scratch.rename(out)
    return ["node", str(out / "example.js")]


def node_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NODE_PATH": str(NODE / "node_modules")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env=env)


def test_node_client_with_a_certificate(gateways: Gateways, node_example: list[str]) -> None:
    pki_dir = gateways.state / "pki"
    done = node_run([*node_example, "--address", gateways.certificate, "--ca",
                     str(gateways.ca), "--cert", str(pki_dir / "client.crt"), "--key",
                     str(pki_dir / "client.key"), "alpha"])
    assert done.returncode == 0, done.stderr
    check_example_output(done.stdout)


def test_node_client_with_a_token(gateways: Gateways, node_example: list[str]) -> None:
    done = node_run([*node_example, "--address", gateways.token, "--ca", str(gateways.ca),
                     "--token-file", str(gateways.state / "token"), "alpha"])
    assert done.returncode == 0, done.stderr
    check_example_output(done.stdout)


def test_node_client_refused_with_a_wrong_token(gateways: Gateways,
                                                node_example: list[str]) -> None:
    bad = gateways.state / "bad-token"
    bad.write_text("not-a-token\n")
    done = node_run([*node_example, "--address", gateways.token, "--ca", str(gateways.ca),
                     "--token-file", str(bad), "alpha"])
    assert done.returncode == 1 and "domain alpha" not in done.stdout
    assert "UNAUTHENTICATED" in done.stderr, done.stderr
