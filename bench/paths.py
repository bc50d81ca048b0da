"""What the bulk benches share: servers on a test-driver node file, a client per
path (libvirt's remote protocol, the compute service, the gateway), and rounds of
timed calls interleaved across the paths."""

from __future__ import annotations

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

from bench.bench import Mesh, Processes, start_mesh
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


def interleaved(clients: Clients, calls: dict[str, Callable[[], Any]], rounds: int,
                per_round: int, label: str) -> dict[str, list[float]]:
    """Seconds per call: ``rounds`` rounds of ``per_round`` calls on each path in
    turn (so drift hits every path alike), after one unrecorded call each."""
    times: dict[str, list[float]] = {path: [] for path in calls}
    for call in calls.values():
        call()
    for number in range(rounds):
        for path, call in calls.items():
            clients.mesh.check_alive(clients.procs)
            for _ in range(per_round):
                started = time.perf_counter()
                call()
                times[path].append(time.perf_counter() - started)
        print(f"  {label}, round {number + 1}/{rounds}: " + ", ".join(
            f"{path} {statistics.median(times[path][-per_round:]) * 1000:.2f} ms"
            for path in calls), file=sys.stderr)
    return times


def goal_line(what: str, value: float, limit: float, unit: str = "x") -> str:
    """A goal's line: what, the limit, the figure of this run, met or not."""
    return (f"goal: {what} <= {limit:g}{unit}: {value:.3f}{unit}: "
            f"{'met' if value <= limit else 'NOT met'}")


def goal(ratio: float, limit: float, **more: Any) -> dict[str, Any]:
    return {"ratio": ratio, "goal": limit, "met": ratio <= limit, **more}


def medians(times: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {path: statistics.median(values) for path, values in times.items()}
