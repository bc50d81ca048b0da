"""Benchmark: the gateway against the floor, a bare grpc.aio TLS proxy, in one run.

Issue 14's goals, as ratios of figures measured in this run on this machine (absolute
numbers depend on the machine and on what else runs on it, ratios much less):

1. *At the floor*: the gateway's CPU time per forwarded GetDomain, one worker, within
   1.2x of ``bench/bare_proxy.py`` (mutual TLS, bytes forwarded to the same compute
   service, nothing else).
2. *Every core*: GetDomain calls/s with two workers at least 1.7x one worker's; with
   more workers than cores, not fewer than with as many as cores.

Every proxy forwards to one compute service on ``test:///default``. The load comes
from client processes, each thread on a TCP connection of its own (so that the
kernel spreads them over the workers: SO_REUSEPORT assigns connections, not calls).
CPU per call is the CPU time of the proxy's processes (the gateway's supervisor and
every worker) inside the measured window divided by the calls completed in it.
Targets are measured in turns, ``--repeat`` times, and the medians reported.

Run from the repository root: ``.venv/bin/python -m bench.gateway_floor``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from bench.bench import (
    BenchError,
    Processes,
    free_port,
    health_serving,
    process_cpu_seconds,
    wait_until,
)
from gateway.pki import ensure_dev_pki
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

DOMAIN = "test"  # the test driver's own domain
AT_THE_FLOOR = 1.2
TWO_WORKERS = 1.7


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the gateway's workers), from /proc."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        queue.extend(int(child) for child in children)
    return found


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):  # exited meanwhile
            total += process_cpu_seconds(member)
    return total


# -- the load: a client process -------------------------------------------------------

def client_main(target: str, pki: Path, threads: int, duration: float) -> None:
    """Threads calling GetDomain back to back, each on its own connection. Once all are
    connected it prints ``ready`` and reads when to start (a time.time() value) from
    stdin; then prints the calls completed from then for ``duration`` seconds."""
    credentials = grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(), (pki / "client.key").read_bytes(),
        (pki / "client.crt").read_bytes())
    request = pb.GetDomainRequest(name=DOMAIN)
    # A local subchannel pool each: a connection of each thread's own.
    channels = [grpc.secure_channel(target, credentials,
                                    options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(threads)]
    stubs = [pb_grpc.ComputeServiceStub(channel) for channel in channels]
    for stub in stubs:
        stub.GetDomain(request, timeout=60)  # connected before the window opens
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    counts = [0] * threads
    errors: list[str] = []

    def run(index: int) -> None:
        stub = stubs[index]
        while time.time() < start_at:
            stub.GetDomain(request, timeout=60)
        end = start_at + duration
        while True:
            try:
                stub.GetDomain(request, timeout=60)
            except grpc.RpcError as error:
                errors.append(f"{error.code().name}: {error.details()}")  # type: ignore[attr-defined]
                return
            if time.time() > end:
                return
            counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for channel in channels:
        channel.close()
    print(json.dumps({"calls": sum(counts), "errors": errors[:3]}), flush=True)


def load(target: str, pki: Path, clients: int, threads: int, duration: float, warmup: float,
         server_pid: int) -> dict[str, float]:
    """calls/s and the server's CPU ms per call over one window."""
    argv = [sys.executable, "-m", "bench.gateway_floor", "--client", target, "--pki", str(pki),
            "--threads", str(threads), "--duration", str(duration)]
    children = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True) for _ in range(clients)]
    for child in children:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise BenchError(f"{target}: a client could not connect")
    start_at = time.time() + warmup
    for child in children:
        assert child.stdin is not None
        child.stdin.write(f"{start_at}\n")
        child.stdin.flush()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = tree_cpu_seconds(server_pid)
    time.sleep(max(0.0, start_at + duration - time.time()))
    cpu_after = tree_cpu_seconds(server_pid)
    calls = 0
    for child in children:
        out, _ = child.communicate(timeout=120)
        report = json.loads(out)
        if report["errors"]:
            raise BenchError(f"{target}: {report['errors']}")
        calls += report["calls"]
    if not calls:
        raise BenchError(f"{target}: no call completed")
    return {"calls_per_s": calls / duration,
            "cpu_ms_per_call": (cpu_after - cpu_before) / calls * 1000}


# -- the run --------------------------------------------------------------------------

def start_targets(procs: Processes, tmp: Path, workers: Sequence[int]
                  ) -> dict[str, tuple[str, int]]:
    """The compute service, the bare proxy and a gateway per worker count; name ->
    (target, pid)."""
    python = sys.executable
    state = tmp / "state"
    pki = state / "pki"
    ensure_dev_pki(pki)
    compute = procs.start("compute", [python, "-m", "services", "compute", "--uri",
                                      "test:///default", "--state-dir", str(state)])
    socket_dir = state / "run"
    compute_target = f"unix:{socket_dir / 'compute.sock'}"
    watched = [("compute", compute)]
    targets: dict[str, tuple[str, int]] = {}
    port = free_port()
    bare = procs.start("bare", [python, "-m", "bench.bare_proxy", "--listen",
                                f"127.0.0.1:{port}", "--pki", str(pki),
                                "--target", compute_target])
    watched.append(("bare", bare))
    targets["bare"] = (f"127.0.0.1:{port}", bare.pid)
    for count in workers:
        own = tmp / f"gateway-{count}"
        own.mkdir()
        (own / "pki").symlink_to(pki)
        port = free_port()
        name = f"gateway x{count}"
        gateway = procs.start(name, [python, "-m", "gateway", "--state-dir", str(own),
                                     "--socket-dir", str(socket_dir), "--listen",
                                     f"127.0.0.1:{port}", "--token-listen", "none",
                                     "--workers", str(count)])
        watched.append((name, gateway))
        targets[name] = (f"127.0.0.1:{port}", gateway.pid)
    credentials = grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(), (pki / "client.key").read_bytes(),
        (pki / "client.crt").read_bytes())
    wait_until(lambda: health_serving(compute_target, None), "compute", procs, watched)
    for name, (target, _) in targets.items():
        if name == "bare":
            continue
        wait_until(lambda target=target: health_serving(target, credentials),  # type: ignore[misc]
                   name, procs, watched)
    return targets


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway_floor")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=4, help="threads per client process")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3, help="turns over all targets")
    parser.add_argument("--workers", default="",
                        help="worker counts to measure, e.g. 1,2 (default: 1, 2, cores, "
                             "cores + 1; the goals need these)")
    parser.add_argument("--out", type=Path, help="JSON results")
    args = parser.parse_args(argv)
    if args.client:
        client_main(args.client, args.pki, args.threads, args.duration)
        return 0
    cores = os.cpu_count() or 1
    worker_counts = (sorted(map(int, args.workers.split(","))) if args.workers
                     else sorted({1, 2, cores, cores + 1}))
    tmp = Path(tempfile.mkdtemp(prefix="virtmesh-floor-"))
    procs = Processes(tmp / "logs")
    samples: dict[str, list[dict[str, float]]] = {}
    try:
        targets = start_targets(procs, tmp, worker_counts)
        for turn in range(args.repeat):
            for name, (target, pid) in targets.items():
                result = load(target, tmp / "state" / "pki", args.clients, args.threads,
                              args.duration, args.warmup, pid)
                samples.setdefault(name, []).append(result)
                print(f"[{turn + 1}/{args.repeat}] {name:<12} {result['calls_per_s']:8.1f} "
                      f"calls/s  {result['cpu_ms_per_call']:.3f} CPU ms/call",
                      file=sys.stderr)
    except BenchError as error:
        print(f"gateway_floor: {error}\nlogs: {tmp / 'logs'}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    medians = {name: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
               for name, runs in samples.items()}
    print(report(medians, args, cores))
    if args.out:
        args.out.write_text(json.dumps({"medians": medians, "samples": samples}, indent=2)
                            + "\n")
    return 0


def report(medians: dict[str, dict[str, float]], args: argparse.Namespace, cores: int) -> str:
    """The figures, and a line per goal whose targets were measured."""
    def ratio(a: str, b: str, key: str) -> float | None:
        if a not in medians or b not in medians:
            return None
        return medians[a][key] / medians[b][key]

    cpu_ratio = ratio("gateway x1", "bare", "cpu_ms_per_call")
    scale = ratio("gateway x2", "gateway x1", "calls_per_s")
    over = ratio(f"gateway x{cores + 1}", f"gateway x{cores}", "calls_per_s")
    lines = [f"GetDomain, {args.clients * args.threads} client connections, "
             f"{cores} cores, medians of {args.repeat}",
             f"{'target':<14}{'calls/s':>10}{'CPU ms/call':>14}"]
    lines += [f"{name:<14}{m['calls_per_s']:>10.1f}{m['cpu_ms_per_call']:>14.3f}"
              for name, m in medians.items()]
    lines.append("")
    if cpu_ratio is not None:
        lines.append(f"goal 1, at the floor: gateway x1 CPU/call / bare proxy = {cpu_ratio:.2f}x"
                     f" (<= {AT_THE_FLOOR}x): {verdict(cpu_ratio <= AT_THE_FLOOR)}")
    if scale is not None:
        lines.append(f"goal 2, every core: gateway x2 / x1 calls/s = {scale:.2f}x "
                     f"(>= {TWO_WORKERS}x): {verdict(scale >= TWO_WORKERS)}")
    if over is not None:
        lines.append(f"goal 2, more workers than cores: x{cores + 1} / x{cores} calls/s = "
                     f"{over:.2f}x (not worse, >= 0.95x): {verdict(over >= 0.95)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
