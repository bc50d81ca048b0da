"""Cold starts against warm ones: virtmesh-run and the compute service on embedded QEMU.

    .venv/bin/python -m bench.cold_start [--repeat N] [--out cold-start.json]

Every figure is measured in this run, on this machine, with the example guest
under TCG (``make guest``), and each cold figure is printed as a ratio to its
warm reference from the same run:

* virtmesh-run, time from the command to the guest's first console line and to
  "virtmesh-guest: booted": on a brand-new root with no shared capability cache,
  a brand-new root seeded from the shared cache, and a second run on a warm root
  (--root kept); and the teardown after poweroff (the "stopped" event to the
  process's exit: destroy, cache collection, watchdog, root removal).
* the compute service, from process start to the first guest running
  (CreateDomain returned): cold with the shared cache, cold without, warm (the
  same root again, its own cache filled).
* a fresh compute service's first GetVersion and GetCapabilities, and later ones
  (median of five), with and without the shared cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from guest import example
from services.supervisor import wait_serving
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
BOOTED = "virtmesh-guest: booted"


def run_once(xml: Path, caps: str, root: Path | None) -> dict[str, float]:
    """One virtmesh-run of a guest that powers off by itself: seconds to each milestone."""
    argv = [sys.executable, "-m", "virtmesh_run", str(xml), "--json", "--caps-cache", caps]
    if root is not None:
        argv += ["--root", str(root)]
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    marks: dict[str, float] = {}
    for line in process.stdout:
        event = json.loads(line)
        now = time.monotonic() - started
        if event["event"] == "started":
            marks["started"] = now
        elif event["event"] == "console":
            marks.setdefault("first_console_line", now)
            if BOOTED in event["line"]:
                marks.setdefault("booted", now)
        elif event["event"] == "stopped":
            marks["stopped"] = now
            if event["exit_code"] != 0:
                raise RuntimeError(f"virtmesh-run: {event['reason']}")
    process.wait(60)
    marks["exited"] = time.monotonic() - started
    marks["teardown"] = marks["exited"] - marks["stopped"]
    return marks


def bench_run(state: Path, tmp: Path, repeat: int) -> dict[str, list[dict[str, float]]]:
    xml = tmp / "bench-run.xml"
    rendered = example.render("bench-run", state, "qemu")
    xml.write_text(rendered.replace(str((state / "guest" / "initrd.img").absolute()),
                                    str(example.poweroff_initrd(state, tmp))))
    cells: dict[str, list[dict[str, float]]] = {"no cache": [], "shared cache": [],
                                                "warm root": []}
    for index in range(repeat):
        shared = tmp / f"shared-{index}"
        cells["no cache"].append(run_once(xml, "none", None))
        run_once(xml, str(shared), None)  # fills the shared cache
        cells["shared cache"].append(run_once(xml, str(shared), None))
        warm = tmp / f"warm-{index}"
        run_once(xml, "none", warm)  # the root's own cache filled
        cells["warm root"].append(run_once(xml, "none", warm))
        print(f"virtmesh-run round {index + 1}/{repeat} done", file=sys.stderr)
    return cells


class Service:
    def __init__(self, state: Path, caps: str) -> None:
        self.state = state
        self.log = open(state.parent / f"{state.name}.log", "ab")  # noqa: SIM115
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services", "compute", "--state-dir", str(state),
             "--uri", "qemu:///embed?root={state_dir}/qemu", "--caps-cache", caps,
             "--guests-on-exit", "destroy"], cwd=ROOT, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.target = f"unix:{state / 'run' / 'compute.sock'}"

    def stub(self) -> tuple[grpc.Channel, pb_grpc.ComputeServiceStub]:
        # a channel that finds no socket backs off for a second: wait for the file first
        socket = self.state / "run" / "compute.sock"
        deadline = time.monotonic() + 60
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        wait_serving(self.target, "", 60)
        channel = grpc.insecure_channel(self.target)
        return channel, pb_grpc.ComputeServiceStub(channel)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


def wait_for_log(service: Service, text: str, timeout: float) -> None:
    log = service.state.parent / f"{service.state.name}.log"
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {log} after {timeout:.0f} s")
        time.sleep(0.2)


def first_guest(state: Path, caps: str, guest: Path) -> float:
    """Process start to the first guest running (CreateDomain returned)."""
    service = Service(state, caps)
    try:
        channel, stub = service.stub()
        with channel:
            xml = example.render("bench-first", guest, "qemu")
            stub.CreateDomain(pb.CreateDomainRequest(xml=xml), timeout=120)
            elapsed = time.monotonic() - service.started
            stub.DestroyDomain(pb.DestroyDomainRequest(name="bench-first"), timeout=30)
        return elapsed
    finally:
        service.stop()


def bench_service(guest: Path, tmp: Path, repeat: int) -> dict[str, list[float]]:
    cells: dict[str, list[float]] = {"cold, no cache": [], "cold, shared cache": [],
                                     "warm": []}
    for index in range(repeat):
        cells["cold, no cache"].append(first_guest(tmp / f"n{index}", "none", guest))
        shared = tmp / f"svc-shared-{index}"
        prime = Service(tmp / f"p{index}", str(shared))  # fills the shared cache
        wait_for_log(prime, "capabilities warm in", 120)
        prime.stop()
        cells["cold, shared cache"].append(first_guest(tmp / f"s{index}", str(shared), guest))
        cells["warm"].append(first_guest(tmp / f"s{index}", str(shared), guest))
        print(f"compute round {index + 1}/{repeat} done", file=sys.stderr)
    return cells


def timed(call: Callable[[], Any]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def bench_calls(tmp: Path, shared: str) -> dict[str, dict[str, float]]:
    """A fresh service's first GetVersion/GetCapabilities and the median of later ones."""
    figures: dict[str, dict[str, float]] = {}
    for label, caps in (("shared cache", shared), ("no cache", "none")):
        service = Service(tmp / f"calls-{label.replace(' ', '-')}", caps)
        try:
            channel, stub = service.stub()
            with channel:
                figures[label] = _calls(stub)
        finally:
            service.stop()
    return figures


def _calls(stub: pb_grpc.ComputeServiceStub) -> dict[str, float]:
    row: dict[str, float] = {}
    calls: dict[str, Callable[[], Any]] = {
        "version": lambda: stub.GetVersion(pb.GetVersionRequest(), timeout=120),
        "capabilities": lambda: stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=120),
    }
    for name, call in calls.items():
        row[f"{name} first"] = timed(call)
        row[f"{name} later"] = statistics.median(timed(call) for _ in range(5))
    etag = stub.GetCapabilities(pb.GetCapabilitiesRequest()).etag
    row["capabilities unchanged"] = statistics.median(
        timed(lambda: stub.GetCapabilities(pb.GetCapabilitiesRequest(etag=etag)))
        for _ in range(5))
    return row


def _median(values: list[float]) -> float:
    return statistics.median(values)


def render(run: dict[str, list[dict[str, float]]], service: dict[str, list[float]],
           calls: dict[str, dict[str, float]]) -> str:
    lines = ["", "virtmesh-run (seconds, median)   first line  booted  teardown  "
                 "first line / warm root"]
    warm = _median([m["first_console_line"] for m in run["warm root"]])
    for cell, marks in run.items():
        first = _median([m["first_console_line"] for m in marks])
        lines.append(f"  {cell:<30} {first:>10.2f} {_median([m['booted'] for m in marks]):>7.2f}"
                     f" {_median([m['teardown'] for m in marks]):>9.2f}  {first / warm:>6.2f}x")
    lines += ["", "compute: start to first guest running (s)             / warm"]
    warm = _median(service["warm"])
    for cell, values in service.items():
        lines.append(f"  {cell:<30} {_median(values):>10.2f}  {_median(values) / warm:>16.2f}x")
    lines += ["", "compute: a fresh service's calls (ms)   first    later   first / later"]
    for cell, row in calls.items():
        for name in ("version", "capabilities"):
            first, later = row[f"{name} first"] * 1000, row[f"{name} later"] * 1000
            lines.append(f"  {cell + ', ' + name:<32} {first:>8.1f} {later:>8.2f} "
                         f"{first / later:>10.0f}x")
        lines.append(f"  {cell + ', capabilities, unchanged':<32} {'':>8} "
                     f"{row['capabilities unchanged'] * 1000:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.cold_start", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--state-dir", type=Path, default=Path(".virtmesh"),
                        help="where `make guest` put the example guest")
    parser.add_argument("--out", type=Path, default=Path("bench-cold-start.json"))
    args = parser.parse_args(argv)
    if not (args.state_dir / "guest" / "vmlinuz").exists():
        print("bench.cold_start: no example guest: run `make guest`", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="vb-", dir="/tmp"))  # short: QEMU's sockets
    try:
        run = bench_run(args.state_dir, tmp, args.repeat)
        service = bench_service(args.state_dir, tmp, args.repeat)
        calls = bench_calls(tmp, str(tmp / "svc-shared-0"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(run, service, calls))
    args.out.write_text(json.dumps({"virtmesh_run": run, "compute_first_guest": service,
                                    "compute_calls": calls, "repeat": args.repeat},
                                   indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
