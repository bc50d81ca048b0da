"""Benchmark: every domain with its summary, at 1,000, 10,000 and 50,000 domains.

For each size, a fresh private libvirtd, compute service and gateway (bench/bench.py)
serve the same domains, read from one test-driver node file. Per round, interleaved:

* ``libvirt``: libvirt's remote protocol the cheapest way to most of a summary:
  three ``listAllDomains`` calls (all; autostart; managed save) and ``info()`` per
  domain, sorted by name. It leaves out the state reason, OS type and persistence,
  which a ``Domain`` has: a reference in libvirt's favour.
* ``service`` and ``gateway``: every page of ``ListDomains(page_size=1000)``,
  straight to the compute service's socket and through the gateway (TLS).

It prints the median wall time of ``--rounds`` rounds per path and size, the cost per
domain, and the goals of issue 14 as ratios measured in the same run: the whole
10,000-domain list through the gateway in at most 0.2x libvirt's time, and a cost per
domain at 50,000 domains no more than 1.5x that at 10,000 (lists linear in N).

Run from the repository root: ``.venv/bin/python -m bench.lists [--sizes 1000,10000]``.
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

import grpc
import libvirt

from bench.bench import RPC_TIMEOUT, BenchError, Mesh, Processes, run_main, start_mesh
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

PATHS = ("libvirt", "service", "gateway")
PAGE_SIZE = 1000
#: goal: the whole 10,000-domain list through the gateway in at most this x libvirt's
GOAL_GATEWAY_OVER_LIBVIRT = 0.2
#: goal: cost per domain at the largest size at most this x that at 10,000
GOAL_LINEAR = 1.5
#: libvirt's remote protocol lists at most this many domains per call
#: (REMOTE_DOMAIN_LIST_MAX): beyond it the libvirt path has no figure
LIBVIRT_LIST_MAX = 16384
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def write_node(path: Path, domains: int) -> None:
    """A test-driver node file with ``domains`` domains (the driver starts them)."""
    with path.open("w") as out:
        out.write("<node>\n")
        for i in range(domains):
            out.write(f"<domain type='test'><name>list-{i:06d}</name><memory>65536</memory>"
                      "<vcpu>1</vcpu><os><type>hvm</type></os></domain>\n")
        out.write("</node>\n")


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


def timed(call: Callable[[], int], expected: int, what: str) -> float:
    started = time.perf_counter()
    count = call()
    elapsed = time.perf_counter() - started
    if count != expected:
        raise BenchError(f"{what} listed {count} domains, not {expected}")
    return elapsed


def measure_size(tmp: Path, domains: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per round and path for ``domains`` domains, on servers of their own."""
    node = tmp / f"node-{domains}.xml"
    write_node(node, domains)
    procs = Processes(tmp / f"logs-{domains}")
    try:
        mesh = start_mesh(procs, tmp / f"run-{domains}", f"test://{node}", str(node))
        return _rounds(mesh, procs, domains, rounds)
    finally:
        procs.stop_all()


def _rounds(mesh: Mesh, procs: Processes, domains: int, rounds: int) -> dict[str, list[float]]:
    conn = libvirt.open(mesh.libvirt_uri)
    service = grpc.insecure_channel(mesh.service_target, options=CHANNEL_OPTIONS)
    gateway = grpc.secure_channel(mesh.gateway_target, mesh.credentials,
                                  options=CHANNEL_OPTIONS)
    calls: dict[str, Callable[[], int]] = {
        "libvirt": lambda: libvirt_list(conn),
        "service": lambda: grpc_list(pb_grpc.ComputeServiceStub(service)),
        "gateway": lambda: grpc_list(pb_grpc.ComputeServiceStub(gateway)),
    }
    paths = [path for path in PATHS if path != "libvirt" or domains <= LIBVIRT_LIST_MAX]
    times: dict[str, list[float]] = {path: [] for path in paths}
    try:
        for path in paths:  # warm-up round, unrecorded; checks every path sees them all
            timed(calls[path], domains, path)
        for number in range(rounds):
            for path in paths:  # interleaved, so drift hits every path alike
                mesh.check_alive(procs)
                times[path].append(timed(calls[path], domains, path))
            print(f"  {domains} domains, round {number + 1}/{rounds}: " + ", ".join(
                f"{path} {times[path][-1]:.3f}s" for path in paths), file=sys.stderr)
    finally:
        service.close()
        gateway.close()
        conn.close()
    return times


def report(medians: dict[int, dict[str, float]]) -> tuple[str, dict[str, Any]]:
    lines = [f"{'domains':>8} | " + " | ".join(f"{path + ' s':>10} {'us/dom':>7}"
                                               for path in PATHS)
             + " | gateway/libvirt", "-" * 84]
    for domains, by_path in medians.items():
        lines.append(f"{domains:>8} | " + " | ".join(
            f"{by_path[path]:>10.3f} {by_path[path] / domains * 1e6:>7.1f}" if path in by_path
            else f"{'n/a':>10} {'':>7}" for path in PATHS)
            + (f" | {by_path['gateway'] / by_path['libvirt']:>8.3f}x" if "libvirt" in by_path
               else " |      n/a (libvirt lists at most 16384 per call)"))
    goals: dict[str, Any] = {}
    if 10_000 in medians:
        ratio = medians[10_000]["gateway"] / medians[10_000]["libvirt"]
        goals["gateway_over_libvirt_10k"] = {"ratio": ratio, "goal": GOAL_GATEWAY_OVER_LIBVIRT,
                                             "met": ratio <= GOAL_GATEWAY_OVER_LIBVIRT}
    largest = max(medians)
    if 10_000 in medians and largest > 10_000:
        per_domain = {n: medians[n]["gateway"] / n for n in (10_000, largest)}
        ratio = per_domain[largest] / per_domain[10_000]
        goals["linear"] = {"ratio": ratio, "goal": GOAL_LINEAR, "met": ratio <= GOAL_LINEAR,
                           "sizes": [10_000, largest]}
    lines.append("")
    if "gateway_over_libvirt_10k" in goals:
        goal = goals["gateway_over_libvirt_10k"]
        lines.append(f"goal: 10,000 domains through the gateway <= {GOAL_GATEWAY_OVER_LIBVIRT}x "
                     f"libvirt: {goal['ratio']:.3f}x: {'met' if goal['met'] else 'NOT met'}")
    if "linear" in goals:
        goal = goals["linear"]
        lines.append(f"goal: cost per domain at {largest} <= {GOAL_LINEAR}x that at 10,000 "
                     f"(linear): {goal['ratio']:.2f}x: {'met' if goal['met'] else 'NOT met'}")
    return "\n".join(lines), goals


def run(args: argparse.Namespace, tmp: Path, procs: Processes) -> dict[str, Any]:
    del procs  # every size starts servers of its own
    medians: dict[int, dict[str, float]] = {}
    rounds: dict[int, dict[str, list[float]]] = {}
    for domains in args.sizes:
        print(f"[lists] {domains} domains ...", file=sys.stderr)
        rounds[domains] = measure_size(tmp, domains, args.rounds)
        medians[domains] = {path: statistics.median(times)
                            for path, times in rounds[domains].items()}
    text, goals = report(medians)
    print("ListDomains, every page of 1000, vs libvirt's 3 list calls + info() per domain "
          f"(median of {args.rounds} rounds)\n\n{text}")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "libvirt_reference": "listAllDomains(0, AUTOSTART, MANAGEDSAVE) + info() per domain, "
                             "sorted by name, remote protocol over a UNIX socket",
        "page_size": PAGE_SIZE,
        "rounds_s": {str(n): times for n, times in rounds.items()},
        "median_s": {str(n): by_path for n, by_path in medians.items()},
        "goals": goals,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.lists", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000",
                        help="comma-separated numbers of domains")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per size")
    parser.add_argument("--out", default="bench-lists.json", help="JSON results file")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",")]
    if args.rounds < 1 or min(args.sizes) < 1:
        parser.error("--rounds and --sizes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
