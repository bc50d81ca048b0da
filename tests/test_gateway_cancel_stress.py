"""Clients that cancel streams through the gateway never crash it (issue 10).

Cancelled volume downloads used to kill the gateway (SIGSEGV in grpcio's cygrpc),
more often after a restart of the storage service. The gateway and the storage
service run as processes here, so that a crash shows as the gateway's process
dying; hundreds of downloads, uploads and event streams are cancelled in a seeded
random order and at random moments, with the storage service killed and started
again halfway.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from gateway.pki import ensure_dev_pki
from services.supervisor import client_credentials, wait_serving
from tests.conftest import ROOT, free_port, gateway_process, service_process
from tests.test_storage_service import pool_xml, remove_host_pool, unique, volume_xml
from virtmesh.storage.v1 import storage_service_pb2 as pb
from virtmesh.storage.v1 import storage_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(180)

SEED = 10
CALLS = 400  # cancelled calls in all, the storage service restarted halfway
WORKERS = 8
MIB = 1 << 20
VOLUME_BYTES = 8 * MIB
VOLUME = "stress.img"

# A client process killed in the middle of downloads, as `timeout -s INT virtmesh
# vol-download` kills the CLI: its connection goes away without a cancel per call.
_KILLED_CLIENT = """
import sys, grpc
from virtmesh.storage.v1 import storage_service_pb2 as pb, storage_service_pb2_grpc as rpc
from services.supervisor import client_credentials
from pathlib import Path
target, pki, pool, name = sys.argv[1:]
channel = grpc.secure_channel(target, client_credentials(Path(pki)))
calls = [rpc.StorageServiceStub(channel).DownloadStorageVolume(
    pb.DownloadStorageVolumeRequest(pool=pool, name=name)) for _ in range(4)]
print("started", flush=True)
while True:
    for call in calls:
        next(call, None)
"""


class Stress:
    """The storage service and the gateway as processes, and one client channel."""

    def __init__(self, state: Path, pool: str) -> None:
        self.state = state
        self.pool = pool
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.credentials = client_credentials(state / "pki")
        self.storage = service_process(state, "storage")
        self.gateway = gateway_process(state, self.port)
        self.channel = grpc.secure_channel(self.target, self.credentials)
        self.stub = pb_grpc.StorageServiceStub(self.channel)

    def start_storage(self) -> None:
        self.storage.start()
        wait_serving(f"unix:{self.state / 'run' / 'storage.sock'}", "", 60)

    def restart_storage(self) -> None:
        """kill -9 and start again: the gateway's channel sees its backend vanish."""
        assert self.storage.popen is not None
        self.storage.popen.kill()
        self.storage.popen.wait()
        self.start_storage()

    def cancelled_download(self, rng: random.Random) -> None:
        call = self.stub.DownloadStorageVolume(
            pb.DownloadStorageVolumeRequest(pool=self.pool, name=VOLUME), timeout=30)
        for _ in range(rng.randrange(3)):
            next(call, None)
        time.sleep(rng.uniform(0, 0.01))
        call.cancel()

    def closed_download(self, rng: random.Random) -> None:
        """The whole connection closed under a download (a client that exits)."""
        channel = grpc.secure_channel(self.target, self.credentials)
        call = pb_grpc.StorageServiceStub(channel).DownloadStorageVolume(
            pb.DownloadStorageVolumeRequest(pool=self.pool, name=VOLUME), timeout=30)
        if rng.random() < 0.5:
            next(call, None)
        time.sleep(rng.uniform(0, 0.01))
        channel.close()

    def cancelled_upload(self, rng: random.Random) -> None:
        release = threading.Event()
        chunks = rng.randrange(4)

        def requests() -> Iterator[pb.UploadStorageVolumeRequest]:
            yield pb.UploadStorageVolumeRequest(pool=self.pool, name=VOLUME,
                                                offset=VOLUME_BYTES - MIB)
            for _ in range(chunks):
                yield pb.UploadStorageVolumeRequest(data=bytes(64 * 1024))
            release.wait(30)

        future = self.stub.UploadStorageVolume.future(requests(), timeout=30)
        time.sleep(rng.uniform(0, 0.02))
        future.cancel()
        release.set()

    def cancelled_watch(self, rng: random.Random) -> None:
        call = self.stub.WatchStoragePoolEvents(pb.WatchStoragePoolEventsRequest(), timeout=30)
        if rng.random() < 0.3:  # an event on its way while the watch is cancelled
            self.stub.RefreshStoragePool(pb.RefreshStoragePoolRequest(name=self.pool),
                                         timeout=30)
        time.sleep(rng.uniform(0, 0.02))
        call.cancel()

    def killed_client(self, rng: random.Random) -> None:
        client = subprocess.Popen(
            [sys.executable, "-c", _KILLED_CLIENT, self.target, str(self.state / "pki"),
             self.pool, VOLUME], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert client.stdout is not None
        client.stdout.readline()
        time.sleep(rng.uniform(0, 0.05))
        client.send_signal(rng.choice((signal.SIGINT, signal.SIGKILL)))
        try:
            client.wait(5)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()

    def download(self) -> bytes:
        """The whole volume, once the gateway has reconnected to the restarted service
        (it retries a failed connect within a second)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return b"".join(chunk.data for chunk in self.stub.DownloadStorageVolume(
                    pb.DownloadStorageVolumeRequest(pool=self.pool, name=VOLUME), timeout=60))
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture
def stress(tmp_path: Path, host_libvirtd: None, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[Stress]:
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # a crash leaves its traceback in the log
    ensure_dev_pki(tmp_path / "pki")
    mesh = Stress(tmp_path, unique())
    try:
        mesh.start_storage()
        mesh.gateway.start()
        wait_serving(mesh.target, "", 30, mesh.credentials)
        mesh.stub.DefineStoragePool(pb.DefineStoragePoolRequest(
            xml=pool_xml(mesh.pool, tmp_path / "pool")))
        mesh.stub.StartStoragePool(pb.StartStoragePoolRequest(name=mesh.pool, build=True))
        mesh.stub.CreateStorageVolume(pb.CreateStorageVolumeRequest(
            pool=mesh.pool, xml=volume_xml(VOLUME, VOLUME_BYTES)))
        yield mesh
    finally:
        mesh.channel.close()
        for process in (mesh.gateway, mesh.storage):
            if process.popen is not None:
                process.stop(30)
        remove_host_pool(mesh.pool)


def test_cancelled_streams_never_crash_the_gateway(stress: Stress) -> None:
    payload = random.Random(SEED).randbytes(VOLUME_BYTES)
    stress.stub.UploadStorageVolume(iter(
        [pb.UploadStorageVolumeRequest(pool=stress.pool, name=VOLUME)]
        + [pb.UploadStorageVolumeRequest(data=payload[start:start + MIB])
           for start in range(0, VOLUME_BYTES, MIB)]), timeout=60)
    gateway = stress.gateway.popen
    assert gateway is not None
    pid = gateway.pid

    rng = random.Random(SEED)
    kinds = [stress.cancelled_download] * 5 + [stress.closed_download] * 2 + [
        stress.cancelled_upload] * 2 + [stress.cancelled_watch] * 2
    plan: list[tuple[Callable[[random.Random], None], random.Random]] = [
        (rng.choice(kinds), random.Random(rng.random())) for _ in range(CALLS)]
    for index in range(0, CALLS, CALLS // 8):  # a client process killed now and then
        plan[index] = (stress.killed_client, plan[index][1])
    made = []

    def run(step: tuple[Callable[[random.Random], None], random.Random]) -> None:
        if gateway.poll() is not None:  # crashed: the rest would only fail
            return
        operation, step_rng = step
        # cancelled, or UNAVAILABLE while the storage service restarts
        with contextlib.suppress(grpc.RpcError):
            operation(step_rng)
        made.append(operation)

    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(run, plan[:CALLS // 2]))
        restart = pool.submit(stress.restart_storage)  # while the second half runs
        list(pool.map(run, plan[CALLS // 2:]))
        restart.result()
    assert gateway.poll() is None, (
        f"the gateway died ({gateway.returncode}) after {len(made)} of {CALLS} calls, "
        f"{time.monotonic() - started:.1f} s:\n{stress.gateway.log()[-4000:]}")
    assert gateway.pid == pid
    # the cancelled uploads may have written zeros into the last MiB
    assert stress.download()[:VOLUME_BYTES - MIB] == payload[:VOLUME_BYTES - MIB]
