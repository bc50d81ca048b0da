"""Guest statistics: exporter-compatible names, and scrapes that a stuck guest cannot stall.

Fakes pin down the merge and timeout rules, libvirt's test driver the names and
labels of real output (checked by promtool), and a TCG guest on embedded QEMU whose
monitor never answers shows that a scrape still returns with the last known values.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guest import example
from services.common.config import Config
from services.common.libvirt_connection import LibvirtConnection
from services.compute.backend import prepare_embedded_root
from services.compute.metrics import GuestStatsCollector
from tests.conftest import running_service
from tests.test_e2e_qemu import EMBED_URI, qemu_pids, short_state_dir, wait_for

PROMTOOL = "/usr/bin/promtool"
UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


class FakeDomain:
    def __init__(self, name: str, uuid: str = UUID) -> None:
        self._name, self._uuid = name, uuid

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:  # noqa: N802 - libvirt's name
        return self._uuid


class FakeConnection:
    """A LibvirtConnection with one guest whose bulk call returns ``record`` once
    ``release`` is set."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.connected = True
        self.release = threading.Event()
        self.release.set()

    @property
    def conn(self) -> FakeConnection:
        return self

    def getAllDomainStats(self, groups: int, flags: int  # noqa: N802 - libvirt's name
                          ) -> list[tuple[FakeDomain, dict[str, Any]]]:
        assert flags & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        self.release.wait()
        return [(FakeDomain("vm1"), self.record)]


QEMU_RECORD: dict[str, Any] = {
    "state.state": 1, "state.reason": 1, "cpu.time": 2_500_000_000, "vcpu.current": 2,
    "balloon.current": 131072, "balloon.maximum": 262144, "balloon.rss": 1000,
    "balloon.major_fault": 7, "balloon.swap_in": 3,
    "net.count": 1, "net.0.name": "vnet0", "net.0.rx.bytes": 500, "net.0.tx.pkts": 9,
    "block.count": 1, "block.0.name": "vda", "block.0.path": "/x.img",
    "block.0.rd.bytes": 4096, "block.0.wr.reqs": 2, "block.0.rd.times": 1_500_000_000,
}


def registry_for(collector: GuestStatsCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


class Scrape:
    """One scrape of a registry, rendered on a thread: it must come back whatever libvirt
    does. (``registry.get_sample_value`` would collect again on every lookup.)"""

    def __init__(self, registry: CollectorRegistry, timeout: float = 10) -> None:
        result: list[bytes] = []
        thread = threading.Thread(target=lambda: result.append(generate_latest(registry)),
                                  daemon=True)
        thread.start()
        thread.join(timeout)
        assert result, f"the scrape did not return within {timeout}s"
        self.text = result[0]
        self.samples = [sample for family in text_string_to_metric_families(
            self.text.decode()) for sample in family.samples]

    def value(self, name: str, device: str | None = None, domain: str = "vm1",
              uuid: str = UUID) -> float | None:
        labels = {"domain": domain, "uuid": uuid}
        if device is not None:
            labels["target_device"] = device
        return self.get(name, **labels)

    def get(self, name: str, **labels: str) -> float | None:
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        return found[0] if found else None


def promtool_check(text: bytes) -> None:
    if not os.path.exists(PROMTOOL):
        pytest.skip("promtool is not installed (Debian package prometheus)")
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_a_qemu_record_becomes_exporter_series() -> None:
    scrape = Scrape(registry_for(GuestStatsCollector(FakeConnection(QEMU_RECORD))))
    assert scrape.value("libvirt_domain_info_vstate") == 1
    assert scrape.value("libvirt_domain_info_cpu_time_seconds_total") == 2.5
    assert scrape.value("libvirt_domain_info_virtual_cpus") == 2
    assert scrape.value("libvirt_domain_info_memory_usage_bytes") == 128 * 2**20
    assert scrape.value("libvirt_domain_info_maximum_memory_bytes") == 256 * 2**20
    assert scrape.value("libvirt_domain_memory_stats_actual_balloon_bytes") == 128 * 2**20
    assert scrape.value("libvirt_domain_memory_stats_rss_bytes") == 1000 * 1024
    assert scrape.value("libvirt_domain_memory_stats_swap_in_bytes") == 3 * 1024
    assert scrape.value("libvirt_domain_memory_stats_major_fault_total") == 7
    assert scrape.value("libvirt_domain_memory_stats_usable_bytes") is None  # not reported
    assert scrape.value("libvirt_domain_interface_stats_receive_bytes_total", "vnet0") == 500
    assert scrape.value("libvirt_domain_interface_stats_transmit_packets_total", "vnet0") == 9
    assert scrape.value("libvirt_domain_block_stats_read_bytes_total", "vda") == 4096
    assert scrape.value("libvirt_domain_block_stats_write_requests_total", "vda") == 2
    assert scrape.value("libvirt_domain_block_stats_read_time_seconds_total", "vda") == 1.5
    assert scrape.get("virtmesh_guest_stats_timeouts_total") == 0
    assert scrape.get("virtmesh_guest_stats_scrape_seconds") is not None
    assert all(set(sample.labels) <= {"domain", "uuid", "target_device"}
               for sample in scrape.samples)
    promtool_check(scrape.text)


def test_busy_guest_keeps_last_values_and_ages() -> None:
    fake = FakeConnection(QEMU_RECORD)
    registry = registry_for(GuestStatsCollector(fake))
    Scrape(registry)
    # NOWAIT on a guest whose job is taken: no memory or block statistics
    fake.record = {k: v for k, v in QEMU_RECORD.items()
                       if k not in ("balloon.rss", "block.0.rd.bytes")} | {"cpu.time": 3e9}
    time.sleep(0.05)
    scrape = Scrape(registry)
    assert scrape.value("libvirt_domain_info_cpu_time_seconds_total") == 3.0  # fresh
    assert scrape.value("libvirt_domain_memory_stats_rss_bytes") == 1000 * 1024  # carried
    assert scrape.value("libvirt_domain_block_stats_read_bytes_total", "vda") == 4096
    assert (scrape.value("virtmesh_guest_stats_age_seconds") or 0) >= 0.05
    # the disk went away and everything else was reported: nothing left to carry
    fake.record = {k: v for k, v in QEMU_RECORD.items() if not k.startswith("block.")}
    scrape = Scrape(registry)
    assert scrape.value("libvirt_domain_block_stats_write_requests_total", "vda") is None
    assert (scrape.value("virtmesh_guest_stats_age_seconds") or 1) < 0.05


def test_shut_off_guest_keeps_no_runtime_values() -> None:
    fake = FakeConnection(QEMU_RECORD)
    registry = registry_for(GuestStatsCollector(fake))
    Scrape(registry)
    fake.record = {"state.state": libvirt.VIR_DOMAIN_SHUTOFF, "balloon.maximum": 262144}
    scrape = Scrape(registry)
    assert scrape.value("libvirt_domain_info_vstate") == libvirt.VIR_DOMAIN_SHUTOFF
    assert scrape.value("libvirt_domain_info_cpu_time_seconds_total") is None
    assert scrape.value("libvirt_domain_block_stats_read_bytes_total", "vda") is None


def test_stuck_call_is_waited_for_at_most_the_budget_and_never_doubled() -> None:
    fake = FakeConnection(QEMU_RECORD)
    collector = GuestStatsCollector(fake, budget=0.2)
    registry = registry_for(collector)
    Scrape(registry)
    fake.release.clear()  # libvirt stops answering
    try:
        Scrape(registry)
        calls = collector.calls
        scrape = Scrape(registry)
        assert collector.calls == calls  # the stuck call is waited for again, not doubled
        assert scrape.get("virtmesh_guest_stats_timeouts_total") == 2
        assert scrape.value("libvirt_domain_memory_stats_rss_bytes") == 1000 * 1024
        assert (scrape.value("virtmesh_guest_stats_age_seconds") or 0) >= 0.4
    finally:
        fake.release.set()
    wait_for(lambda: (Scrape(registry).value("virtmesh_guest_stats_age_seconds") or 1) < 0.2,
             10, "fresh statistics once libvirt answers again")


def test_no_guest_series_while_libvirt_is_disconnected() -> None:
    fake = FakeConnection(QEMU_RECORD)
    registry = registry_for(GuestStatsCollector(fake))
    assert Scrape(registry).value("libvirt_domain_info_vstate") == 1
    fake.connected = False
    scrape = Scrape(registry)
    assert not [sample for sample in scrape.samples if "domain" in sample.labels]
    assert scrape.get("virtmesh_guest_stats_scrape_seconds") is not None


@contextlib.contextmanager
def connected(uri: str) -> Iterator[LibvirtConnection]:
    connection = LibvirtConnection(uri)
    connection.start(wait=30)
    assert connection.connected, f"cannot connect to {uri}"
    try:
        yield connection
    finally:
        connection.close()


def test_state_metrics_on_the_test_driver(node_uri: str) -> None:
    with connected(node_uri) as connection:
        alpha = connection.conn.lookupByName("alpha").UUIDString()
        beta = connection.conn.defineXML(
            "<domain type='test'><name>beta</name><memory>65536</memory><vcpu>1</vcpu>"
            "<os><type>hvm</type></os></domain>").UUIDString()
        scrape = Scrape(registry_for(GuestStatsCollector(connection)))
    assert scrape.value("libvirt_domain_info_vstate", domain="alpha", uuid=alpha) == 1
    assert scrape.value("libvirt_domain_info_vstate", domain="beta", uuid=beta) == 5
    for name, uuid in (("alpha", alpha), ("beta", beta)):
        age = scrape.value("virtmesh_guest_stats_age_seconds", domain=name, uuid=uuid)
        assert age is not None and age < 60
    assert scrape.get("virtmesh_guest_stats_timeouts_total") == 0
    assert f'libvirt_domain_info_vstate{{domain="alpha",uuid="{alpha}"}} 1.0' in \
        scrape.text.decode()
    promtool_check(scrape.text)


def test_compute_service_serves_guest_statistics(tmp_path: Path, node_uri: str) -> None:
    with running_service(tmp_path, node_uri, metrics_listen="127.0.0.1:0",
                         scrape_budget=1.0) as daemon:
        assert daemon.metrics is not None
        url = f"http://{daemon.metrics.address}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    assert 'libvirt_domain_info_vstate{domain="alpha",uuid="' in text
    assert "virtmesh_guest_stats_scrape_seconds" in text


def _quietly(call: Any) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        call()


def _monitor_hang(state_dir: str) -> bytes:
    """The body of the QEMU test below, run in a process of its own; returns a scrape
    of the running guest."""
    state = Path(state_dir)
    uri = EMBED_URI.format(state_dir=state)
    prepare_embedded_root(Config(service="compute", uri=uri))
    with connected(uri) as connection:
        dom = connection.conn.createXML(example.render("stuck", state, "qemu"), 0)
        guest = {"domain": "stuck", "uuid": dom.UUIDString()}
        (pid,) = qemu_pids(state)
        helpers: list[threading.Thread] = []
        try:
            collector = GuestStatsCollector(connection, budget=1.0)
            registry = registry_for(collector)
            # a booting TCG guest's monitor can be slower than the budget at first
            wait_for(lambda: Scrape(registry).get("libvirt_domain_memory_stats_rss_bytes",
                                                  **guest), 60, "memory statistics")
            scrape = Scrape(registry)
            running = scrape.text
            rss = scrape.get("libvirt_domain_memory_stats_rss_bytes", **guest)
            cpu = scrape.get("libvirt_domain_info_cpu_time_seconds_total", **guest)
            assert rss and cpu and scrape.get("libvirt_domain_info_vstate", **guest) == 1
            assert scrape.get("libvirt_domain_info_virtual_cpus", **guest) == 1
            assert scrape.get("libvirt_domain_info_maximum_memory_bytes",
                              **guest) == 128 * 2**20
            fresh_until = time.monotonic()

            os.kill(pid, signal.SIGSTOP)
            helpers.append(threading.Thread(target=_quietly, args=(dom.suspend,)))
            helpers[-1].start()
            wait_for(lambda: "balloon.rss" not in connection.conn.getAllDomainStats(
                libvirt.VIR_DOMAIN_STATS_BALLOON,
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)[0][1],
                10, "the suspend to hold the domain job")
            asked = time.monotonic()
            scrape = Scrape(registry)
            assert scrape.get("libvirt_domain_memory_stats_rss_bytes", **guest) == rss
            age = scrape.get("virtmesh_guest_stats_age_seconds", **guest)
            assert age is not None and age >= asked - fresh_until > 0

            timeouts = scrape.get("virtmesh_guest_stats_timeouts_total") or 0
            helpers.append(threading.Thread(target=_quietly, args=(dom.destroy,)))
            helpers[-1].start()
            wait_for(lambda: Scrape(registry).get("virtmesh_guest_stats_timeouts_total")
                     == timeouts + 1, 10, "a scrape to run out of its budget")
            calls = collector.calls
            scrape = Scrape(registry)  # still stuck: waited for again, never doubled
            assert collector.calls == calls
            assert scrape.get("virtmesh_guest_stats_timeouts_total") == timeouts + 2
            assert scrape.get("libvirt_domain_memory_stats_rss_bytes", **guest) == rss
            assert scrape.get("libvirt_domain_info_cpu_time_seconds_total", **guest)
            later = scrape.get("virtmesh_guest_stats_age_seconds", **guest)
            assert later is not None and later > age
            return running
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            for helper in helpers:
                helper.join(30)


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_guest_whose_monitor_hangs_does_not_stall_the_scrape() -> None:
    """SIGSTOP a TCG guest's QEMU. A suspend then holds the domain job waiting for the
    monitor, so NOWAIT leaves the guest's memory stats out; a destroy holds the domain
    lock (a stopped QEMU ignores SIGTERM), so the bulk call itself hangs for ~10 s.
    Neither holds a scrape beyond its budget, and the last values stay exported.

    Embedded QEMU runs in a fresh process: libvirt forks QEMU's helpers from it, and in
    this one gRPC servers already ran with fork support on (conftest imports grpc before
    services), so a forked child gets a gRPC thread and cannot enter QEMU's namespace."""
    with short_state_dir() as state, multiprocessing.get_context("spawn").Pool(1) as pool:
        running = pool.apply_async(_monitor_hang, (str(state),)).get(timeout=240)
    promtool_check(running)
