"""Fixtures that start real services on temporary sockets.

Hermetic tests use libvirt's test driver with a private node file
(``test:///<file>``): unlike ``test:///default`` its state belongs to one
connection, so tests cannot see each other's domains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.pki import ensure_dev_pki
from services.common import registry
from services.common.config import Config
from services.common.daemon import Daemon, ServiceSpec
from services.common.host_daemon import HostDaemon
from services.compute import SPEC as COMPUTE
from services.supervisor import client_credentials, wait_serving
from virtmesh.compute.v1 import compute_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent

NODE_XML = """<node>
  <domain type='test'>
    <name>alpha</name><memory>65536</memory><vcpu>2</vcpu><os><type>hvm</type></os>
  </domain>
</node>
"""


@pytest.fixture(autouse=True, scope="session")
def _no_user_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The CLI's contexts come from a file of the test session's, not the user's
    ~/.config/virtmesh/config.toml (which `make run` writes)."""
    saved = os.environ.get("VIRTMESH_CLI_CONFIG")
    os.environ["VIRTMESH_CLI_CONFIG"] = str(tmp_path_factory.mktemp("cli-config") / "config.toml")
    yield
    if saved is None:
        os.environ.pop("VIRTMESH_CLI_CONFIG", None)
    else:
        os.environ["VIRTMESH_CLI_CONFIG"] = saved


def error_of(call: object, *args: object) -> grpc.RpcError:
    """The RpcError that ``call(*args)`` raises (the test fails if it raises none)."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


# The ErrorInfo reasons of a document refused as malformed or against the schema.
XML_REFUSED = ("VIR_ERR_XML_ERROR", "VIR_ERR_XML_DETAIL", "VIR_ERR_XML_INVALID_SCHEMA")


def reason_of(error: grpc.RpcError) -> str:
    """The google.rpc.ErrorInfo reason of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


def domain_xml(name: str, memory_kib: int = 65536) -> str:
    return (f"<domain type='test'><name>{name}</name><memory>{memory_kib}</memory>"
            "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")


def renamed(request: Message, name: str) -> Message:
    """A copy of ``request`` about the domain (or object) ``name``."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.name = name  # type: ignore[attr-defined]
    return copy


@pytest.fixture
def node_uri(tmp_path: Path) -> str:
    path = tmp_path / "node.xml"
    path.write_text(NODE_XML)
    return f"test://{path}"


@contextlib.contextmanager
def running_service(state_dir: Path, uri: str, spec: ServiceSpec = COMPUTE,
                    **settings: Any) -> Iterator[Daemon]:
    """An in-process daemon of ``spec`` (compute unless given) on
    ``<state_dir>/run/<name>.sock``."""
    config = dataclasses.replace(Config(service=spec.name, state_dir=state_dir, uri=uri),
                                 **settings)
    daemon = Daemon(spec, config)
    daemon.start(connect_wait=10)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def host_libvirtd() -> Iterator[None]:
    """The host's libvirt daemon (storage:///system, network:///system, ...): started
    for the session when none runs, and then stopped again; one already running is
    used and left alone."""
    daemon = HostDaemon()
    daemon.ensure()
    try:
        yield
    finally:
        daemon.stop()


@pytest.fixture
def compute(tmp_path: Path, node_uri: str) -> Iterator[Daemon]:
    with running_service(tmp_path, node_uri, grace_period=0.5) as daemon:
        yield daemon


@pytest.fixture
def stub(compute: Daemon) -> Iterator[compute_service_pb2_grpc.ComputeServiceStub]:
    with grpc.insecure_channel(f"unix:{compute.socket_path}") as channel:
        yield compute_service_pb2_grpc.ComputeServiceStub(channel)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` different free ports (each held until all are found)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


@dataclasses.dataclass
class Process:
    """A service started as its own process, the way it runs in production."""

    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=ROOT,
                                          start_new_session=True)
        return self

    def signal(self, signum: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def service_process(state_dir: Path, name: str, *args: str) -> Process:
    return Process([sys.executable, "-m", "services", name, "--state-dir", str(state_dir),
                    *args], state_dir / "log" / f"{name}.log")


def service_stub(service: str, channel: grpc.Channel) -> Any:
    """The generated stub of ``service`` (a registry name) on ``channel``."""
    spec = registry.spec(service)
    return getattr(spec.grpc_module, f"{spec.descriptor.name}Stub")(channel)


def gateway_process(state_dir: Path, port: int, *args: str, token_port: int = 0) -> Process:
    """A gateway with mutual TLS on ``port``, token-only TLS on ``token_port`` (0: off;
    never the default port after ``port``, which may be taken)."""
    token = f"127.0.0.1:{token_port}" if token_port else "none"
    return Process([sys.executable, "-m", "gateway", "--state-dir", str(state_dir),
                    "--listen", f"127.0.0.1:{port}", "--token-listen", token, *args],
                   state_dir / "log" / "gateway.log")


@dataclasses.dataclass
class Mesh:
    state_dir: Path
    port: int
    compute: Process
    gateway: Process
    #: the gateway's token-only TLS port
    token_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def token_target(self) -> str:
        return f"127.0.0.1:{self.token_port}"

    def credentials(self, client: str = "client") -> grpc.ChannelCredentials:
        pki = self.state_dir / "pki"
        if client == "client":
            return client_credentials(pki)
        return grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes())

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.target, self.credentials())


@contextlib.contextmanager
def running_mesh(state_dir: Path, uri: str, *compute_args: str) -> Iterator[Mesh]:
    """compute + gateway as real processes, with a development PKI."""
    ensure_dev_pki(state_dir / "pki")
    compute = service_process(state_dir, "compute", "--uri", uri, *compute_args).start()
    port, token_port = free_ports(2)
    gateway = gateway_process(state_dir, port, token_port=token_port).start()
    mesh = Mesh(state_dir, port, compute, gateway, token_port)
    try:
        wait_serving(f"unix:{state_dir / 'run' / 'compute.sock'}", "", 60)
        wait_serving(mesh.target, "", 30, mesh.credentials())
        yield mesh
    finally:
        gateway.stop()
        compute.stop(60)


@pytest.fixture
def mesh(tmp_path: Path, node_uri: str) -> Iterator[Mesh]:
    with running_mesh(tmp_path, node_uri) as running:
        yield running


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """compute and storage on the test driver: their sockets' directory, for the CLI's
    ``--socket DIR`` (each command finds its own service there)."""
    from services.storage import SPEC as STORAGE
    with running_service(tmp_path, "test:///default", grace_period=0.5), \
            running_service(tmp_path, "test:///default", spec=STORAGE, grace_period=0.5):
        yield tmp_path / "run"


CliRun = Callable[..., tuple[int, str, str]]


@pytest.fixture
def virtmesh(capsys: pytest.CaptureFixture[str]) -> CliRun:
    """``virtmesh ARGS…`` in this process: (status, stdout, stderr). Modules that need
    other defaults (a gateway, a context) have their own fixture of this name."""
    from virtmesh_client import cli

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return run


@contextlib.contextmanager
def services_and_gateway(state: Path, names: tuple[str, ...]) -> Iterator[str]:
    """The named services on their default URIs and a gateway, as processes, with
    make run's identities; yields the gateway's address."""
    from gateway.authn import ensure_dev_identities
    ensure_dev_identities(state)
    services = [service_process(state, name).start() for name in names]
    port = free_port()
    processes: list[Process] = [*services, gateway_process(state, port).start()]
    try:
        for name in names:
            wait_serving(f"unix:{state / 'run' / f'{name}.sock'}", "", 60)
        target = f"127.0.0.1:{port}"
        wait_serving(target, "", 30, client_credentials(state / "pki"))
        yield target
    finally:
        for process in reversed(processes):
            process.stop(60)


@pytest.fixture(scope="session")
def in_process_qemu_state() -> Iterator[Path]:
    """The state directory of this test process's own embedded QEMU driver. libvirt
    opens an embedded driver once per process, at one root ("already open with path"
    for any other), so every module that runs compute in-process on embedded QEMU
    shares this one, each with guests of its own names."""
    from tests.test_e2e_qemu import short_state_dir
    with short_state_dir() as state:
        yield state
