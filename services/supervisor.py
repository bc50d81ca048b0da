"""virtmesh-mesh: run the whole mesh in the foreground (what `make run` does).

It plays systemd's part on a developer's machine: creates the development PKI
and identities (an admin certificate and token, a read-only token), starts each
driver service and then the gateway as separate processes with their own
sockets, restarts a service that dies, and on Ctrl-C stops the gateway first and
the services after it. Each process logs to ``<state_dir>/log``. The drivers
libvirt cannot embed (storage, network, nwfilter, nodedev, iface) use the host's
libvirtd: it is started when none answers, and stopped on exit only if we
started it. Running guests are shut down on exit (ACPI, then destroy after a
timeout) unless ``--keep-guests`` is given; a restarted compute service picks
them up.

Every process serves Prometheus metrics on 127.0.0.1: the gateway on the base
port (``--metrics-base-port``, default 9650), the services on the ports after
it in ``SERVICES`` order. ``<state_dir>/targets.json`` lists them in Prometheus'
file-based service-discovery format, with a ``service`` label, for as long as
the mesh runs (see deploy/prometheus/).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.authn import ensure_dev_identities
from gateway.config import GatewayConfig
from guest import example, kvm_probe
from services.common import registry
from services.common.host_daemon import HostDaemon, HostDaemonError
from virtmesh_client.client import ConfigError
from virtmesh_client.config import write_context

#: the driver services, in metrics-port order (services/common/registry.py)
SERVICES = registry.names()
METRICS_HOST = "127.0.0.1"
METRICS_BASE_PORT = 9650
TARGETS_FILE = "targets.json"


_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, even by SIGKILL, so that no
    service outlives it (its own session keeps it from seeing our Ctrl-C)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_stop_with_parent)

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


def metrics_addresses(names: list[str], base_port: int, host: str = METRICS_HOST
                      ) -> dict[str, str]:
    """``host:port`` of each process's metrics endpoint: ``base_port`` and the ports after it.

    A base port of 0 picks free ports (for tests). Raises RuntimeError, naming the
    process and the flag to change, when a port is out of range or already taken.
    """
    if base_port == 0:
        return {name: f"{host}:{port}" for name, port in zip(names, _free_ports(host, len(names)),
                                                             strict=True)}
    addresses = {}
    for offset, name in enumerate(names):
        port = base_port + offset
        if not 0 < port < 65536:
            raise RuntimeError(f"metrics port {port} for {name} is out of range; "
                               "choose another --metrics-base-port")
        with socket.socket() as probe:
            # As the metrics server does: a port with only TIME_WAIT leftovers is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                raise RuntimeError(
                    f"metrics port {host}:{port} for {name} is not available "
                    f"({error.strerror}); is another mesh running? Choose other ports "
                    f"with --metrics-base-port (it uses {base_port}..{base_port + len(names) - 1})"
                ) from None
        addresses[name] = f"{host}:{port}"
    return addresses


def _free_ports(host: str, count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def write_targets(path: Path, addresses: dict[str, str]) -> None:
    """Prometheus file_sd: one target group per process, labelled with its name; atomic."""
    groups = [{"targets": [address], "labels": {"service": name}}
              for name, address in addresses.items()]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(groups, indent=2) + "\n")
    os.replace(temporary, path)  # Prometheus never reads a half-written file


def client_credentials(pki: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes(),
                                        (pki / "client.key").read_bytes(),
                                        (pki / "client.crt").read_bytes())


def write_cli_context(name: str, listen: str, pki: Path) -> str:
    """Write the CLI context ``name`` for this mesh (current if none is); the banner's line."""
    if not name:
        return "none written (--context NAME writes one)"
    try:
        path = write_context(name, {"gateway": listen, "ca": str(pki / "ca.crt"),
                                    "cert": str(pki / "client.crt"),
                                    "key": str(pki / "client.key")})
    except ConfigError as error:
        return f"not written: {error}"
    return f"{name} in {path} (`virtmesh config use-context {name}` from any directory)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="virtmesh-mesh", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".virtmesh"))
    parser.add_argument("--listen", default="127.0.0.1:16514",
                        help="the gateway's mutual TLS (client certificates); none: off")
    parser.add_argument("--token-listen", default="",
                        help="the gateway's token-only TLS (bearer tokens, no client "
                             "certificate; default: --listen's host, the port after, "
                             "127.0.0.1:16515); none: off")
    parser.add_argument("--keep-guests", action="store_true",
                        default=os.environ.get("KEEP_GUESTS", "") not in ("", "0"),
                        help="leave running guests running on exit (env KEEP_GUESTS=1)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0)
    parser.add_argument("--virt-type", choices=("kvm", "qemu"),
                        default=os.environ.get("VIRT_TYPE") or None,
                        help="virtualization type of the example guest's demo.xml "
                             "(env VIRT_TYPE; default kvm when the example kernel boots "
                             "under KVM here, else qemu: see guest/kvm_probe.py)")
    parser.add_argument("--metrics-base-port", type=int,
                        default=int(os.environ.get("VIRTMESH_METRICS_BASE_PORT")
                                    or METRICS_BASE_PORT),
                        help=f"metrics of the gateway on {METRICS_HOST}:PORT, of the services on "
                             f"the ports after it; 0 picks free ports (env "
                             f"VIRTMESH_METRICS_BASE_PORT; default {METRICS_BASE_PORT})")
    parser.add_argument("--context", default="", metavar="NAME",
                        help="write the CLI context NAME for this mesh into the config file "
                        "(`make run`: dev; see `virtmesh config`)")
    args = parser.parse_args(argv)
    state = args.state_dir.absolute()
    try:
        args.token_listen = GatewayConfig(listen=args.listen, token_listen=args.token_listen
                                          ).token_address or "none"
        metrics = metrics_addresses(["gateway", *SERVICES], args.metrics_base_port)
        for flag, address in (("--listen", args.listen), ("--token-listen", args.token_listen)):
            if address.rsplit(":", 1)[-1] in {a.rsplit(":", 1)[1] for a in metrics.values()}:
                raise RuntimeError(f"{flag} {address} collides with a metrics port; "
                                   "choose another --metrics-base-port")
    except (RuntimeError, ValueError) as error:
        print(f"virtmesh: {error}", file=sys.stderr)
        return 2
    pki = state / "pki"
    try:
        ensure_dev_identities(state)
    except ValueError as error:
        print(f"virtmesh: {error}", file=sys.stderr)
        return 2
    if args.virt_type:
        args.virt_type_why = "as asked (--virt-type, VIRT_TYPE)"
    else:
        # a real boot under KVM decides, not /dev/kvm's existence (cached per host)
        verdict = kvm_probe.decide(state)
        args.virt_type, args.virt_type_why = verdict.virt_type, kvm_probe.describe(verdict)
        print(f"virtmesh: example guest on {args.virt_type}: {args.virt_type_why}", flush=True)
    if (state / "guest" / "vmlinuz").exists():
        (state / "guest" / "demo.xml").write_text(example.render("demo", state, args.virt_type))

    python = sys.executable
    common = ["--state-dir", str(state)]
    services = [
        Child(name, [python, "-m", "services", name, *common,
                     "--guests-on-exit", "keep" if args.keep_guests else "shutdown",
                     "--shutdown-timeout", str(args.shutdown_timeout),
                     "--metrics-listen", metrics[name]],
              state / "log" / f"{name}.log")
        for name in SERVICES
    ]
    gateway = Child("gateway", [python, "-m", "gateway", *common, "--listen", args.listen,
                                "--token-listen", args.token_listen,
                                "--metrics-listen", metrics["gateway"]],
                    state / "log" / "gateway.log")
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())

    targets = state / TARGETS_FILE
    host = HostDaemon()
    try:
        if registry.host_daemon_drivers():
            host.ensure()
        return _run(args, state, pki, services, gateway, metrics, targets, stopping)
    except HostDaemonError as error:
        print(f"virtmesh: {error}", file=sys.stderr)
        return 1
    finally:
        targets.unlink(missing_ok=True)
        host.stop()



def _run(args: argparse.Namespace, state: Path, pki: Path, services: list[Child],
         gateway: Child, metrics: dict[str, str], targets: Path,
         stopping: threading.Event) -> int:
    try:
        for child in services:
            child.start()
        for child in services:
            wait_serving(f"unix:{state / 'run' / f'{child.name}.sock'}", "", 120, alive=child)
        gateway.start()
        if args.listen != "none":
            wait_serving(args.listen, "", 30, client_credentials(pki), alive=gateway)
        if args.token_listen != "none":  # health needs TLS, no identity: the CA alone
            wait_serving(args.token_listen, "", 30, grpc.ssl_channel_credentials(
                (pki / "ca.crt").read_bytes()), alive=gateway)
    except RuntimeError as error:
        print(f"virtmesh: {error}", file=sys.stderr)
        for child in [gateway, *services]:
            child.stop(10)
        return 1

    write_targets(targets, metrics)
    endpoints = "\n".join(f"  {'metrics' if i == 0 else '':<12} {name:<8} http://{address}/metrics"
                          for i, (name, address) in enumerate(metrics.items()))
    print(BANNER.format(listen=args.listen, token_listen=args.token_listen, state=state,
                        endpoints=endpoints, targets=targets,
                        context=write_cli_context(args.context, args.listen, pki),
                        keep="kept" if args.keep_guests else "shut down",
                        virt_type=args.virt_type, virt_type_why=args.virt_type_why), flush=True)
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
  gateway      {listen} (mutual TLS: client certificates in {state}/pki)
               {token_listen} (token-only TLS: bearer tokens in {state}/tokens, CA only)
  sockets      {state}/run/<service>.sock, read-only {state}/run/<service>-ro.sock
  audit        {state}/log/audit.jsonl
  logs         {state}/log/*.log
{endpoints}
  targets      {targets} (Prometheus file_sd; see deploy/prometheus/README.md)
  CLI context  {context}
  guests       {keep} when you press Ctrl-C
  virt type    {virt_type}: {virt_type_why}

Try, in another terminal (`. .venv/bin/activate` or use .venv/bin/virtmesh):
  virtmesh version
  virtmesh events &                        # follow domain events
  virtmesh define {state}/guest/demo.xml   # the example guest ({virt_type})
  virtmesh start demo
  virtmesh list
  tail {state}/guest/demo.console.log      # "virtmesh-guest: booted"
  virtmesh stats demo
  virtmesh console demo                    # its serial console; Ctrl-] leaves
  virtmesh viewer demo                     # its display in remote-viewer or gvncviewer
  virtmesh shutdown demo --wait            # ACPI power button
  virtmesh undefine demo
  virtmesh services                        # every service behind the gateway
  virtmesh pool-list; virtmesh net-list; virtmesh nodedev-list; virtmesh iface-list
  virtmesh --token-file {state}/tokens/readonly.token list   # read-only, token port
  virtmesh-admin --state-dir {state} list  # identities; issue-cert, add-token, revoke-*
Press Ctrl-C to stop."""


if __name__ == "__main__":
    sys.exit(main())
