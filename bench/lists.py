"""Benchmark: every domain with its summary, at 1,000, 10,000 and 50,000 domains.

For each size, a fresh private libvirtd, compute service and gateway (bench/paths.py)
serve the same domains, read from one test-driver node file. libvirt's remote
protocol lists at most 16,384 domains per call, so 50,000 has no libvirt figure.
Per round, interleaved:

* ``libvirt``: libvirt's remote protocol the cheapest way to most of a summary:
  three ``listAllDomains`` calls (all; autostart; managed save) and ``info()`` per
  domain, sorted by name. It leaves out the state reason, OS type and persistence,
  which a ``Domain`` has: a reference in libvirt's favour.
* ``service`` and ``gateway``: every page of ``ListDomains(page_size=1000)``,
  straight to the compute service's socket and through the gateway (TLS).

It prints the median wall time of ``--rounds`` rounds per path and size, and the CPU
time of the client and the path's servers (steadier on a busy host), per domain too,
and the goals of issue 14 as ratios measured in the same run: the whole
10,000-domain list through the gateway in at most 0.2x libvirt's time, and a cost per
domain at 50,000 domains no more than 1.5x that at 10,000 (lists linear in N).

Run from the repository root: ``.venv/bin/python -m bench.lists [--sizes 1000,10000]``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import libvirt

from bench.bench import RPC_TIMEOUT, BenchError, Processes, run_main
from bench.paths import PATHS, Timings, goal, goal_line, interleaved, medians, node_servers
from bench.paths import parser as bench_parser
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

PAGE_SIZE = 1000
#: goal: the whole 10,000-domain list through the gateway in at most this x libvirt's
GOAL_GATEWAY_OVER_LIBVIRT = 0.2
#: goal: cost per domain at the largest size at most this x that at 10,000
GOAL_LINEAR = 1.5
#: libvirt's remote protocol lists at most this many domains per call
#: (REMOTE_DOMAIN_LIST_MAX): beyond it the libvirt path has no figure
LIBVIRT_LIST_MAX = 16384


def libvirt_list(conn: libvirt.virConnect) -> int:
    """libvirt's three list calls and ``info()`` per domain, sorted by name."""
    autostart = {dom.UUIDString() for dom in conn.listAllDomains(
        libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)}
    saved = {dom.UUIDString() for dom in conn.listAllDomains(
        libvirt.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE)}
    rows = sorted((dom.name(), dom.UUIDString(), dom.ID(), dom.info(),
                   dom.UUIDString() in autostart, dom.UUIDString() in saved)
                  for dom in conn.listAllDomains(0))
    return len(rows)


def grpc_list(stub: pb_grpc.ComputeServiceStub) -> int:
    """Every page of ListDomains."""
    count, token = 0, ""
    while True:
        reply = stub.ListDomains(pb.ListDomainsRequest(page_size=PAGE_SIZE, page_token=token),
                                 timeout=RPC_TIMEOUT)
        count += len(reply.domains)
        token = reply.next_page_token
        if not token:
            return count


def counted(call: Callable[[], int], expected: int, path: str) -> Callable[[], int]:
    def checked() -> int:
        count = call()
        if count != expected:
            raise BenchError(f"{path} listed {count} domains, not {expected}")
        return count

    return checked


def measure_size(tmp: Path, domains: int, rounds: int) -> Timings:
    """Seconds per round and path for ``domains`` domains, on servers of their own."""
    with node_servers(tmp, "list", domains) as clients:
        calls: dict[str, Callable[[], int]] = {
            "libvirt": lambda: libvirt_list(clients.libvirt),
            "service": lambda: grpc_list(clients.service),
            "gateway": lambda: grpc_list(clients.gateway),
        }
        if domains > LIBVIRT_LIST_MAX:
            del calls["libvirt"]
        return interleaved(clients, {path: counted(call, domains, path)
                                     for path, call in calls.items()},
                           rounds, 1, f"{domains} domains")


def table(by_size: dict[int, dict[str, float]], what: str) -> list[str]:
    lines = [f"{what}: median seconds for every domain, and per domain",
             f"{'domains':>8} | " + " | ".join(f"{path + ' s':>10} {'us/dom':>7}"
                                               for path in PATHS)
             + " | gateway/libvirt", "-" * 84]
    for domains, by_path in by_size.items():
        lines.append(f"{domains:>8} | " + " | ".join(
            f"{by_path[path]:>10.3f} {by_path[path] / domains * 1e6:>7.1f}" if path in by_path
            else f"{'n/a':>10} {'':>7}" for path in PATHS)
            + (f" | {by_path['gateway'] / by_path['libvirt']:>8.3f}x" if "libvirt" in by_path
               else f" | n/a: libvirt lists at most {LIBVIRT_LIST_MAX} per call"))
    return lines + [""]


def goals_of(wall: dict[int, dict[str, float]], cpu: dict[int, dict[str, float]]
             ) -> tuple[list[str], dict[str, Any]]:
    """The goals on wall time, with the same ratio in CPU time beside them."""
    lines, goals = [], {}
    if 10_000 in wall and "libvirt" in wall[10_000]:
        ratio = wall[10_000]["gateway"] / wall[10_000]["libvirt"]
        cpu_ratio = cpu[10_000]["gateway"] / cpu[10_000]["libvirt"]
        goals["gateway_over_libvirt_10k"] = goal(ratio, GOAL_GATEWAY_OVER_LIBVIRT,
                                                 cpu_ratio=cpu_ratio)
        lines.append(goal_line("10,000 domains through the gateway, x libvirt's time",
                               ratio, GOAL_GATEWAY_OVER_LIBVIRT)
                     + f" (CPU time: {cpu_ratio:.3f}x)")
    largest = max(wall)
    if 10_000 in wall and largest > 10_000:
        def per_domain(by_size: dict[int, dict[str, float]]) -> float:
            return (by_size[largest]["gateway"] / largest) / (by_size[10_000]["gateway"] / 10_000)

        ratio, cpu_ratio = per_domain(wall), per_domain(cpu)
        goals["linear"] = goal(ratio, GOAL_LINEAR, sizes=[10_000, largest], cpu_ratio=cpu_ratio)
        lines.append(goal_line(f"gateway time per domain at {largest}, x that at 10,000 "
                               "(linear in N)", ratio, GOAL_LINEAR)
                     + f" (CPU time: {cpu_ratio:.2f}x)")
    return lines, goals


def run(args: argparse.Namespace, tmp: Path, procs: Processes) -> dict[str, Any]:
    del procs  # every size starts servers of its own
    rounds: dict[int, Timings] = {}
    for domains in args.sizes:
        print(f"[lists] {domains} domains ...", file=sys.stderr)
        rounds[domains] = measure_size(tmp, domains, args.rounds)
    wall = {domains: medians(timings.wall) for domains, timings in rounds.items()}
    cpu = {domains: medians(timings.cpu) for domains, timings in rounds.items()}
    goal_lines, goals = goals_of(wall, cpu)
    print("ListDomains, every page of 1000, vs libvirt's 3 list calls + info() per domain "
          f"(median of {args.rounds} rounds)\n")
    print("\n".join(table(wall, "wall time") + table(
        cpu, "CPU time of the client and the path's servers") + goal_lines))
    for domains, timings in rounds.items():
        print(f"CPU us per domain at {domains}: " + "; ".join(
            f"{path}: " + ", ".join(f"{name} {statistics.median(values) / domains * 1e6:.1f}"
                                    for name, values in by_process.items())
            for path, by_process in timings.cpu_by_process.items()))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "libvirt_reference": "listAllDomains(0, AUTOSTART, MANAGEDSAVE) + info() per domain, "
                             "sorted by name, remote protocol over a UNIX socket",
        "page_size": PAGE_SIZE,
        "rounds_wall_s": {str(n): timings.wall for n, timings in rounds.items()},
        "rounds_cpu_s": {str(n): timings.cpu for n, timings in rounds.items()},
        "median_wall_s": {str(n): by_path for n, by_path in wall.items()},
        "median_cpu_s": {str(n): by_path for n, by_path in cpu.items()},
        "cpu_by_process_s": {str(n): timings.cpu_by_process for n, timings in rounds.items()},
        "goals": goals,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser("bench.lists", __doc__, "bench-lists.json")
    parser.add_argument("--sizes", default="1000,10000,50000",
                        help="comma-separated numbers of domains")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per size")
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",")]
    if args.rounds < 1 or min(args.sizes) < 1:
        parser.error("--rounds and --sizes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
