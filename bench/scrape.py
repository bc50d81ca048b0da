"""Benchmark: how long a /metrics scrape of guest statistics takes with many guests.

Starts ``--guests`` running guests in libvirt's test driver (a private node file),
registers the compute service's guest-statistics collector on a registry and
renders it ``--scrapes`` times, as a Prometheus scrape does. Prints p50/p99 of the
collect time (the bulk stats call and the conversion) and of the whole scrape
(collect + text rendering), and the exposition's size.

The test driver's bulk stats report only the state group, so a second run feeds
the same collector QEMU-shaped records (CPU, balloon, vCPU, one disk, one NIC per
guest) from a stand-in connection: the conversion and rendering cost of real guests.

Run from the repository root: ``.venv/bin/python -m bench.scrape [--guests 500]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import libvirt
from prometheus_client import CollectorRegistry, generate_latest

from services.common.libvirt_connection import LibvirtConnection
from services.compute.metrics import Connection, GuestStatsCollector


def node_xml(guests: int) -> str:
    domains = "".join(f"<domain type='test'><name>guest-{i:04d}</name><memory>65536</memory>"
                      "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
                      for i in range(guests))
    return f"<node>{domains}</node>"


class _Domain:
    def __init__(self, index: int) -> None:
        self.index = index

    def name(self) -> str:
        return f"guest-{self.index:04d}"

    def UUIDString(self) -> str:  # noqa: N802 - libvirt's name
        return f"00000000-0000-4000-8000-{self.index:012d}"


class QemuShaped:
    """Stands in for a LibvirtConnection whose guests report what a QEMU guest does."""

    connected = True

    def __init__(self, guests: int) -> None:
        record: dict[str, Any] = {
            "state.state": 1, "state.reason": 1, "cpu.time": 10**10, "cpu.user": 10**9,
            "cpu.system": 10**9, "vcpu.current": 2, "vcpu.maximum": 2,
            **{f"balloon.{key}": 1000 for key in (
                "current", "maximum", "swap_in", "swap_out", "major_fault", "minor_fault",
                "unused", "available", "usable", "rss", "disk_caches")},
            "net.count": 1, "net.0.name": "vnet0",
            **{f"net.0.{d}.{k}": 1 for d in ("rx", "tx") for k in ("bytes", "pkts", "errs",
                                                                    "drop")},
            "block.count": 1, "block.0.name": "vda", "block.0.path": "/var/lib/vda.qcow2",
            **{f"block.0.{k}": 1 for k in ("rd.reqs", "rd.bytes", "rd.times", "wr.reqs",
                                           "wr.bytes", "wr.times", "fl.reqs", "fl.times",
                                           "allocation", "capacity", "physical")},
        }
        self.records = [(_Domain(i), dict(record)) for i in range(guests)]

    @property
    def conn(self) -> QemuShaped:
        return self

    def getAllDomainStats(self, _groups: int, _flags: int  # noqa: N802 - libvirt's name
                          ) -> list[tuple[_Domain, dict[str, Any]]]:
        return self.records


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(label: str, connection: Connection, scrapes: int, budget: float) -> None:
    collector = GuestStatsCollector(connection, budget)
    registry = CollectorRegistry()
    registry.register(collector)
    generate_latest(registry)  # warm up
    collects, renders = [], []
    body = b""
    for _ in range(scrapes):
        start = time.perf_counter()
        list(collector.collect())
        collects.append(time.perf_counter() - start)
        start = time.perf_counter()
        body = generate_latest(registry)
        renders.append(time.perf_counter() - start)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    ms = 1000.0
    print(f"{label}: collect p50 {_percentile(collects, .5) * ms:.1f} ms, "
          f"p99 {_percentile(collects, .99) * ms:.1f} ms; whole scrape p50 "
          f"{_percentile(renders, .5) * ms:.1f} ms, p99 {_percentile(renders, .99) * ms:.1f} ms;"
          f" {len(body) / 1024:.0f} KiB, {series} series; {collector.timeouts} timeouts")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guests", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--budget", type=float, default=2.0, help="scrape budget, seconds")
    args = parser.parse_args(argv)
    print(f"{args.guests} guests, {args.scrapes} scrapes, budget {args.budget:.1f} s")
    with tempfile.TemporaryDirectory(prefix="virtmesh-scrape-") as tmp:
        node = Path(tmp) / "node.xml"
        node.write_text(node_xml(args.guests))
        connection = LibvirtConnection(f"test://{node}")
        connection.start(wait=30)
        try:
            running = len(connection.conn.listAllDomains(
                libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
            assert running == args.guests, f"{running} of {args.guests} guests running"
            measure("test driver", connection, args.scrapes, args.budget)
        finally:
            connection.close()
    measure("QEMU-shaped records", QemuShaped(args.guests), args.scrapes, args.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
