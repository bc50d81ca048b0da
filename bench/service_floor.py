"""Benchmark: what a service's skeleton costs per call, against gRPC servers that do
the same work and nothing else, in one run.

Every path answers GetDomain for the same domain of ``test:///default`` with the
compute service's own backend and convert code (a libvirt lookup and the summary):

* ``service``: the compute service as it runs (``python -m services compute``):
  grpc.aio, the call on a worker thread, admission, metrics, request id, error
  mapping, the log line;
* ``bare-sync``: a plain ``grpc.server`` with a thread pool calling the same two
  functions (the shape of the services before they moved to grpc.aio);
* ``bare-aio``: a plain ``grpc.aio`` server calling them on its event loop (no
  thread: the floor of Python gRPC, unsafe for calls that may block).

and ``work``: the two functions alone, in a loop in one process. Each server runs in
its own process; CPU per call is that process's user + system time over the calls
answered by ``--threads`` client threads sharing one channel.

Run from the repository root: ``.venv/bin/python -m bench.service_floor``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc

from bench.bench import Processes, process_cpu_seconds, wait_until
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

DOMAIN = "test"


def _work() -> tuple[object, object]:
    """The compute service's GetDomain work, without its server."""
    from services.common.libvirt_connection import LibvirtConnection
    from services.compute import convert
    from services.compute.backend import ComputeBackend

    connection = LibvirtConnection("test:///default")
    connection.start(wait=10)
    backend = ComputeBackend(connection)
    return backend, convert


def serve_bare(kind: str, socket: str) -> None:
    """A plain gRPC server of GetDomain (and health), until killed."""
    backend, convert = _work()

    def get_domain(request: pb.GetDomainRequest, _context: object) -> pb.GetDomainResponse:
        return pb.GetDomainResponse(domain=convert.domain(  # type: ignore[attr-defined]
            backend.lookup(request.name)))  # type: ignore[attr-defined]

    class Servicer(pb_grpc.ComputeServiceServicer):  # type: ignore[misc]
        pass

    if kind == "sync":
        Servicer.GetDomain = lambda self, request, context: get_domain(request, context)  # type: ignore[method-assign,assignment]
        server = grpc.server(futures.ThreadPoolExecutor(32))
        pb_grpc.add_ComputeServiceServicer_to_server(Servicer(), server)  # type: ignore[abstract]
        server.add_insecure_port(f"unix:{socket}")
        server.start()
        server.wait_for_termination()
        return

    async def get_domain_inline(self: object, request: pb.GetDomainRequest,
                                context: object) -> pb.GetDomainResponse:
        return get_domain(request, context)

    Servicer.GetDomain = get_domain_inline  # type: ignore[method-assign,assignment]

    async def main() -> None:
        server = grpc.aio.server()
        pb_grpc.add_ComputeServiceServicer_to_server(Servicer(), server)  # type: ignore[abstract]
        server.add_insecure_port(f"unix:{socket}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def answers(socket: str) -> bool:
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        pb_grpc.ComputeServiceStub(channel).GetDomain(pb.GetDomainRequest(name=DOMAIN),
                                                      timeout=2)
    return True


def work_cpu_ms(calls: int) -> float:
    backend, convert = _work()
    started = time.process_time()
    for _ in range(calls):
        pb.GetDomainResponse(domain=convert.domain(backend.lookup(DOMAIN)))  # type: ignore[attr-defined]
    return (time.process_time() - started) * 1000 / calls


def cpu_per_call_ms(socket: str, pid: int, threads: int, calls: int) -> tuple[float, float]:
    """(server CPU ms per call, calls per second) with ``threads`` callers."""
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        request = pb.GetDomainRequest(name=DOMAIN)
        for _ in range(200):
            stub.GetDomain(request, timeout=10)

        def call() -> None:
            for _ in range(calls // threads):
                stub.GetDomain(request, timeout=10)

        workers = [threading.Thread(target=call) for _ in range(threads)]
        cpu, wall = process_cpu_seconds(pid), time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        done = calls // threads * threads
        return ((process_cpu_seconds(pid) - cpu) * 1000 / done,
                done / (time.monotonic() - wall))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per measurement")
    parser.add_argument("--threads", type=int, default=8, help="client threads")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per path")
    parser.add_argument("--serve", choices=("sync", "aio"), help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_bare(args.serve, args.socket)
        return 0
    with tempfile.TemporaryDirectory(prefix="vm-floor-") as tmp:
        procs = Processes(Path(tmp) / "log")
        try:
            paths = {
                "service": [sys.executable, "-m", "services", "compute", "--state-dir", tmp,
                            "--uri", "test:///default", "--socket", f"{tmp}/service.sock",
                            "--socket-ro", "none"],
                "bare-sync": [sys.executable, "-m", "bench.service_floor", "--serve", "sync",
                              "--socket", f"{tmp}/bare-sync.sock"],
                "bare-aio": [sys.executable, "-m", "bench.service_floor", "--serve", "aio",
                             "--socket", f"{tmp}/bare-aio.sock"],
            }
            pids = {}
            for name, argv_ in paths.items():
                proc = procs.start(name, argv_)
                socket = f"{tmp}/{name}.sock"
                wait_until(lambda socket=socket: os.path.exists(socket) and answers(socket),  # type: ignore[misc]
                           name, procs, [(name, proc)])
                pids[name] = proc.pid
            samples: dict[str, list[float]] = {name: [] for name in paths}
            rates: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.repeat):  # interleaved: load from elsewhere hits all alike
                for name in paths:
                    cpu, rate = cpu_per_call_ms(f"{tmp}/{name}.sock", pids[name],
                                                args.threads, args.calls)
                    samples[name].append(cpu)
                    rates[name].append(rate)
            work = statistics.median(work_cpu_ms(args.calls) for _ in range(args.repeat))
        finally:
            procs.stop_all()
    median = {name: statistics.median(values) for name, values in samples.items()}
    print(f"GetDomain, {args.threads} client threads, medians of {args.repeat} x "
          f"{args.calls} calls (server CPU per call):")
    for name in paths:
        print(f"  {name:10} {median[name]:.3f} ms  {statistics.median(rates[name]):7.0f} "
              "calls/s")
    print(f"  {'work':10} {work:.3f} ms  (lookup + summary alone)")
    overhead = {name: median[name] - work for name in median}
    ratio = overhead["service"] / overhead["bare-sync"]
    print(f"overhead over the work: service {overhead['service']:.3f} ms, bare sync "
          f"{overhead['bare-sync']:.3f} ms, bare aio {overhead['bare-aio']:.3f} ms")
    print(f"goal (issue 14): service overhead <= 0.5 x a plain sync gRPC server's: "
          f"{ratio:.2f}x — {'met' if ratio <= 0.5 else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
