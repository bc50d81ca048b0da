"""virtmesh-mesh: run the whole mesh in the foreground (what `make run` does).

It plays systemd's part on a developer's machine: creates the development PKI,
starts each driver service and then the gateway as separate processes with
their own sockets, restarts a service that dies, and on Ctrl-C stops the gateway
first and the services after it. Each process logs to ``<state_dir>/log``.
Running guests are shut down on exit (ACPI, then destroy after a timeout)
unless ``--keep-guests`` is given; a restarted compute service picks them up.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.pki import ensure_dev_pki
from guest import example

SERVICES = ("compute",)


@dataclasses.dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        # A session of its own: Ctrl-C reaches only us, and we stop children in order.
        self.process = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float) -> None:
        if self.process is None:
            return
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"virtmesh: {self.name} did not stop in {timeout:.0f}s; killing it")
                self.process.kill()
                self.process.wait()
        if self.log:
            self.log.close()


def wait_serving(target: str, service: str, timeout: float,
                 credentials: grpc.ChannelCredentials | None = None,
                 alive: Child | None = None) -> None:
    """Block until ``service`` at ``target`` reports SERVING."""
    deadline = time.monotonic() + timeout
    channel = (grpc.secure_channel(target, credentials) if credentials
               else grpc.insecure_channel(target))
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if alive is not None and not alive.alive():
                raise RuntimeError(f"{alive.name} exited; see {alive.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service or target} not serving after {timeout:.0f}s")
            time.sleep(0.2)


def client_credentials(pki: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes(),
                                        (pki / "client.key").read_bytes(),
                                        (pki / "client.crt").read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="virtmesh-mesh", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".virtmesh"))
    parser.add_argument("--listen", default="127.0.0.1:16514")
    parser.add_argument("--keep-guests", action="store_true",
                        default=os.environ.get("KEEP_GUESTS", "") not in ("", "0"),
                        help="leave running guests running on exit (env KEEP_GUESTS=1)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0)
    parser.add_argument("--virt-type", choices=("kvm", "qemu"),
                        default=os.environ.get("VIRT_TYPE") or None,
                        help="virtualization type of the example guest's demo.xml "
                             "(env VIRT_TYPE; default kvm when /dev/kvm works, else qemu)")
    args = parser.parse_args(argv)
    state = args.state_dir.absolute()
    pki = state / "pki"
    ensure_dev_pki(pki)
    if (state / "guest" / "vmlinuz").exists():
        (state / "guest" / "demo.xml").write_text(example.render("demo", state, args.virt_type))

    python = sys.executable
    common = ["--state-dir", str(state)]
    services = [
        Child(name, [python, "-m", f"services.{name}", *common,
                     "--guests-on-exit", "keep" if args.keep_guests else "shutdown",
                     "--shutdown-timeout", str(args.shutdown_timeout)],
              state / "log" / f"{name}.log")
        for name in SERVICES
    ]
    gateway = Child("gateway", [python, "-m", "gateway", *common, "--listen", args.listen],
                    state / "log" / "gateway.log")
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())

    try:
        for child in services:
            child.start()
            wait_serving(f"unix:{state / 'run' / f'{child.name}.sock'}", "", 120, alive=child)
        gateway.start()
        wait_serving(args.listen, "", 30, client_credentials(pki), alive=gateway)
    except RuntimeError as error:
        print(f"virtmesh: {error}", file=sys.stderr)
        for child in [gateway, *services]:
            child.stop(10)
        return 1

    print(BANNER.format(listen=args.listen, state=state,
                        keep="kept" if args.keep_guests else "shut down",
                        virt_type=args.virt_type or example.default_virt_type()), flush=True)
    while not stopping.wait(1):
        for child in services + [gateway]:
            if not child.alive() and not stopping.is_set():
                child.restarts += 1
                print(f"virtmesh: {child.name} exited "
                      f"(code {child.process.returncode if child.process else '?'}); "
                      f"restarting (restart {child.restarts})", flush=True)
                child.start()
    print("\nvirtmesh: stopping", flush=True)
    gateway.stop(10)
    for child in services:
        child.stop(args.shutdown_timeout + 15)
    print("virtmesh: stopped", flush=True)
    return 0


BANNER = """
virtmesh is running.
  gateway      {listen} (TLS; dev PKI in {state}/pki)
  sockets      {state}/run/*.sock
  logs         {state}/log/*.log
  guests       {keep} when you press Ctrl-C

Try, in another terminal (`. .venv/bin/activate` or use .venv/bin/virtmesh):
  virtmesh version
  virtmesh events &                        # follow domain events
  virtmesh define {state}/guest/demo.xml   # the example guest ({virt_type})
  virtmesh start demo
  virtmesh list
  tail {state}/guest/demo.console.log      # "virtmesh-guest: booted"
  virtmesh stats demo
  virtmesh shutdown demo --wait            # ACPI power button
  virtmesh undefine demo
Press Ctrl-C to stop."""


if __name__ == "__main__":
    sys.exit(main())
