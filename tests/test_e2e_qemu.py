"""End to end on embedded QEMU, through the gateway over TLS.

The example guest (Debian's kernel and a busybox initramfs answering the ACPI
power button) boots under TCG, so graceful shutdown and reboot are exercised for
real. KVM is used for lifecycle-only checks when /dev/kvm works: on some hosts
(nested or PVM-based KVM) a stock kernel does not boot under it in useful time.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from guest import example
from services.supervisor import SERVICES, client_credentials, wait_serving
from tests.conftest import ROOT, Mesh, free_ports, running_mesh, service_process
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

# make run's mesh includes the services on the host's libvirtd: the session owns it.
pytestmark = [pytest.mark.qemu, pytest.mark.timeout(300), pytest.mark.usefixtures("host_libvirtd")]

BOOTED = "virtmesh-guest: booted"
EMBED_URI = "qemu:///embed?root={state_dir}/qemu"


@contextlib.contextmanager
def short_state_dir() -> Iterator[Path]:
    """QEMU's monitor sockets live under the root: keep it short (108-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="vm-", dir="/tmp"))
    try:
        built = subprocess.run([str(ROOT / "guest" / "build-guest.sh"), str(path / "guest")],
                               capture_output=True, text=True)
        assert built.returncode == 0, f"build-guest.sh failed: {built.stderr}"
        yield path
    finally:
        kill_guests(path)
        shutil.rmtree(path, ignore_errors=True)


def qemu_pids(state_dir: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"qemu-system.*{state_dir}/"], capture_output=True,
                           text=True)
    return [int(pid) for pid in found.stdout.split()]


def kill_guests(state_dir: Path) -> None:
    for pid in qemu_pids(state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


class EventCollector:
    """Reads WatchDomainEvents on a thread so the test can wait for one event."""

    def __init__(self, stub: pb_grpc.ComputeServiceStub, name: str) -> None:
        self.stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=[name]))
        self.stream.initial_metadata()
        self.events: queue.Queue[pb.WatchDomainEventsResponse] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in self.stream:
                self.events.put(event)

    def expect(self, kind: str, timeout: float, detail: str | None = None
               ) -> pb.WatchDomainEventsResponse:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(event)
            which = event.WhichOneof("event")
            if kind == which:
                return event
            if which == "lifecycle" and pb.LifecycleEventType.Name(event.lifecycle.type) == \
                    f"LIFECYCLE_EVENT_TYPE_{kind}" and detail in (None, event.lifecycle.detail):
                return event
        raise AssertionError(f"no {kind} event in {timeout}s; saw {seen}")

    def close(self) -> None:
        self.stream.cancel()


@pytest.fixture(scope="module")
def qemu_mesh() -> Iterator[Mesh]:
    with short_state_dir() as state, running_mesh(state, EMBED_URI, "--guests-on-exit",
                                                  "destroy") as mesh:
        yield mesh


@pytest.fixture
def stub(qemu_mesh: Mesh) -> Iterator[pb_grpc.ComputeServiceStub]:
    with qemu_mesh.channel() as channel:
        yield pb_grpc.ComputeServiceStub(channel)


def console(mesh: Mesh, name: str) -> str:
    path = mesh.state_dir / "guest" / f"{name}.console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_tcg_guest_boots_reboots_and_shuts_down(qemu_mesh: Mesh,
                                                stub: pb_grpc.ComputeServiceStub) -> None:
    name = "e2e-tcg"
    events = EventCollector(stub, name)
    try:
        xml = example.render(name, qemu_mesh.state_dir, "qemu")
        domain = stub.DefineDomain(pb.DefineDomainRequest(xml=xml)).domain
        assert domain.state == pb.DOMAIN_STATE_SHUTOFF
        events.expect("DEFINED", 10)

        stub.StartDomain(pb.StartDomainRequest(name=name))
        events.expect("STARTED", 30, "booted")
        wait_for(lambda: BOOTED in console(qemu_mesh, name), 90, "the guest to boot")

        stats = stub.GetDomainStats(pb.GetDomainStatsRequest(names=[name])).stats[0]
        assert stats.state == pb.DOMAIN_STATE_RUNNING and stats.cpu.time_ns > 0
        assert stats.vcpu_current == 1 and len(stats.vcpus) == 1
        later = stub.GetDomainStats(pb.GetDomainStatsRequest(names=[name])).stats[0]
        assert later.cpu.time_ns >= stats.cpu.time_ns

        error = _error(stub.StartDomain, pb.StartDomainRequest(name=name))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

        stub.RebootDomain(pb.RebootDomainRequest(name=name))
        events.expect("reboot", 60)
        wait_for(lambda: console(qemu_mesh, name).count(BOOTED) >= 2, 90, "the reboot")
        assert stub.GetDomain(pb.GetDomainRequest(name=name)).domain.state == \
            pb.DOMAIN_STATE_RUNNING

        stub.ShutdownDomain(pb.ShutdownDomainRequest(name=name))
        events.expect("STOPPED", 60, "shutdown")
        off = stub.GetDomain(pb.GetDomainRequest(name=name)).domain
        assert off.state == pb.DOMAIN_STATE_SHUTOFF and off.state_reason == "shutdown"
        assert "power button" in console(qemu_mesh, name)

        stub.UndefineDomain(pb.UndefineDomainRequest(name=name))
        events.expect("UNDEFINED", 10)
        assert name not in [d.name for d in stub.ListDomains(pb.ListDomainsRequest()).domains]
    finally:
        events.close()


@pytest.mark.skipif(not example.kvm_usable(), reason="/dev/kvm is not usable here")
def test_kvm_lifecycle(qemu_mesh: Mesh, stub: pb_grpc.ComputeServiceStub) -> None:
    name = "e2e-kvm"
    xml = example.render(name, qemu_mesh.state_dir, "kvm")
    stub.DefineDomain(pb.DefineDomainRequest(xml=xml))
    try:
        started = stub.StartDomain(pb.StartDomainRequest(name=name)).domain
        assert started.state == pb.DOMAIN_STATE_RUNNING and started.id > 0
        stub.SuspendDomain(pb.SuspendDomainRequest(name=name))
        assert stub.GetDomain(pb.GetDomainRequest(name=name)).domain.state == \
            pb.DOMAIN_STATE_PAUSED
        stub.ResumeDomain(pb.ResumeDomainRequest(name=name))
        stub.DestroyDomain(pb.DestroyDomainRequest(name=name))
        off = stub.GetDomain(pb.GetDomainRequest(name=name)).domain
        assert off.state == pb.DOMAIN_STATE_SHUTOFF and off.state_reason == "destroyed"
    finally:
        stub.UndefineDomain(pb.UndefineDomainRequest(name=name))


def _error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


def test_compute_crash_keeps_and_recovers_guests() -> None:
    """SIGKILL the compute service: the guest runs on and the new process adopts it."""
    with short_state_dir() as state:
        compute = service_process(state, "compute", "--uri", EMBED_URI).start()
        socket = f"unix:{state / 'run' / 'compute.sock'}"
        try:
            wait_serving(socket, "", 60)
            with grpc.insecure_channel(socket) as channel:
                stub = pb_grpc.ComputeServiceStub(channel)
                xml = example.render("survivor", state, "qemu")
                stub.CreateDomain(pb.CreateDomainRequest(xml=xml))  # transient, even
                before = stub.GetDomain(pb.GetDomainRequest(name="survivor")).domain
            pids = qemu_pids(state)
            assert len(pids) == 1
            assert compute.popen is not None
            os.killpg(compute.popen.pid, signal.SIGKILL)
            compute.popen.wait()
            assert qemu_pids(state) == pids  # the guest outlived the service

            compute = service_process(state, "compute", "--uri", EMBED_URI).start()
            wait_serving(socket, "", 60)
            with grpc.insecure_channel(socket) as channel:
                stub = pb_grpc.ComputeServiceStub(channel)
                after = stub.GetDomain(pb.GetDomainRequest(name="survivor")).domain
                assert after.state == pb.DOMAIN_STATE_RUNNING
                assert (after.uuid, after.id) == (before.uuid, before.id)
                stub.DestroyDomain(pb.DestroyDomainRequest(name="survivor"))
            wait_for(lambda: not qemu_pids(state), 10, "QEMU to exit")
        finally:
            compute.stop()


@pytest.mark.parametrize("keep", [False, True], ids=["ctrl-c-stops-guests", "keep-guests"])
def test_make_run_ctrl_c(keep: bool) -> None:
    """What `make run` does on Ctrl-C: no orphaned QEMU unless guests are to be kept."""
    with short_state_dir() as state:
        port, token_port = free_ports(2)
        argv = [sys.executable, "-m", "services.supervisor", "--state-dir", str(state),
                "--listen", f"127.0.0.1:{port}", "--token-listen", f"127.0.0.1:{token_port}",
                "--shutdown-timeout", "20", "--metrics-base-port", "0"]
        if keep:
            argv.append("--keep-guests")
        log = (state / "mesh.log").open("wb")
        mesh = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            wait_for(lambda: "virtmesh is running" in (state / "mesh.log").read_text(), 120,
                     "the mesh to start")
            assert f"127.0.0.1:{token_port} (token-only TLS" in (state / "mesh.log").read_text()
            with grpc.secure_channel(f"127.0.0.1:{port}",
                                     client_credentials(state / "pki")) as channel:
                stub = pb_grpc.ComputeServiceStub(channel)
                demo = (state / "guest" / "demo.xml").read_text()
                assert "<name>demo</name>" in demo
                stub.DefineDomain(pb.DefineDomainRequest(
                    xml=example.render("demo", state, "qemu")))
                stub.StartDomain(pb.StartDomainRequest(name="demo"))
                wait_for(lambda: BOOTED in (state / "guest" / "demo.console.log").read_text(
                    errors="replace"), 90, "the guest to boot")
            assert len(qemu_pids(state)) == 1
            mesh.send_signal(signal.SIGINT)  # what Ctrl-C delivers
            assert mesh.wait(60) == 0
            output = (state / "mesh.log").read_text()
            assert "virtmesh: stopped" in output
            if keep:
                assert len(qemu_pids(state)) == 1
            else:
                assert qemu_pids(state) == []
                assert "power button" in (state / "guest" / "demo.console.log").read_text(
                    errors="replace")  # shut down gracefully, not killed
        finally:
            if mesh.poll() is None:
                mesh.kill()
            log.close()


def test_services_stop_when_the_supervisor_is_killed() -> None:
    """Even a SIGKILLed `make run` leaves no service behind (PR_SET_PDEATHSIG)."""
    with short_state_dir() as state:
        port, token_port = free_ports(2)
        mesh = subprocess.Popen(
            [sys.executable, "-m", "services.supervisor", "--state-dir", str(state),
             "--listen", f"127.0.0.1:{port}", "--token-listen", f"127.0.0.1:{token_port}",
             "--metrics-base-port", "0"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL)
        children = f"-m (services ({'|'.join(SERVICES)})|gateway) --state-dir {state}"
        try:
            wait_for(lambda: len(_pids(children)) == len(SERVICES) + 1, 120,
                     "every service and the gateway")
            wait_serving(f"127.0.0.1:{port}", "", 60, client_credentials(state / "pki"))
            mesh.kill()
            mesh.wait()
            wait_for(lambda: not _pids(children), 30, "the services to stop")
        finally:
            if mesh.poll() is None:
                mesh.kill()
            for pid in _pids(children):
                os.kill(pid, signal.SIGKILL)


def _pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_autostart_guests_come_back_after_a_restart() -> None:
    """The embedded driver does not autostart guests; the compute service does, so a
    restart (a pod's, a host's) brings back the guests marked autostart."""
    with short_state_dir() as state:
        args = ("--uri", EMBED_URI, "--guests-on-exit", "shutdown")
        compute = service_process(state, "compute", *args).start()
        socket = f"unix:{state / 'run' / 'compute.sock'}"
        try:
            wait_serving(socket, "", 60)
            with grpc.insecure_channel(socket) as channel:
                stub = pb_grpc.ComputeServiceStub(channel)
                for name in ("keeper", "bystander"):
                    stub.DefineDomain(pb.DefineDomainRequest(
                        xml=example.render(name, state, "qemu")))
                    stub.StartDomain(pb.StartDomainRequest(name=name))
                stub.SetDomainAutostart(pb.SetDomainAutostartRequest(name="keeper",
                                                                     autostart=True))
                wait_for(lambda: all(BOOTED in (state / "guest" / f"{n}.console.log")
                                     .read_text(errors="replace")
                                     for n in ("keeper", "bystander")), 90, "both guests")
            assert compute.stop(60) == 0
            assert qemu_pids(state) == []  # both shut down with the service

            compute = service_process(state, "compute", *args).start()
            wait_serving(socket, "", 60)
            with grpc.insecure_channel(socket) as channel:
                stub = pb_grpc.ComputeServiceStub(channel)
                states = {d.name: d.state for d in
                          stub.ListDomains(pb.ListDomainsRequest()).domains}
                assert states == {"keeper": pb.DOMAIN_STATE_RUNNING,
                                  "bystander": pb.DOMAIN_STATE_SHUTOFF}
                stub.DestroyDomain(pb.DestroyDomainRequest(name="keeper"))
        finally:
            compute.stop(60)
