"""Idle exit and activation with real processes.

A service with ``--idle-timeout`` exits by itself once no call has come for that
long (health probes do not count), but not while an event stream is open or,
for compute, while a guest runs. A gateway with ``--activation`` starts a
service that is not running on its first call, which succeeds; concurrent first
calls share one activation; a failed activation is UNAVAILABLE naming the
service and why. Waits are bounded, never tight.

libvirt's ``test:///default`` has a running domain, ``test``, which keeps compute
busy; the tests that expect an idle exit use a node without domains.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import config as gateway_config
from gateway.pki import ensure_dev_pki
from gateway.routes import driver_of, proxied_services
from guest import example
from services.common import config as service_config
from services.supervisor import SERVICES, wait_serving
from tests.conftest import Mesh, Process, free_port, gateway_process, service_process
from tests.test_e2e_qemu import EMBED_URI, short_state_dir
from tests.test_gateway import error_info, rpc_error
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def exited(process: Process) -> bool:
    assert process.popen is not None
    return process.popen.poll() is not None


def idle_compute(state_dir: Path, uri: str, timeout: float) -> Process:
    process = service_process(state_dir, "compute", "--uri", uri, "--idle-timeout",
                              str(timeout), "--grace-period", "1").start()
    try:
        wait_serving(socket_target(state_dir), "", 120)
    except RuntimeError:
        process.stop()
        raise AssertionError(process.log()) from None
    return process


def socket_target(state_dir: Path) -> str:
    return f"unix:{state_dir / 'run' / 'compute.sock'}"


def empty_node(directory: Path) -> str:
    """A test-driver URI without domains: nothing keeps compute busy."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "empty.xml").write_text("<node/>\n")
    return f"test://{directory / 'empty.xml'}"


def test_settings() -> None:
    assert service_config.load("compute", "", [], environ={}).idle_timeout == 0  # never
    assert service_config.load("compute", "", [], environ={
        "VIRTMESH_IDLE_TIMEOUT": "600"}).idle_timeout == 600
    with pytest.raises(service_config.ConfigError, match="idle_timeout"):
        service_config.load("compute", "", ["--idle-timeout", "-1"], environ={})
    gateway = gateway_config.load(["--activation", "systemctl start virtmesh@{service}.service"],
                                  environ={})
    assert (gateway.activation_timeout, gateway_config.load([], environ={}).activation) == (60, "")
    for bad in (["--activation-timeout", "0"], ["--activation-timeout", "601"],
                ["--activation", "'unbalanced"]):
        with pytest.raises(service_config.ConfigError, match="activation"):
            gateway_config.load(bad, environ={})


def test_idle_service_exits_and_health_probes_do_not_keep_it(tmp_path: Path) -> None:
    compute = idle_compute(tmp_path, empty_node(tmp_path), 2)
    try:
        answered: list[float] = []  # when each probe was answered
        with grpc.insecure_channel(socket_target(tmp_path)) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def probed_until_exit() -> bool:
                with contextlib.suppress(grpc.RpcError):
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    answered.append(time.monotonic())
                return exited(compute)

            assert wait_until(probed_until_exit, 20), "still running:\n" + compute.log()
        assert compute.popen is not None and compute.popen.returncode == 0, compute.log()
        # probed all along: for at least half the idle timeout before it exited
        assert len(answered) >= 3 and answered[-1] - answered[0] >= 1, answered
        assert re.search(r"idle for \d+ s, exiting", compute.log())
        assert not (tmp_path / "run" / "compute.sock").exists()
    finally:
        compute.stop()


def test_open_event_stream_keeps_the_service(tmp_path: Path) -> None:
    compute = idle_compute(tmp_path, empty_node(tmp_path), 2)
    try:
        with grpc.insecure_channel(socket_target(tmp_path)) as channel:
            stream = pb_grpc.ComputeServiceStub(channel).WatchDomainEvents(
                pb.WatchDomainEventsRequest())
            stream.initial_metadata()  # subscribed
            time.sleep(6)
            assert not exited(compute), compute.log()
            stream.cancel()
        assert wait_until(lambda: exited(compute), 20), "still running:\n" + compute.log()
        assert compute.stop() == 0
    finally:
        compute.stop()


def test_running_test_domain_keeps_compute_until_destroyed(tmp_path: Path) -> None:
    compute = idle_compute(tmp_path, "test:///default", 2)
    try:
        time.sleep(6)
        assert not exited(compute), compute.log()
        with grpc.insecure_channel(socket_target(tmp_path)) as channel:
            pb_grpc.ComputeServiceStub(channel).DestroyDomain(
                pb.DestroyDomainRequest(name="test"), timeout=10)
        assert wait_until(lambda: exited(compute), 20), "still running:\n" + compute.log()
        assert compute.stop() == 0
    finally:
        compute.stop()


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_running_guest_keeps_compute_until_destroyed() -> None:
    with short_state_dir() as state:
        compute = idle_compute(state, EMBED_URI, 3)
        try:
            with grpc.insecure_channel(socket_target(state)) as channel:
                stub = pb_grpc.ComputeServiceStub(channel)
                stub.CreateDomain(pb.CreateDomainRequest(
                    xml=example.render("idle-guest", state, "qemu")), timeout=60)
                time.sleep(9)
                assert not exited(compute), compute.log()
                stub.DestroyDomain(pb.DestroyDomainRequest(name="idle-guest"), timeout=30)
            assert wait_until(lambda: exited(compute), 30), "still running:\n" + compute.log()
            assert compute.stop() == 0
        finally:
            compute.stop(60)


# --- activation through the gateway --------------------------------------------------

def service_pids(state_dir: Path, service: str = "") -> list[int]:
    """Services (``service``, or any) started for ``state_dir``, found by command line;
    zombies have none."""
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            at = argv.index(b"services") if b"services" in argv else -1
            if str(state_dir).encode() in argv and at > 0 and (
                    not service or argv[at + 1] == service.encode()):
                pids.append(int(proc.name))
    return pids


def compute_pids(state_dir: Path) -> list[int]:
    return service_pids(state_dir, "compute")


def stop_services(state_dir: Path) -> None:
    """The activated services run in sessions of their own: end them by pid."""
    for pid in service_pids(state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not service_pids(state_dir), 60):
        for pid in service_pids(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def on_demand_gateway(state_dir: Path, activation: str, *args: str
                      ) -> Iterator[tuple[Mesh, str]]:
    """A gateway with activation and no compute running; yields it and its /metrics URL."""
    ensure_dev_pki(state_dir / "pki")
    port, metrics_port = free_port(), free_port()
    gateway = gateway_process(state_dir, port, "--activation", activation,
                              "--metrics-listen", f"127.0.0.1:{metrics_port}", *args).start()
    mesh = Mesh(state_dir, port, gateway, gateway)
    try:
        wait_serving(mesh.target, "", 30, mesh.credentials())
        yield mesh, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        gateway.stop()
        stop_services(state_dir)


def activations(url: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(r'^virtmesh_gateway_activations_total\{upstream="compute"\} (\S+)$',
                      text, re.M)
    return float(found[1]) if found else 0.0


def spawn_command(state_dir: Path, idle_timeout: int) -> str:
    return (f"{sys.executable} -m services {{service}} --state-dir {state_dir} "
            f"--uri {empty_node(state_dir)} --idle-timeout {idle_timeout}")


def test_first_call_starts_the_service_and_again_after_idle_exit(tmp_path: Path) -> None:
    with on_demand_gateway(tmp_path, spawn_command(tmp_path, 3)) as (mesh, metrics_url):
        assert not compute_pids(tmp_path)
        with mesh.channel() as channel:
            stub = pb_grpc.ComputeServiceStub(channel)
            assert stub.GetVersion(pb.GetVersionRequest(), timeout=60).uri.startswith("test://")
            assert len(compute_pids(tmp_path)) == 1
            assert activations(metrics_url) == 1
            assert wait_until(lambda: not compute_pids(tmp_path), 30), "no idle exit"
            assert re.search(r"idle for \d+ s, exiting",
                             (tmp_path / "log" / "compute.log").read_text())
            assert stub.GetVersion(pb.GetVersionRequest(), timeout=60).uri.startswith("test://")
            assert activations(metrics_url) == 2
        assert "starting the compute service: " in mesh.gateway.log()


def test_concurrent_first_calls_share_one_activation(tmp_path: Path) -> None:
    with on_demand_gateway(tmp_path, spawn_command(tmp_path, 60)) as (mesh, metrics_url), \
            mesh.channel() as channel, futures.ThreadPoolExecutor(5) as pool:
        stub = pb_grpc.ComputeServiceStub(channel)
        calls = [pool.submit(stub.GetVersion, pb.GetVersionRequest(), timeout=60)
                 for _ in range(5)]
        assert all(call.result().uri.startswith("test://") for call in calls)
        assert activations(metrics_url) == 1
        assert len(compute_pids(tmp_path)) == 1


@pytest.mark.parametrize(("command", "reason"), [
    ("false", "`false` exited with status 1"),
    ("true", "not serving 2 s after `true`"),
])
def test_failed_activation_is_unavailable_naming_the_service(tmp_path: Path, command: str,
                                                              reason: str) -> None:
    with on_demand_gateway(tmp_path, command, "--activation-timeout", "2") as (mesh, _), \
            mesh.channel() as channel:
        error = rpc_error(pb_grpc.ComputeServiceStub(channel).GetVersion,
                          pb.GetVersionRequest(), timeout=30)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == ("compute service is not running and could not be "
                                   f"started: {reason}")
        info = error_info(error)
        assert (info.reason, info.metadata["service"]) == ("ACTIVATION_FAILED", "compute")
        assert reason in mesh.gateway.log()


def first_list_rpc(service: ServiceDescriptor) -> str:
    """The path of the service's first List RPC that needs no parent object."""
    parents = {"name", "pool", "network"}
    return next(f"/{service.full_name}/{method.name}" for method in service.methods
                if method.name.startswith("List") and not method.client_streaming
                and not method.server_streaming
                and not parents & set(method.input_type.fields_by_name))


@pytest.mark.qemu
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("host_libvirtd")
def test_every_service_is_started_by_its_first_call() -> None:
    """No service running, their default libvirt URIs (embedded QEMU and secret, the host's
    libvirtd for the rest): the first call of each through the gateway succeeds."""
    services = proxied_services()
    assert {driver_of(service.full_name) for service in services} == set(SERVICES)
    with short_state_dir() as state:
        command = (f"{sys.executable} -m services {{service}} --state-dir {state} "
                   "--idle-timeout 60")
        with on_demand_gateway(state, command, "--activation-timeout", "120") as (mesh, _), \
                mesh.channel() as channel:
            assert not service_pids(state)
            for service in services:
                call: grpc.UnaryUnaryMultiCallable = channel.unary_unary(first_list_rpc(service))
                call(b"", timeout=150)  # an empty request: every filter unset
            assert {driver for driver in SERVICES if service_pids(state, driver)} == set(SERVICES)
