"""Benchmark: domain events through the gateway against libvirt's own, fan-out to
many watchers, and what idle watchers cost a service.

One private libvirtd, compute service and gateway (bench/bench.py's ``start_mesh``)
on a test-driver node file with one domain; the service and the gateway get limits
high enough for the watchers below (``VIRTMESH_MAX_EVENT_WATCHERS``,
``VIRTMESH_MAX_CLIENT_REQUESTS``, ``VIRTMESH_MAX_STREAMS_PER_CONNECTION``). Only the
public gRPC API is used, so the figures are those of whatever server answers.

* **latency**: one state change (suspend, then resume, alternately) seen by one
  watcher: from just before the change is asked for to the event's arrival.
  libvirt: ``domainEventRegisterAny`` and ``suspend()``/``resume()`` on one
  connection over libvirt's remote protocol, the client's default event loop in a
  thread. gateway: ``WatchDomainEvents`` and ``SuspendDomain``/``ResumeDomain``
  through the gateway (TLS). Goal: gateway p50 <= 2x libvirt's.
* **fan-out**: one change reaching ``--watchers`` (1,000) watchers through the
  gateway, all in this process (grpc.aio, one channel): per change, the p50 and p99
  of the arrivals, and the CPU time per change of this client, the gateway and the
  compute service. Goal: p50 <= 20 ms. This client's own handling of the 1,000
  messages is in the figure, as it is for any one process watching that much.
* **idle**: ``--idle-watchers`` (2,000) watchers straight on the compute service's
  socket, nothing happening: the service's threads and CPU seconds per minute,
  against the same service idle before any watcher came (a pool may keep threads
  a busy phase started).

Run from the repository root: ``.venv/bin/python -m bench.events [--watchers 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import libvirt

from bench.bench import (
    RPC_TIMEOUT,
    BenchError,
    Mesh,
    Processes,
    cpu_snapshot,
    percentile,
    process_cpu_seconds,
    run_main,
    start_mesh,
)
from bench.paths import CHANNEL_OPTIONS, goal, goal_line, write_node
from bench.paths import parser as bench_parser
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

DOMAIN = "event-000000"
#: goal: a watcher through the gateway sees a change in at most this x libvirt's time
GOAL_LATENCY_OVER_LIBVIRT = 2.0
#: goal: p50 of one change reaching the fan-out watchers, seconds
GOAL_FANOUT_P50 = 0.020
EVENT_TIMEOUT = 30.0


# -- one watcher --------------------------------------------------------------------


#: what each change is seen as, alternately: suspended, then resumed
KINDS = ("suspended", "resumed")
_LIBVIRT_KINDS = {libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
                  libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed"}
_GRPC_KINDS = {pb.LIFECYCLE_EVENT_TYPE_SUSPENDED: "suspended",
               pb.LIFECYCLE_EVENT_TYPE_RESUMED: "resumed"}
Arrivals = queue.Queue[tuple[float, str]]


def libvirt_latencies(uri: str, changes: int) -> list[float]:
    """Seconds from each suspend/resume call's start to its lifecycle event."""
    arrivals: Arrivals = queue.Queue()

    def lifecycle(_conn: object, _dom: object, event: int, _detail: int,
                  _opaque: object) -> None:
        arrivals.put((time.perf_counter(), _LIBVIRT_KINDS.get(event, "")))

    conn = libvirt.open(uri)  # after the default event loop was registered (main)
    try:
        callback = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                               lifecycle, None)
        dom = conn.lookupByName(DOMAIN)
        latencies = [_one_change(dom.suspend if i % 2 == 0 else dom.resume, arrivals,
                                 KINDS[i % 2]) for i in range(changes)]
        conn.domainEventDeregisterAny(callback)
        return latencies
    finally:
        conn.close()


def gateway_latencies(stub: pb_grpc.ComputeServiceStub, changes: int) -> list[float]:
    """The same through the gateway: a WatchDomainEvents stream and the change RPCs."""
    arrivals: Arrivals = queue.Queue()
    stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=[DOMAIN]))

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in stream:
                if event.HasField("lifecycle"):
                    arrivals.put((time.perf_counter(),
                                  _GRPC_KINDS.get(event.lifecycle.type, "")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        stream.initial_metadata()  # subscribed
        suspend = lambda: stub.SuspendDomain(  # noqa: E731
            pb.SuspendDomainRequest(name=DOMAIN), timeout=RPC_TIMEOUT)
        resume = lambda: stub.ResumeDomain(  # noqa: E731
            pb.ResumeDomainRequest(name=DOMAIN), timeout=RPC_TIMEOUT)
        return [_one_change(suspend if i % 2 == 0 else resume, arrivals, KINDS[i % 2])
                for i in range(changes)]
    finally:
        stream.cancel()
        reader.join(timeout=5)


def _one_change(change: Callable[[], Any], arrivals: Arrivals, kind: str) -> float:
    """Seconds from the change's start to the first event of its ``kind``."""
    while not arrivals.empty():  # nothing earlier counts
        arrivals.get_nowait()
    started = time.perf_counter()
    change()
    deadline = started + EVENT_TIMEOUT
    while True:
        try:
            arrived, seen = arrivals.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            raise BenchError(f"no {kind} event within {EVENT_TIMEOUT:.0f}s") from None
        if seen == kind:
            return arrived - started


def start_libvirt_event_loop() -> None:
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()


# -- many watchers ------------------------------------------------------------------


class Seen:
    """Each watcher's arrival times, and for each change an event set once every
    watcher has seen it (no polling over the watchers)."""

    def __init__(self, watchers: int) -> None:
        self.watchers = watchers
        self.arrivals: list[list[float]] = [[] for _ in range(watchers)]
        self.counts: dict[int, int] = {}
        self.everyone: dict[int, asyncio.Event] = {}

    def arrived(self, watcher: int) -> None:
        mine = self.arrivals[watcher]
        mine.append(time.perf_counter())
        change = len(mine) - 1
        self.counts[change] = self.counts.get(change, 0) + 1
        if self.counts[change] == self.watchers:
            self.all_of(change).set()

    def all_of(self, change: int) -> asyncio.Event:
        return self.everyone.setdefault(change, asyncio.Event())


async def _watchers(channel: grpc.aio.Channel, count: int) -> tuple[list[Any], Seen]:
    """``count`` WatchDomainEvents streams, subscribed; each records its arrivals."""
    stub = pb_grpc.ComputeServiceStub(channel)
    seen = Seen(count)
    calls = [stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=[DOMAIN]))
             for _ in range(count)]
    await asyncio.wait_for(asyncio.gather(*(call.initial_metadata() for call in calls)),
                           EVENT_TIMEOUT)

    async def read(call: Any, watcher: int) -> None:
        with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
            async for event in call:
                if event.HasField("lifecycle"):
                    seen.arrived(watcher)

    for watcher, call in enumerate(calls):
        asyncio.ensure_future(read(call, watcher))
    return calls, seen


async def fan_out(mesh: Mesh, watchers: int, changes: int
                  ) -> tuple[list[list[float]], dict[str, float]]:
    """Per change, every watcher's seconds from the change's start to its event; and
    the CPU seconds per change of this client, the gateway and the compute service."""
    pids = {name: mesh.server_pids[name] for name in ("gateway", "compute")}
    async with grpc.aio.secure_channel(mesh.gateway_target, mesh.credentials,
                                       options=CHANNEL_OPTIONS) as channel:
        calls, seen = await _watchers(channel, watchers)
        stub = pb_grpc.ComputeServiceStub(channel)
        per_change = []
        cpu = dict.fromkeys(("client", *pids), 0.0)
        try:
            for number in range(changes):
                before = cpu_snapshot(pids)
                started = time.perf_counter()
                if number % 2 == 0:
                    await stub.SuspendDomain(pb.SuspendDomainRequest(name=DOMAIN))
                else:
                    await stub.ResumeDomain(pb.ResumeDomainRequest(name=DOMAIN))
                try:
                    await asyncio.wait_for(seen.all_of(number).wait(), EVENT_TIMEOUT)
                except TimeoutError:
                    raise BenchError(f"change {number}: {seen.counts.get(number, 0)} of "
                                     f"{watchers} watchers saw it") from None
                after = cpu_snapshot(pids)
                for name in cpu:
                    cpu[name] += (after[name] - before[name]) / changes
                per_change.append(sorted(mine[number] - started for mine in seen.arrivals))
                await asyncio.sleep(0.2)  # the next change starts from quiet
        finally:
            for call in calls:
                call.cancel()
        return per_change, cpu


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise BenchError(f"no thread count for process {pid}")


def idle_cost(pid: int, seconds: float) -> dict[str, float]:
    """A process's threads and CPU seconds per minute over ``seconds`` of quiet."""
    before = process_cpu_seconds(pid)
    time.sleep(seconds)
    used = process_cpu_seconds(pid) - before
    return {"threads": threads_of(pid), "cpu_s_per_min": used / seconds * 60}


async def idle(mesh: Mesh, pid: int, watchers: int, seconds: float) -> dict[str, float]:
    async with grpc.aio.insecure_channel(mesh.service_target,
                                         options=CHANNEL_OPTIONS) as channel:
        calls, _ = await _watchers(channel, watchers)
        try:
            await asyncio.sleep(5.0)  # settled: the streams before have wound down
            return await asyncio.to_thread(idle_cost, pid, seconds)
        finally:
            for call in calls:
                call.cancel()


# -- main ---------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path, procs: Processes) -> dict[str, Any]:
    start_libvirt_event_loop()
    node = tmp / "events.xml"
    write_node(node, "event", 1)
    most = max(args.watchers, args.idle_watchers) + 64
    mesh = start_mesh(procs, tmp, f"test://{node}", str(node), env={
        "VIRTMESH_MAX_EVENT_WATCHERS": str(most), "VIRTMESH_MAX_CLIENT_REQUESTS": str(most),
        "VIRTMESH_MAX_STREAMS_PER_CONNECTION": str(most)})
    compute_pid = mesh.server_pids["compute"]
    print(f"[events] the service idle, {args.idle_seconds:.0f}s ...", file=sys.stderr)
    time.sleep(2.0)  # past its start
    quiet = idle_cost(compute_pid, args.idle_seconds)

    print(f"[events] latency, {args.changes} changes per path ...", file=sys.stderr)
    with grpc.secure_channel(mesh.gateway_target, mesh.credentials,
                             options=CHANNEL_OPTIONS) as channel:
        gateway_stub = pb_grpc.ComputeServiceStub(channel)
        latency = {"libvirt": [], "gateway": []}  # type: dict[str, list[float]]
        for _ in range(args.rounds):  # interleaved, so drift hits both alike
            latency["libvirt"] += libvirt_latencies(mesh.libvirt_uri, args.changes)
            latency["gateway"] += gateway_latencies(gateway_stub, args.changes)
    p50 = {path: statistics.median(values) for path, values in latency.items()}

    print(f"[events] fan-out to {args.watchers} watchers ...", file=sys.stderr)
    per_change, fan_cpu = asyncio.run(fan_out(mesh, args.watchers, args.fanout_changes))
    fan_p50 = statistics.median(percentile(times, 0.5) for times in per_change)
    fan_p99 = statistics.median(percentile(times, 0.99) for times in per_change)

    print(f"[events] {args.idle_watchers} idle watchers, {args.idle_seconds:.0f}s ...",
          file=sys.stderr)
    watched = asyncio.run(idle(mesh, compute_pid, args.idle_watchers, args.idle_seconds))
    mesh.check_alive(procs)

    latency_ratio = p50["gateway"] / p50["libvirt"]
    print(f"\nevent latency, one watcher, median of {len(latency['libvirt'])} changes:")
    for path, values in latency.items():
        print(f"  {path:>8}: p50 {p50[path] * 1000:6.2f} ms  p90 "
              f"{percentile(sorted(values), 0.9) * 1000:6.2f} ms")
    print(f"one change reaching {args.watchers} watchers through the gateway (median of "
          f"{len(per_change)} changes): p50 {fan_p50 * 1000:.1f} ms, p99 {fan_p99 * 1000:.1f} ms;"
          " CPU ms per change: " + ", ".join(f"{name} {seconds * 1000:.0f}"
                                             for name, seconds in fan_cpu.items()))
    print(f"compute service, idle: {quiet['threads']} threads, {quiet['cpu_s_per_min']:.2f} "
          f"CPU-s/min; with {args.idle_watchers} idle watchers: {watched['threads']} threads, "
          f"{watched['cpu_s_per_min']:.2f} CPU-s/min")
    print(goal_line("event latency through the gateway, x libvirt's", latency_ratio,
                    GOAL_LATENCY_OVER_LIBVIRT))
    print(goal_line(f"one change reaching {args.watchers} watchers through the gateway, p50",
                    fan_p50 * 1000, GOAL_FANOUT_P50 * 1000, " ms"))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "latency_s": latency,
        "fan_out": {"watchers": args.watchers, "per_change_p50_s": fan_p50,
                    "per_change_p99_s": fan_p99, "cpu_s_per_change": fan_cpu},
        "idle": {"watchers": args.idle_watchers, "seconds": args.idle_seconds,
                 "without": quiet, "with": watched},
        "goals": {"latency_over_libvirt": goal(latency_ratio, GOAL_LATENCY_OVER_LIBVIRT),
                  "fan_out_p50_s": goal(fan_p50, GOAL_FANOUT_P50)},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser("bench.events", __doc__, "bench-events.json")
    parser.add_argument("--changes", type=int, default=20, help="changes per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds")
    parser.add_argument("--watchers", type=int, default=1000, help="fan-out watchers")
    parser.add_argument("--fanout-changes", type=int, default=10, help="fan-out changes")
    parser.add_argument("--idle-watchers", type=int, default=2000, help="idle watchers")
    parser.add_argument("--idle-seconds", type=float, default=20.0,
                        help="seconds measured idle, with and without the watchers")
    args = parser.parse_args(argv)
    if min(args.changes, args.rounds, args.watchers, args.fanout_changes,
           args.idle_watchers) < 1 or args.idle_seconds <= 0:
        parser.error("counts must be >= 1 and --idle-seconds > 0")
    if args.changes % 2 or args.fanout_changes % 2:
        # suspend, resume, ...: an even number leaves the domain running for the next part
        parser.error("--changes and --fanout-changes must be even")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
