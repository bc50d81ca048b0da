"""Benchmark: bulk statistics of 500 guests, libvirt's remote protocol against
GetDomainStats straight to the compute service and through the gateway.

A private libvirtd, compute service and gateway (bench/paths.py) serve the same
``--guests`` running guests of one test-driver node file. Per round, interleaved,
``--calls`` calls on each path: libvirt's ``getAllDomainStats()`` (every group the
driver has) over its remote protocol, and ``GetDomainStats`` with no names and no
groups (every guest, every group). It prints the median latency per path, the CPU
time per call of the client and the path's servers, and the goal of issue 14 as a
ratio measured in the same run: through the gateway in at most 1.0x libvirt's time.

libvirt's test driver reports only the state group, so it also times the compute
service's conversion alone (``convert.add_domain_stats``) on QEMU-shaped records (CPU,
balloon, two vCPUs, a disk and a NIC per guest: bench/scrape.py's), per guest.

Run from the repository root: ``.venv/bin/python -m bench.stats [--guests 500]``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.bench import RPC_TIMEOUT, BenchError, Processes, run_main
from bench.paths import goal, goal_line, interleaved, medians, node_servers
from bench.paths import parser as bench_parser
from bench.scrape import QemuShaped
from services.compute import convert
from virtmesh.compute.v1 import compute_service_pb2 as pb

#: goal: GetDomainStats through the gateway in at most this x libvirt's bulk call
GOAL_GATEWAY_OVER_LIBVIRT = 1.0


def conversion_us_per_guest(guests: int, repeat: int = 5) -> float:
    """Best of ``repeat`` conversions of QEMU-shaped records into a response, in CPU
    time (this process only) per guest."""
    records = QemuShaped(guests).conn.getAllDomainStats(0, 0)
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        convert.add_domain_stats(pb.GetDomainStatsResponse().stats, records)
        best = min(best, time.process_time() - started)
    return best / guests * 1e6


def run(args: argparse.Namespace, tmp: Path, procs: Processes) -> dict[str, Any]:
    del procs  # the servers are node_servers'
    request = pb.GetDomainStatsRequest()
    with node_servers(tmp, "stats", args.guests) as clients:
        calls: dict[str, Callable[[], int]] = {
            "libvirt": lambda: len(clients.libvirt.getAllDomainStats(0, 0)),
            "service": lambda: len(clients.service.GetDomainStats(
                request, timeout=RPC_TIMEOUT).stats),
            "gateway": lambda: len(clients.gateway.GetDomainStats(
                request, timeout=RPC_TIMEOUT).stats),
        }
        counts = {path: call() for path, call in calls.items()}
        if set(counts.values()) != {args.guests}:
            raise BenchError(f"paths report different numbers of guests: {counts}")
        timings = interleaved(clients, calls, args.rounds, args.calls,
                              f"{args.guests} guests")
    times = timings.wall
    median = medians(times)
    cpu = medians(timings.cpu)
    ratio = median["gateway"] / median["libvirt"]
    converted = conversion_us_per_guest(args.guests)
    print(f"GetDomainStats of {args.guests} guests vs libvirt's getAllDomainStats, median of "
          f"{args.rounds} x {args.calls} calls\n")
    for path, seconds in median.items():
        spread = statistics.quantiles(times[path], n=10)
        print(f"{path:>8}: p50 {seconds * 1000:7.2f} ms  (p10 {spread[0] * 1000:.2f}, "
              f"p90 {spread[-1] * 1000:.2f})  {median[path] / median['libvirt']:.2f}x libvirt;"
              f"  CPU {cpu[path] * 1000:6.2f} ms  {cpu[path] / cpu['libvirt']:.2f}x libvirt")
    print("CPU ms per call by process: " + "; ".join(
        f"{path}: " + ", ".join(f"{name} {statistics.median(values) * 1000:.2f}"
                                for name, values in by_process.items())
        for path, by_process in timings.cpu_by_process.items()))
    print(f"\nconversion of QEMU-shaped records: {converted:.1f} us CPU per guest")
    print(goal_line("GetDomainStats through the gateway, x libvirt's bulk call",
                    ratio, GOAL_GATEWAY_OVER_LIBVIRT)
          + f" (CPU time: {cpu['gateway'] / cpu['libvirt']:.2f}x)")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "guests": args.guests,
        "calls_s": times,
        "median_s": median,
        "cpu_per_call_s": timings.cpu,
        "median_cpu_s": cpu,
        "cpu_by_process_s": timings.cpu_by_process,
        "qemu_shaped_conversion_us_per_guest": converted,
        "goals": {"gateway_over_libvirt": goal(
            ratio, GOAL_GATEWAY_OVER_LIBVIRT, cpu_ratio=cpu["gateway"] / cpu["libvirt"])},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser("bench.stats", __doc__, "bench-stats.json")
    parser.add_argument("--guests", type=int, default=500, help="running guests")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds")
    parser.add_argument("--calls", type=int, default=20, help="calls per path and round")
    args = parser.parse_args(argv)
    if min(args.guests, args.rounds, args.calls) < 1:
        parser.error("--guests, --rounds and --calls must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
