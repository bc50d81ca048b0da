"""Benchmark: virtmesh's gRPC paths against libvirt's own remote protocol, in one run.

Two operations, each measured on three paths at concurrency 1 and 16:

* ``list``: every domain with its summary. libvirt: ``listAllDomains()`` then, per
  domain, the calls that fill a ``Domain`` message one domain at a time (info,
  state, ID, isPersistent, autostart, UUIDString, OSType, hasManagedSaveImage).
  gRPC: ``ListDomains(page_size=1000)``.
* ``get``: one domain's summary. libvirt: ``lookupByName()`` plus the same calls.
  gRPC: ``GetDomain``.

Paths:

* ``libvirtd``: libvirt-python over libvirt's remote protocol to a private
  ``libvirtd`` on a UNIX socket (``test+unix:///default?socket=...``); one libvirt
  connection per client thread.
* ``service``: the compute service (``test:///default`` in-process) over its UNIX
  socket; one gRPC channel shared by all client threads.
* ``gateway``: the gateway over TLS with a client certificate on 127.0.0.1, which
  forwards to that same compute service; one shared gRPC channel.

Every path serves the same set of domains: the test driver's own ``test`` plus
``--domains`` defined ones. Everything stays on loopback and UNIX sockets, and every
process this starts is stopped at the end, on error too.

Run from the repository root: ``.venv/bin/python -m bench.bench [--out FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import grpc
import libvirt
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.pki import ensure_dev_pki
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
LIBVIRTD = "/usr/sbin/libvirtd"
COMPUTE_SERVICE = pb.DESCRIPTOR.services_by_name["ComputeService"].full_name
OPS = ("list", "get")
CONCURRENCY = (1, 16)
PATHS = ("libvirtd", "service", "gateway")
PATH_LABELS = {
    "libvirtd": "libvirtd (remote proto, unix)",
    "service": "compute service (gRPC, unix)",
    "gateway": "gateway (gRPC, TLS)",
}
CONNECTIONS = {
    "libvirtd": "one libvirt connection per client thread",
    "service": "one gRPC channel (one HTTP/2 connection) shared by all client threads",
    "gateway": "one gRPC channel (one TLS HTTP/2 connection) shared by all client threads",
}
RPC_TIMEOUT = 60.0
READY_TIMEOUT = 30.0


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


def domain_xml(index: int) -> str:
    return (f"<domain type='test'><name>bench-{index:03d}</name><memory>65536</memory>"
            "<os><type>hvm</type></os></domain>")


# -- processes ---------------------------------------------------------------------


class Processes:
    """Child processes, each in its own process group, stopped together at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: Sequence[str],
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_path(name), "wb")  # noqa: SIM115 - closed in stop_all
        proc = subprocess.Popen(list(argv), cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})},
                                preexec_fn=_die_with_parent)
        self.children.append((name, proc, log))
        return proc

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode}; its log ends:\n"
                             f"{self.log_tail(name)}")

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child's process group, then SIGKILL what is left."""
        for _, proc, _ in reversed(self.children):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc, log in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"bench: {name} ignored SIGTERM, killing it", file=sys.stderr)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            # The group may hold helpers that outlived their leader.
            _signal_group(proc, signal.SIGKILL)
            log.close()
        self.children.clear()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies without cleaning up."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    # start_new_session made the child a group leader: its group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def wait_until(ready: Callable[[], bool], what: str, procs: Processes,
               watched: Sequence[tuple[str, subprocess.Popen[bytes]]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last_error = "not ready"
    while time.monotonic() < deadline:
        for name, proc in watched:
            procs.check_alive(name, proc)
        try:
            if ready():
                return
        except (OSError, grpc.RpcError, libvirt.libvirtError) as error:
            last_error = f"{type(error).__name__}: {error}"
        time.sleep(0.05)
    raise BenchError(f"{what} not ready after {READY_TIMEOUT:.0f}s: {last_error}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_serving(target: str, credentials: grpc.ChannelCredentials | None) -> bool:
    """grpc.health.v1 Check of the compute service on a fresh channel."""
    channel = (grpc.secure_channel(target, credentials) if credentials
               else grpc.insecure_channel(target))
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=COMPUTE_SERVICE), timeout=2)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


# -- the private libvirtd -----------------------------------------------------------


def start_libvirtd(procs: Processes, root: Path,
                   test_path: str = "/default") -> tuple[str, subprocess.Popen[bytes]]:
    """A private libvirtd on <root>/libvirt-sock, no auth, only its built-in drivers;
    the URI returned opens its test driver at ``test_path`` (a node file, or the
    shared default state).

    LIBVIRT_DRIVER_DIR points at an empty directory, so the daemon loads none of the
    host's driver modules (qemu, network, nwfilter, ...): it touches nothing on the
    host, and the test driver it needs is built into libvirt itself.
    """
    if not os.access(LIBVIRTD, os.X_OK):
        raise BenchError(f"{LIBVIRTD} not found: install libvirt-daemon")
    root.mkdir(parents=True, exist_ok=True)
    (root / "no-drivers").mkdir(exist_ok=True)
    conf = root / "libvirtd.conf"
    conf.write_text(
        f'unix_sock_dir = "{root}"\n'
        f'unix_sock_group = "{_group_name()}"\n'
        'unix_sock_rw_perms = "0770"\n'
        'auth_unix_rw = "none"\n'
        'auth_unix_ro = "none"\n'
        'log_outputs = "3:stderr"\n')
    proc = procs.start("libvirtd", [LIBVIRTD, "--config", str(conf),
                                    "--pid-file", str(root / "libvirtd.pid")],
                       env={"LIBVIRT_DRIVER_DIR": str(root / "no-drivers")})
    uri = f"test+unix://{test_path}?socket={root / 'libvirt-sock'}"

    def ready() -> bool:
        if not (root / "libvirt-sock").exists():
            return False
        conn = libvirt.open(uri)
        try:
            return bool(conn.getLibVersion())
        finally:
            conn.close()

    wait_until(ready, "libvirtd", procs, [("libvirtd", proc)])
    return uri, proc


def _group_name() -> str:
    import grp

    return grp.getgrgid(os.getgid()).gr_name


# -- clients ------------------------------------------------------------------------


class Client(Protocol):
    def list(self) -> int: ...
    def get(self) -> str: ...
    def close(self) -> None: ...


def domain_summary(dom: libvirt.virDomain) -> dict[str, Any]:
    """What services/compute/convert.py puts in a Domain message, from the same calls."""
    state, max_mem, memory, vcpus, cpu_time = dom.info()
    _, reason = dom.state()
    dom_id = dom.ID()
    persistent = bool(dom.isPersistent())
    return {
        "name": dom.name(), "uuid": dom.UUIDString(), "id": max(dom_id, 0),
        "state": state, "state_reason": reason, "persistent": persistent,
        "autostart": bool(dom.autostart()) if persistent else False,
        "vcpus": vcpus, "memory_kib": memory, "max_memory_kib": max_mem,
        "cpu_time_ns": cpu_time, "os_type": dom.OSType(),
        "has_managed_save": bool(dom.hasManagedSaveImage()),
    }


class LibvirtClient:
    """libvirt-python on its own connection to the private libvirtd."""

    def __init__(self, uri: str, target: str) -> None:
        self.conn = libvirt.open(uri)
        self.target = target

    def list(self) -> int:
        # Sorted by name, as ListDomains returns them.
        summaries = sorted((domain_summary(dom) for dom in self.conn.listAllDomains(0)),
                           key=lambda summary: summary["name"])
        return len(summaries)

    def get(self) -> str:
        return str(domain_summary(self.conn.lookupByName(self.target))["name"])

    def close(self) -> None:
        self.conn.close()


class GrpcClient:
    """A ComputeService stub; every thread shares the one channel it is built on."""

    def __init__(self, channel: grpc.Channel, target: str) -> None:
        self.stub = pb_grpc.ComputeServiceStub(channel)
        self.target = target

    def list(self) -> int:
        count, token = 0, ""
        while True:  # one page unless --domains is above the server's maximum page
            reply = self.stub.ListDomains(
                pb.ListDomainsRequest(page_size=1000, page_token=token), timeout=RPC_TIMEOUT)
            count += len(reply.domains)
            token = reply.next_page_token
            if not token:
                return count

    def get(self) -> str:
        reply = self.stub.GetDomain(pb.GetDomainRequest(name=self.target), timeout=RPC_TIMEOUT)
        return str(reply.domain.name)

    def close(self) -> None:
        pass  # the channel belongs to main()


# -- measuring ----------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks; nan for no samples."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 of proc(5)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    times = os.times()
    snapshot = {"client": times.user + times.system}
    for name, pid in pids.items():
        try:
            snapshot[name] = process_cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            snapshot[name] = math.nan
    return snapshot


def measure(make_client: Callable[[], Client], op: str, concurrency: int,
            duration: float, warmup: float, server_pids: dict[str, int]) -> dict[str, Any]:
    """Run ``op`` in ``concurrency`` threads for warmup + duration seconds.

    Each thread calls back to back. A call counts when it completes inside the
    measurement window (after the warm-up); calls/s = those calls / duration.
    The CPU time every process used inside the window is recorded too.
    """
    clients = [make_client() for _ in range(concurrency)]
    samples: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    errors_lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)
    window: list[float] = []
    stop = threading.Event()  # set when the main thread unwinds early (error, SIGTERM)

    def worker(index: int) -> None:
        call = getattr(clients[index], op)
        mine = samples[index]
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        begin, end = window
        perf = time.perf_counter
        while not stop.is_set():
            started = perf()
            if started >= end:
                return
            try:
                call()
            except (grpc.RpcError, libvirt.libvirtError, ValueError) as error:
                with errors_lock:
                    errors.append(f"{type(error).__name__}: {error}")
                time.sleep(0.01)
                continue
            finished = perf()
            if begin <= finished <= end:
                mine.append(finished - started)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(concurrency)]
    try:
        for thread in threads:
            thread.start()
        now = time.perf_counter()
        window.extend((now + warmup, now + warmup + duration))
        barrier.wait()
        time.sleep(max(0.0, window[0] - time.perf_counter()))
        cpu_before = cpu_snapshot(server_pids)
        time.sleep(max(0.0, window[1] - time.perf_counter()))
        cpu_after = cpu_snapshot(server_pids)
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        barrier.abort()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=RPC_TIMEOUT)
        for client in clients:
            client.close()
    latencies = sorted(value for per_thread in samples for value in per_thread)
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_before}
    servers = sum(value for name, value in cpu.items() if name != "client")
    calls = len(latencies)
    return {
        "calls": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "calls_per_s": len(latencies) / duration,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": (sum(latencies) / len(latencies) * 1000) if latencies else math.nan,
        "max_ms": latencies[-1] * 1000 if latencies else math.nan,
        "cpu_s": cpu,
        "client_cpu_ms_per_call": cpu["client"] / calls * 1000 if calls else math.nan,
        "server_cpu_ms_per_call": servers / calls * 1000 if calls else math.nan,
    }


# -- report -------------------------------------------------------------------------


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def ratios(results: dict[tuple[str, str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    def ratio(a: str, b: str, op: str, conc: int) -> float:
        top = results[(a, op, conc)]["calls_per_s"]
        bottom = results[(b, op, conc)]["calls_per_s"]
        return top / bottom if bottom else math.nan

    return [{"op": op, "concurrency": conc,
             "service_over_libvirtd": ratio("service", "libvirtd", op, conc),
             "gateway_over_libvirtd": ratio("gateway", "libvirtd", op, conc),
             "gateway_over_service": ratio("gateway", "service", op, conc)}
            for op in OPS for conc in CONCURRENCY]


def render(results: dict[tuple[str, str, int], dict[str, Any]],
           ratio_rows: list[dict[str, Any]], domains: int) -> str:
    head = f"{'op':<5}{'conc':>5} |"
    sub = f"{'':<10} |"
    for path in PATHS:
        head += f" {PATH_LABELS[path]:<30}|"
        sub += f" {'calls/s':>9} {'p50 ms':>9} {'p99 ms':>9} |"
    lines = [f"list = all {domains} domains with summaries; get = one domain's summary", "",
             head, sub, "-" * len(sub)]
    for op in OPS:
        for conc in CONCURRENCY:
            row = f"{op:<5}{conc:>5} |"
            for path in PATHS:
                r = results[(path, op, conc)]
                row += (f" {_fmt(r['calls_per_s'], 1):>9} {_fmt(r['p50_ms'], 3):>9}"
                        f" {_fmt(r['p99_ms'], 3):>9} |")
                if r["errors"]:
                    row += f" {r['errors']} errors!"
            lines.append(row)
    lines += ["", "CPU ms per call      " + "".join(
        f"{path + ': client/servers':>27}" for path in PATHS)]
    for op in OPS:
        for conc in CONCURRENCY:
            row = f"{op:<5} conc {conc:>3}       "
            for path in PATHS:
                r = results[(path, op, conc)]
                cell = (f"{_fmt(r['client_cpu_ms_per_call'], 3)} / "
                        f"{_fmt(r['server_cpu_ms_per_call'], 3)}")
                row += f"{cell:>27}"
            lines.append(row)
    lines += ["", "throughput ratios    service/libvirtd  gateway/libvirtd  gateway/service"]
    for r in ratio_rows:
        lines.append(f"{r['op']:<5} conc {r['concurrency']:>3}       "
                     f"{_fmt(r['service_over_libvirtd']):>12}x"
                     f"{_fmt(r['gateway_over_libvirtd']):>17}x"
                     f"{_fmt(r['gateway_over_service']):>16}x")
    return "\n".join(lines)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _libvirt_version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


# -- main ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-results.json", help="JSON results file")
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds measured per path, operation and concurrency")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="seconds of unrecorded calls before each measurement")
    parser.add_argument("--domains", type=int, default=100,
                        help="domains to define (the test driver adds its own 'test')")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temporary directory (logs, sockets, PKI)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.domains < 1:
        parser.error("--duration must be > 0, --warmup >= 0 and --domains >= 1")
    return args


@dataclass
class Mesh:
    """The three servers of a run and how to reach them."""

    libvirt_uri: str
    service_target: str
    gateway_target: str
    credentials: grpc.ChannelCredentials
    watched: list[tuple[str, subprocess.Popen[bytes]]]

    @property
    def server_pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.watched}

    def check_alive(self, procs: Processes) -> None:
        for name, proc in self.watched:
            procs.check_alive(name, proc)


def start_mesh(procs: Processes, tmp: Path, compute_uri: str = "test:///default",
               libvirt_path: str = "/default", env: dict[str, str] | None = None) -> Mesh:
    """A private libvirtd (test driver at ``libvirt_path``), the compute service on
    ``compute_uri`` and the gateway in front of it (both with ``env``: settings),
    all serving."""
    python = sys.executable
    state = tmp / "state"
    ensure_dev_pki(state / "pki")
    port = free_port()
    # Start everything first, then wait: the three start-ups overlap.
    compute = procs.start("compute", [python, "-m", "services", "compute", "--uri",
                                      compute_uri, "--state-dir", str(state)], env)
    gateway = procs.start("gateway", [python, "-m", "gateway", "--state-dir", str(state),
                                      "--listen", f"127.0.0.1:{port}"], env)
    libvirt_uri, libvirtd = start_libvirtd(procs, tmp / "libvirtd", libvirt_path)
    compute_sock = state / "run" / "compute.sock"
    pki = state / "pki"
    mesh = Mesh(
        libvirt_uri, f"unix:{compute_sock}", f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.crt").read_bytes(),
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.crt").read_bytes()),
        [("compute", compute), ("gateway", gateway), ("libvirtd", libvirtd)])
    wait_until(lambda: compute_sock.exists() and health_serving(mesh.service_target, None),
               "compute service", procs, mesh.watched)
    wait_until(lambda: health_serving(mesh.gateway_target, mesh.credentials),
               "gateway", procs, mesh.watched)
    return mesh


def run(args: argparse.Namespace, tmp: Path, procs: Processes) -> dict[str, Any]:
    mesh = start_mesh(procs, tmp)
    libvirt_uri, service_target, gateway_target = (
        mesh.libvirt_uri, mesh.service_target, mesh.gateway_target)
    credentials, watched, server_pids = mesh.credentials, mesh.watched, mesh.server_pids

    # The same domains everywhere: via libvirtd's remote protocol and via gRPC.
    # Inside libvirtd, test:///default is one state shared by every client, but only
    # while a connection is open: when the last one closes the daemon drops it (and
    # the defined domains). This connection stays open until the end for that.
    holder = libvirt.open(libvirt_uri)
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    service_channel = grpc.insecure_channel(service_target, options=options)
    gateway_channel = grpc.secure_channel(gateway_target, credentials, options=options)
    try:
        libvirtd_version = _libvirt_version(holder.getLibVersion())
        for i in range(args.domains):
            holder.defineXML(domain_xml(i))
        stub = pb_grpc.ComputeServiceStub(service_channel)
        for i in range(args.domains):
            stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml(i)), timeout=RPC_TIMEOUT)

        target = f"bench-{args.domains // 2:03d}"
        makers: dict[str, Callable[[], Client]] = {
            "libvirtd": lambda: LibvirtClient(libvirt_uri, target),
            "service": lambda: GrpcClient(service_channel, target),
            "gateway": lambda: GrpcClient(gateway_channel, target),
        }
        # Every path must see the same domains before its numbers mean anything.
        counts = {}
        for path, make in makers.items():
            client = make()
            try:
                counts[path] = client.list()
                if client.get() != target:
                    raise BenchError(f"{path}: GetDomain({target}) returned another domain")
            finally:
                client.close()
        if len(set(counts.values())) != 1 or counts["libvirtd"] != args.domains + 1:
            raise BenchError(f"paths list different domain counts: {counts}")

        results: dict[tuple[str, str, int], dict[str, Any]] = {}
        total = len(OPS) * len(CONCURRENCY) * len(PATHS)
        for op in OPS:
            for conc in CONCURRENCY:
                for path in PATHS:  # interleaved, so drift hits every path alike
                    for name, proc in watched:
                        procs.check_alive(name, proc)
                    print(f"[{len(results) + 1:>2}/{total}] {op:<4} x{conc:<2} {path:<8} ...",
                          end=" ", flush=True, file=sys.stderr)
                    result = measure(makers[path], op, conc, args.duration, args.warmup,
                                     server_pids)
                    results[(path, op, conc)] = result
                    print(f"{result['calls_per_s']:.1f} calls/s", file=sys.stderr)
    finally:
        service_channel.close()
        gateway_channel.close()
        holder.close()

    ratio_rows = ratios(results)
    listed = counts["libvirtd"]
    print(render(results, ratio_rows, listed))
    return {
        "metadata": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": {
                "hostname": socket.gethostname(),
                "cpu_count": os.cpu_count(),
                "cpus_usable": len(os.sched_getaffinity(0)),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "versions": {
                "libvirt_library": _libvirt_version(libvirt.getVersion()),
                "libvirtd": libvirtd_version,
                "libvirt_python": _version("libvirt-python"),
                "grpcio": grpc.__version__,
                "protobuf": _version("protobuf"),
                "virtmesh": _version("virtmesh"),
                "git_commit": _git_commit(),
            },
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "domains_defined": args.domains,
                "domains_listed": listed,
                "get_target": target,
                "concurrency": list(CONCURRENCY),
                "list_page_size": 1000,
            },
            "paths": {
                path: {"description": PATH_LABELS[path], "connections": CONNECTIONS[path]}
                for path in PATHS
            },
            "notes": [
                "calls/s counts calls completed within the measured window / duration",
                "latency is per call, measured in the client (Python) thread",
                "client, servers and libvirtd all share this host's CPUs",
                "cpu_s: CPU seconds each process used in the window (client = this "
                "process); server_cpu_ms_per_call sums libvirtd, compute and gateway",
                "libvirtd runs with LIBVIRT_DRIVER_DIR empty: built-in test driver only",
                "libvirtd path: list = listAllDomains + per-domain info, state, ID, "
                "isPersistent, autostart, UUIDString, OSType, hasManagedSaveImage "
                "(a Domain's calls one domain at a time, as GetDomain), sorted by name",
            ],
        },
        "results": [{"path": path, "op": op, "concurrency": conc, **result}
                    for (path, op, conc), result in results.items()],
        "ratios": ratio_rows,
    }


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: write null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


def run_main(run: Callable[[argparse.Namespace, Path, Processes], dict[str, Any]],
             args: argparse.Namespace) -> int:
    """``run`` in a temporary directory, its report written to ``args.out``; every
    process it started is stopped, on errors and SIGTERM too."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors raise; no stderr
    # SIGTERM (e.g. from make or CI) unwinds through the finally below.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    tmp = Path(tempfile.mkdtemp(prefix="virtmesh-bench-"))
    procs = Processes(tmp / "logs")
    ok = False
    try:
        report = run(args, tmp, procs)
        out = Path(args.out)
        out.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
        print(f"\nwrote {out}")
        ok = True
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
    except libvirt.libvirtError as error:
        print(f"bench: libvirt: {error}", file=sys.stderr)
    except grpc.RpcError as error:
        print(f"bench: gRPC: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
    finally:
        procs.stop_all()
        if args.keep_tmp or not ok:
            print(f"bench: logs kept in {tmp / 'logs'}", file=sys.stderr)
            if not args.keep_tmp:
                # Keep only the logs of a failed run; sockets and PKI go.
                for child in tmp.iterdir():
                    if child.is_dir() and child.name != "logs":
                        shutil.rmtree(child, ignore_errors=True)
                    elif child.is_file():  # node files of the bulk benches
                        child.unlink()
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
