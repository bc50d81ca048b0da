"""Guest statistics for Prometheus, from libvirt's bulk stats call.

Names and labels follow the widely used libvirt exporter so existing dashboards
work. A scrape never waits on a guest: the bulk call asks libvirt not to wait for
busy guests (NOWAIT) and runs on a thread of its own, and a scrape waits for it
at most ``budget`` seconds. What libvirt could not say in time is served from the
last known values, and ``virtmesh_guest_stats_age_seconds`` says how old they are.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol

import libvirt
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.errors import ServiceError
from services.common.metrics import libvirt_call

log = logging.getLogger(__name__)

GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
          | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
          | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)
FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT

GUEST_LABELS = ("domain", "uuid")
DEVICE_LABELS = ("domain", "uuid", "target_device")


class Stat(NamedTuple):
    """One exported series: its name, type, the libvirt stat it comes from, a scale."""

    name: str
    counter: bool
    key: str
    scale: float
    help: str


KIB = 1024.0
NS = 1e-9

GUEST_STATS = (
    Stat("libvirt_domain_info_vstate", False, "state.state", 1,
         "Domain state: 0 no state, 1 running, 2 blocked, 3 paused, 4 shutting down, "
         "5 shut off, 6 crashed, 7 suspended by guest power management."),
    Stat("libvirt_domain_info_virtual_cpus", False, "vcpu.current", 1,
         "Number of virtual CPUs of the domain."),
    Stat("libvirt_domain_info_cpu_time_seconds_total", True, "cpu.time", NS,
         "CPU time used by the domain, in seconds."),
    Stat("libvirt_domain_info_maximum_memory_bytes", False, "balloon.maximum", KIB,
         "Maximum memory of the domain, in bytes."),
    Stat("libvirt_domain_info_memory_usage_bytes", False, "balloon.current", KIB,
         "Memory currently assigned to the domain, in bytes."),
    Stat("libvirt_domain_memory_stats_actual_balloon_bytes", False, "balloon.current", KIB,
         "Current balloon size, in bytes."),
    Stat("libvirt_domain_memory_stats_available_bytes", False, "balloon.available", KIB,
         "Memory the guest sees, in bytes."),
    Stat("libvirt_domain_memory_stats_usable_bytes", False, "balloon.usable", KIB,
         "Memory the balloon can take without the guest swapping, in bytes."),
    Stat("libvirt_domain_memory_stats_unused_bytes", False, "balloon.unused", KIB,
         "Memory the guest leaves completely unused, in bytes."),
    Stat("libvirt_domain_memory_stats_disk_cache_bytes", False, "balloon.disk_caches", KIB,
         "Guest memory reclaimable without I/O (disk caches), in bytes."),
    Stat("libvirt_domain_memory_stats_rss_bytes", False, "balloon.rss", KIB,
         "Resident set size of the process running the domain, in bytes."),
    Stat("libvirt_domain_memory_stats_swap_in_bytes", False, "balloon.swap_in", KIB,
         "Data the guest read from swap since boot, in bytes."),
    Stat("libvirt_domain_memory_stats_swap_out_bytes", False, "balloon.swap_out", KIB,
         "Data the guest wrote to swap since boot, in bytes."),
    Stat("libvirt_domain_memory_stats_major_fault_total", True, "balloon.major_fault", 1,
         "Page faults in the guest that needed disk I/O."),
    Stat("libvirt_domain_memory_stats_minor_fault_total", True, "balloon.minor_fault", 1,
         "Page faults in the guest that needed no disk I/O."),
)

#: per device; ``key`` is relative to ``block.<n>.`` or ``net.<n>.``
DEVICE_STATS = {
    "block": (
        Stat("libvirt_domain_block_stats_read_bytes_total", True, "rd.bytes", 1,
             "Bytes read from a block device."),
        Stat("libvirt_domain_block_stats_read_requests_total", True, "rd.reqs", 1,
             "Read requests on a block device."),
        Stat("libvirt_domain_block_stats_read_time_seconds_total", True, "rd.times", NS,
             "Time spent reading from a block device, in seconds."),
        Stat("libvirt_domain_block_stats_write_bytes_total", True, "wr.bytes", 1,
             "Bytes written to a block device."),
        Stat("libvirt_domain_block_stats_write_requests_total", True, "wr.reqs", 1,
             "Write requests on a block device."),
        Stat("libvirt_domain_block_stats_write_time_seconds_total", True, "wr.times", NS,
             "Time spent writing to a block device, in seconds."),
        Stat("libvirt_domain_block_stats_flush_requests_total", True, "fl.reqs", 1,
             "Flush requests on a block device."),
        Stat("libvirt_domain_block_stats_flush_time_seconds_total", True, "fl.times", NS,
             "Time spent flushing a block device, in seconds."),
        Stat("libvirt_domain_block_stats_capacity_bytes", False, "capacity", 1,
             "Logical size of the block device's image, in bytes."),
        Stat("libvirt_domain_block_stats_allocation", False, "allocation", 1,
             "Offset of the highest written sector of a block device, in bytes."),
        Stat("libvirt_domain_block_stats_physicalsize_bytes", False, "physical", 1,
             "Physical size of the block device's image container, in bytes."),
    ),
    "net": tuple(
        Stat(f"libvirt_domain_interface_stats_{direction}_{what}_total", True,
             f"{prefix}.{key}", 1, f"Network interface {direction} {what}.")
        for direction, prefix in (("receive", "rx"), ("transmit", "tx"))
        for what, key in (("bytes", "bytes"), ("packets", "pkts"), ("errors", "errs"),
                          ("drops", "drop"))
    ),
}

_ALL_STATS = GUEST_STATS + DEVICE_STATS["block"] + DEVICE_STATS["net"]
_DEVICE_NAMES = {stat.name for stat in DEVICE_STATS["block"] + DEVICE_STATS["net"]}

#: (series name, target_device or "") -> value
Samples = dict[tuple[str, str], float]
Family = CounterMetricFamily | GaugeMetricFamily


def samples(record: Mapping[str, Any]) -> tuple[Samples, set[str]]:
    """One bulk-stats record as series values, and the devices it names."""
    values: Samples = {}
    for stat in GUEST_STATS:
        if stat.key in record:
            values[stat.name, ""] = record[stat.key] * stat.scale
    devices = {""}
    for group, stats in DEVICE_STATS.items():
        for index in range(int(record.get(f"{group}.count", 0))):
            device = record.get(f"{group}.{index}.name")
            if device is None:
                continue
            devices.add(device)
            for stat in stats:
                value = record.get(f"{group}.{index}.{stat.key}")
                if value is not None:
                    values[stat.name, device] = value * stat.scale
    return values, devices


@dataclasses.dataclass
class Guest:
    """What we last knew about one guest, and since when all of it is current."""

    name: str
    uuid: str
    samples: Samples
    fresh_at: float


def merge(old: Guest | None, name: str, uuid: str, record: Mapping[str, Any],
          read_at: float) -> Guest:
    """A new record over the old one. A busy guest (NOWAIT) lacks some stats: keep their
    last values, for devices it still has, and keep its age growing. A shut-off guest
    has no runtime stats at all, so nothing is carried over for it."""
    values, devices = samples(record)
    if old is None or record.get("state.state") == libvirt.VIR_DOMAIN_SHUTOFF:
        return Guest(name, uuid, values, read_at)
    carried = {key: value for key, value in old.samples.items()
               if key not in values and key[1] in devices}
    return Guest(name, uuid, {**carried, **values}, old.fresh_at if carried else read_at)


def _families() -> dict[str, Family]:
    families: dict[str, Family] = {}
    for stat in _ALL_STATS:
        labels = DEVICE_LABELS if stat.name in _DEVICE_NAMES else GUEST_LABELS
        family = CounterMetricFamily if stat.counter else GaugeMetricFamily
        families[stat.name] = family(stat.name, stat.help, labels=labels)
    families["age"] = GaugeMetricFamily(
        "virtmesh_guest_stats_age_seconds",
        "How old a guest's statistics are: time since libvirt last reported all of them.",
        labels=GUEST_LABELS)
    families["timeouts"] = CounterMetricFamily(
        "virtmesh_guest_stats_timeouts_total",
        "Scrapes that served last known guest statistics because libvirt did not answer "
        "within the scrape budget.")
    families["seconds"] = GaugeMetricFamily(
        "virtmesh_guest_stats_scrape_seconds", "How long collecting guest statistics took.")
    return families


class Connection(Protocol):
    """What the collector uses of a LibvirtConnection."""

    @property
    def connected(self) -> bool: ...

    @property
    def conn(self) -> Any: ...


class GuestStatsCollector(Collector):
    """Guest statistics that a busy guest or a stuck libvirt cannot stall."""

    def __init__(self, connection: Connection, budget: float = 2.0) -> None:
        self.connection = connection
        self.budget = budget
        self.calls = 0  # bulk calls started
        self.timeouts = 0  # scrapes that served last known values
        self._lock = threading.Lock()
        self._call: Future[None] | None = None
        self._guests: dict[str, Guest] = {}

    def describe(self) -> Iterable[Metric]:
        return _families().values()

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        if self.connection.connected:
            try:
                self._refresh().result(timeout=self.budget)
            except TimeoutError:
                log.warning("guest statistics: libvirt did not answer within %.1fs; "
                            "serving last known values", self.budget)
                with self._lock:
                    self.timeouts += 1
        else:  # nothing we know about guests is trustworthy while libvirt is gone
            with self._lock:
                self._guests.clear()
        with self._lock:
            guests, timeouts = list(self._guests.values()), self.timeouts
        families = _families()
        now = time.monotonic()
        for guest in guests:
            for (series, device), value in guest.samples.items():
                labels = [guest.name, guest.uuid] + ([device] if device else [])
                families[series].add_metric(labels, value)
            families["age"].add_metric([guest.name, guest.uuid], max(now - guest.fresh_at, 0.0))
        families["timeouts"].add_metric([], timeouts)
        families["seconds"].add_metric([], time.monotonic() - started)
        yield from families.values()

    def _refresh(self) -> Future[None]:
        """The bulk call in flight, or a new one: a stuck call is waited for, never doubled."""
        with self._lock:
            if self._call is None or self._call.done():
                self._call = Future()
                self.calls += 1
                # a daemon thread: a call stuck in libvirt must not hold up the exit
                threading.Thread(target=self._fetch, args=(self._call,), daemon=True,
                                 name="guest-stats").start()
            return self._call

    def _fetch(self, call: Future[None]) -> None:
        try:
            read_at = time.monotonic()
            conn = self.connection.conn
            with libvirt_call("virConnectGetAllDomainStats"):
                records = conn.getAllDomainStats(GROUPS, FLAGS)
            old, guests = self._guests, {}  # only this thread replaces _guests
            for dom, record in records:
                uuid = dom.UUIDString()
                guests[uuid] = merge(old.get(uuid), dom.name(), uuid, record, read_at)
            with self._lock:
                self._guests = guests  # guests that are gone are dropped here
        except (libvirt.libvirtError, ServiceError) as error:
            log.warning("guest statistics: %s; serving last known values", error)
        finally:
            call.set_result(None)
