"""What the bulk benches share: servers on a test-driver node file, a client per
path (libvirt's remote protocol, the compute service, the gateway), and rounds of
timed calls interleaved across the paths."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import libvirt

from bench.bench import Mesh, Processes, cpu_snapshot, start_mesh
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

PATHS = ("libvirt", "service", "gateway")
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]


def write_node(path: Path, prefix: str, domains: int) -> None:
    """A test-driver node file with ``domains`` domains (the driver starts them)."""
    with path.open("w") as out:
        out.write("<node>\n")
        for i in range(domains):
            out.write(f"<domain type='test'><name>{prefix}-{i:06d}</name>"
                      "<memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
                      "</domain>\n")
        out.write("</node>\n")


@dataclass
class Clients:
    """One client per path, on servers that serve the same domains."""

    mesh: Mesh
    procs: Processes
    libvirt: libvirt.virConnect
    service: pb_grpc.ComputeServiceStub
    gateway: pb_grpc.ComputeServiceStub


@contextlib.contextmanager
def node_servers(tmp: Path, prefix: str, domains: int) -> Iterator[Clients]:
    """A private libvirtd, compute service and gateway of their own, all on one node
    file of ``domains`` domains, and a client of each; all stopped at the end."""
    node = tmp / f"{prefix}-{domains}.xml"
    write_node(node, prefix, domains)
    procs = Processes(tmp / f"logs-{prefix}-{domains}")
    try:
        mesh = start_mesh(procs, tmp / f"run-{prefix}-{domains}", f"test://{node}", str(node))
        conn = libvirt.open(mesh.libvirt_uri)
        with contextlib.closing(conn), \
                grpc.insecure_channel(mesh.service_target, options=CHANNEL_OPTIONS) as service, \
                grpc.secure_channel(mesh.gateway_target, mesh.credentials,
                                    options=CHANNEL_OPTIONS) as gateway:
            yield Clients(mesh, procs, conn, pb_grpc.ComputeServiceStub(service),
                          pb_grpc.ComputeServiceStub(gateway))
    finally:
        procs.stop_all()


#: the server processes each path's calls run in
SERVERS = {"libvirt": ("libvirtd",), "service": ("compute",), "gateway": ("gateway", "compute")}


@dataclass
class Timings:
    """Per path: wall seconds per call, and CPU seconds per call of this client and
    of the path's servers together (steadier than wall time on a busy host)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    #: the same CPU seconds per call by process (client, libvirtd, compute, gateway)
    cpu_by_process: dict[str, dict[str, list[float]]]


def interleaved(clients: Clients, calls: dict[str, Callable[[], Any]], rounds: int,
                per_round: int, label: str) -> Timings:
    """``rounds`` rounds of ``per_round`` calls on each path in turn (so drift hits
    every path alike), after one unrecorded call each."""
    timings = Timings({path: [] for path in calls}, {path: [] for path in calls},
                      {path: {} for path in calls})
    pids = clients.mesh.server_pids
    for call in calls.values():
        call()
    for number in range(rounds):
        for path, call in calls.items():
            clients.mesh.check_alive(clients.procs)
            servers = {name: pids[name] for name in SERVERS[path]}
            before = cpu_snapshot(servers)
            for _ in range(per_round):
                started = time.perf_counter()
                call()
                timings.wall[path].append(time.perf_counter() - started)
            after = cpu_snapshot(servers)
            used = {name: (after[name] - before[name]) / per_round for name in after}
            timings.cpu[path].append(sum(used.values()))
            for name, seconds in used.items():
                timings.cpu_by_process[path].setdefault(name, []).append(seconds)
        print(f"  {label}, round {number + 1}/{rounds}: " + ", ".join(
            f"{path} {statistics.median(timings.wall[path][-per_round:]) * 1000:.2f} ms "
            f"(CPU {timings.cpu[path][-1] * 1000:.2f} ms)" for path in calls), file=sys.stderr)
    return timings


def parser(prog: str, doc: str, out: str) -> argparse.ArgumentParser:
    """A bulk bench's command line: its own options go on top of --out and --keep-tmp."""
    made = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    made.add_argument("--out", default=out, help="JSON results file")
    made.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    return made


def goal_line(what: str, value: float, limit: float, unit: str = "x") -> str:
    """A goal's line: what, the limit, the figure of this run, met or not."""
    return (f"goal: {what} <= {limit:g}{unit}: {value:.3f}{unit}: "
            f"{'met' if value <= limit else 'NOT met'}")


def goal(ratio: float, limit: float, **more: Any) -> dict[str, Any]:
    return {"ratio": ratio, "goal": limit, "met": ratio <= limit, **more}


def medians(times: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {path: statistics.median(values) for path, values in times.items()}
