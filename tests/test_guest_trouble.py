"""A guest stopped or paused for its own reasons says why: GetDomain's
state_message, the lifecycle event's message and ``virtmesh info``'s "Why" line.

Two real causes on the TCG example guest: its QEMU killed by a signal (QEMU writes
"terminating on signal 15" to its log; libvirt only says "shutoff (shutdown)"),
and a disk on a full host file system with error_policy='stop' (QEMU pauses the
guest; libvirt says "paused (ioerror)" and the disk error says what it was).
"""

from __future__ import annotations

import contextlib
import os
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
from tests.conftest import ROOT, Mesh, running_mesh
from tests.test_console import Reader
from tests.test_e2e_qemu import BOOTED, EMBED_URI, console, qemu_pids, short_state_dir, wait_for
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh_client.client import Client

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def qemu_mesh() -> Iterator[Mesh]:
    with short_state_dir() as state, running_mesh(state, EMBED_URI, "--guests-on-exit",
                                                  "destroy") as mesh:
        yield mesh


@contextlib.contextmanager
def watching(stub: pb_grpc.ComputeServiceStub, name: str
             ) -> Iterator[list[pb.WatchDomainEventsResponse]]:
    """The guest's events as they come, read on grpc's own thread."""
    seen: list[pb.WatchDomainEventsResponse] = []
    stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=[name]))
    stream.initial_metadata()  # subscribed

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in stream:
                seen.append(event)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield seen
    finally:
        stream.cancel()


def lifecycle(seen: list[pb.WatchDomainEventsResponse], kind: int) -> pb.LifecycleEvent | None:
    return next((e.lifecycle for e in seen if e.HasField("lifecycle")
                 and e.lifecycle.type == kind), None)


def test_a_guest_killed_by_a_signal_says_so(qemu_mesh: Mesh) -> None:
    name = "killed"
    with qemu_mesh.channel() as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        stub.DefineDomain(pb.DefineDomainRequest(xml=example.render(
            name, qemu_mesh.state_dir, "qemu")))
        try:
            stub.StartDomain(pb.StartDomainRequest(name=name))
            wait_for(lambda: BOOTED in console(qemu_mesh, name), 90, "the guest to boot")
            assert stub.GetDomain(pb.GetDomainRequest(name=name)).domain.state_message == ""
            with watching(stub, name) as seen:
                pids = [pid for pid in qemu_pids(qemu_mesh.state_dir)
                        if f"guest={name}," in Path(f"/proc/{pid}/cmdline").read_text()
                        .replace("\0", " ")]
                assert len(pids) == 1, pids
                os.kill(pids[0], signal.SIGTERM)
                wait_for(lambda: lifecycle(seen, pb.LIFECYCLE_EVENT_TYPE_STOPPED) is not None,
                         60, "the stopped event")
            stopped = lifecycle(seen, pb.LIFECYCLE_EVENT_TYPE_STOPPED)
            assert stopped is not None and "terminating on signal 15" in stopped.message, seen
            domain = stub.GetDomain(pb.GetDomainRequest(name=name)).domain
            assert domain.state == pb.DOMAIN_STATE_SHUTOFF
            assert domain.state_message.startswith("QEMU: terminating on signal 15 from pid ")
            # a listing does not read logs
            listed = {d.name: d for d in stub.ListDomains(pb.ListDomainsRequest()).domains}
            assert listed[name].state_message == ""
            env = {**os.environ, "VIRTMESH_GATEWAY": qemu_mesh.target,
                   "VIRTMESH_STATE_DIR": str(qemu_mesh.state_dir)}
            info = subprocess.run([sys.executable, "-m", "virtmesh_client", "info", name],
                                  capture_output=True, text=True, env=env, cwd=ROOT,
                                  timeout=60)
            assert info.returncode == 0, info.stderr
            assert "Why:" in info.stdout and "terminating on signal 15" in info.stdout

            # a new run starts with a clean slate: the old run's line is not this one's
            stub.StartDomain(pb.StartDomainRequest(name=name))
            assert stub.GetDomain(pb.GetDomainRequest(name=name)).domain.state_message == ""
        finally:
            with contextlib.suppress(grpc.RpcError):
                stub.DestroyDomain(pb.DestroyDomainRequest(name=name))
            stub.UndefineDomain(pb.UndefineDomainRequest(name=name))


@contextlib.contextmanager
def full_file_system(size: str = "1m") -> Iterator[Path]:
    """A tiny tmpfs of its own: a disk image on it runs out of space at once."""
    path = Path(tempfile.mkdtemp(prefix="vm-full-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def test_a_guest_paused_by_a_full_disk_says_which_disk(qemu_mesh: Mesh) -> None:
    name = "full"
    with full_file_system() as tiny, qemu_mesh.channel() as channel:
        image = tiny / "disk.img"
        with image.open("wb") as file:
            file.truncate(64 * 1024 * 1024)  # sparse: 64 MiB the 1 MiB file system lacks
        disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw' "
                f"error_policy='stop'/><source file='{image}'/>"
                "<target dev='vdb' bus='virtio'/></disk>\n    <memballoon")
        xml = example.render(name, qemu_mesh.state_dir, "qemu").replace("<memballoon", disk, 1)
        stub = pb_grpc.ComputeServiceStub(channel)
        stub.CreateDomain(pb.CreateDomainRequest(xml=xml))
        try:
            wait_for(lambda: BOOTED in console(qemu_mesh, name), 90, "the guest to boot")
            with watching(stub, name) as seen, Client(
                    qemu_mesh.target, state_dir=qemu_mesh.state_dir) as client, \
                    client.console(name) as session:
                shell = Reader(session)
                shell.ask(b"echo ready-$((1+1))\n", b"ready-2")  # the shell is up
                # the guest's only disk is its vda (libvirt's vdb)
                session.send(b"dd if=/dev/zero of=/dev/vda bs=65536 count=64 conv=fsync\n")
                wait_for(lambda: lifecycle(seen, pb.LIFECYCLE_EVENT_TYPE_SUSPENDED) is not None,
                         90, "the guest to pause on the full disk")
            suspended = lifecycle(seen, pb.LIFECYCLE_EVENT_TYPE_SUSPENDED)
            assert suspended is not None and suspended.detail == "ioerror", seen
            domain = stub.GetDomain(pb.GetDomainRequest(name=name)).domain
            assert (domain.state, domain.state_reason) == (pb.DOMAIN_STATE_PAUSED, "ioerror")
            assert "vdb: no space left on the host" in domain.state_message, domain
        finally:
            with contextlib.suppress(grpc.RpcError):
                stub.DestroyDomain(pb.DestroyDomainRequest(name=name))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(
                    f"guest={name}," in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
                    for pid in qemu_pids(qemu_mesh.state_dir)):
                time.sleep(0.2)  # QEMU lets go of the image before the unmount
