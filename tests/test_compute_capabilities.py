"""GetCapabilities and GetDomainCapabilities from the compute service's cache: etags,
"unchanged" answers, one fetch per answer however many callers, a warm-up at start,
and the shared QEMU capability cache that a new root starts from."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.common.daemon import Daemon
from services.common.qemu_caps import ROOT_SUBDIR
from services.compute.capabilities import CapabilitiesCache, etag_of
from services.supervisor import wait_serving
from tests.conftest import service_process
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

Stub = pb_grpc.ComputeServiceStub


def test_concurrent_callers_share_one_fetch() -> None:
    cache = CapabilitiesCache()
    calls = 0
    release = threading.Event()

    def slow_fetch() -> str:
        nonlocal calls
        calls += 1
        release.wait(5)
        return "<capabilities/>"

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(cache.get("k", slow_fetch)))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in threads:
        thread.join(5)
    assert calls == 1 and len(answers) == 5
    assert {a.etag for a in answers} == {etag_of("<capabilities/>")}
    cache.clear()
    cache.get("k", slow_fetch)
    assert calls == 2


def test_an_answer_naming_a_changed_qemu_is_fetched_again(tmp_path: Path) -> None:
    emulator = tmp_path / "qemu"
    emulator.write_text("")
    xml = f"<domainCapabilities><path>{emulator}</path></domainCapabilities>"
    cache = CapabilitiesCache()
    cache.get("k", lambda: xml)
    cache.get("k", lambda: xml)
    assert cache.fetches == 1
    time.sleep(0.01)
    emulator.chmod(0o700)  # a new ctime
    cache.get("k", lambda: xml)
    assert cache.fetches == 2


def test_a_failed_fetch_is_not_cached() -> None:
    cache = CapabilitiesCache()

    def failing() -> str:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get("k", failing)
    assert cache.get("k", lambda: "<x/>").xml == "<x/>"


def test_capabilities_etag_round_trip(stub: Stub) -> None:
    first = stub.GetCapabilities(pb.GetCapabilitiesRequest())
    assert "<capabilities>" in first.xml and first.etag and not first.unchanged
    again = stub.GetCapabilities(pb.GetCapabilitiesRequest(etag=first.etag))
    assert (again.unchanged, again.xml, again.etag) == (True, "", first.etag)
    other = stub.GetCapabilities(pb.GetCapabilitiesRequest(etag="something-else"))
    assert (other.unchanged, other.xml, other.etag) == (False, first.xml, first.etag)


# -- on embedded QEMU, as a process ---------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """QEMU's sockets live under the root: a short path (108-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="vc-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _warm_seconds(log: str) -> float:
    found = re.search(r"capabilities warm in ([0-9.]+) s", log)
    assert found, f"no warm-up line in the log:\n{log[-3000:]}"
    return float(found.group(1))


@pytest.mark.qemu
@pytest.mark.timeout(120)
def test_domain_capabilities_cached_warmed_and_shared(short_dir: Path) -> None:
    shared = short_dir / "shared"
    answers = {}
    for run in ("cold", "seeded"):
        state = short_dir / run
        compute = service_process(state, "compute", "--uri",
                                  "qemu:///embed?root={state_dir}/qemu", "--caps-cache",
                                  str(shared)).start()
        try:
            wait_serving(f"unix:{state / 'run' / 'compute.sock'}", "", 30)
            with grpc.insecure_channel(f"unix:{state / 'run' / 'compute.sock'}") as channel:
                stub = Stub(channel)
                # at once: the warm-up is (on the cold run) still probing; this waits for it
                first = stub.GetDomainCapabilities(pb.GetDomainCapabilitiesRequest(),
                                                   timeout=60)
                assert "<domainCapabilities>" in first.xml and first.etag
                again = stub.GetDomainCapabilities(
                    pb.GetDomainCapabilitiesRequest(etag=first.etag), timeout=10)
                assert (again.unchanged, again.xml) == (True, "")
                answers[run] = first
                deadline = time.monotonic() + 60
                while "capabilities warm in" not in compute.log():
                    assert time.monotonic() < deadline, compute.log()[-3000:]
                    time.sleep(0.2)
        finally:
            compute.stop(30)
        log = compute.log()
        # the call during the warm-up did not fetch on its own: two fetches in all
        assert "(2 libvirt call(s))" in log, log[-3000:]
        if run == "cold":
            cold = _warm_seconds(log)
            entries = sorted(p.name for p in shared.glob("*.xml"))
            assert entries, "the warm-up left nothing in the shared cache"
        else:
            assert "capability cache: seeded" in log
            held = sorted(p.name for p in (state / "qemu" / ROOT_SUBDIR).glob("*.xml"))
            assert set(entries) <= set(held)
            seeded = _warm_seconds(log)
            # orders of magnitude, not a timing assertion: probing takes seconds a binary
            print(f"warm-up: cold {cold:.2f} s, seeded {seeded:.2f} s")
    assert answers["cold"].etag == answers["seeded"].etag  # the same answer, the same etag
    assert os.path.isdir(shared)


def test_a_new_libvirt_connection_drops_the_cached_answers(compute: Daemon) -> None:
    """libvirt has no "capabilities changed" event: every reconnect starts afresh."""
    backend = compute.servicer.backend
    with grpc.insecure_channel(f"unix:{compute.socket_path}") as channel:
        stub = Stub(channel)
        stub.GetCapabilities(pb.GetCapabilitiesRequest())
        stub.GetCapabilities(pb.GetCapabilitiesRequest())
        assert backend.capabilities_cache.fetches == 1
        lost = compute.connection.conn
        compute.connection._closed(lost, 0, None)  # what libvirt's close callback says
        deadline = time.monotonic() + 10
        while compute.connection._conn in (None, lost):
            assert time.monotonic() < deadline, "no reconnect"
            time.sleep(0.05)
        stub.GetCapabilities(pb.GetCapabilitiesRequest())
        assert backend.capabilities_cache.fetches == 2


@pytest.mark.qemu
@pytest.mark.timeout(120)
def test_a_service_stopped_during_its_warm_up_leaves_no_probing_qemu(short_dir: Path) -> None:
    """libvirt's probe of a QEMU binary is a QEMU process of the root: stopping the
    service while it runs must not orphan it."""
    from virtmesh_run.watchdog import qemu_processes  # noqa: PLC0415

    state = short_dir / "s"
    compute = service_process(state, "compute", "--uri", "qemu:///embed?root={state_dir}/qemu",
                              "--caps-cache", "none").start()
    root = state / "qemu"
    try:
        deadline = time.monotonic() + 30
        while not qemu_processes(root):
            assert time.monotonic() < deadline, "no probing QEMU seen"
            time.sleep(0.02)
        assert compute.stop(90) == 0
        deadline = time.monotonic() + 3
        while qemu_processes(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not qemu_processes(root), "a probing QEMU outlived the service"
        assert "waiting for the capability warm-up" in compute.log()
    finally:
        for pid in qemu_processes(root):
            os.kill(pid, 9)
