"""The gateway on every core: several worker processes serving one port.

One Python process runs one asyncio loop, so it uses one core at most; gRPC's advice
for Python servers is one process per core, all listening on the same port with
SO_REUSEPORT (which gRPC sets on every listener), the kernel spreading connections
over them. With ``workers`` above 1, ``python -m gateway`` is a supervisor that
starts that many workers (``python -m gateway.workers``: fresh interpreters, nothing
of gRPC inherited), each a whole gateway (gateway/server.py) that loads and reloads the
same identities, policy and TLS files by itself. What they must share, they share
through the kernel:

- the port: the supervisor reserves it (a bound, not listening, SO_REUSEPORT socket
  when the configuration says port 0), and each worker listens on it;
- the calls in flight per identity, and the health watches: one table in a shared
  file under a file lock (gateway/limits.py SharedCounts), so max_client_requests and
  max_health_watchers hold for the gateway as a whole;
- reloads: the supervisor watches the identities, policy and TLS files and counts
  their changes in a shared file (Changes), which every worker checks at the start
  of every call, so that the workers never disagree about who may call;
- the audit log: each worker appends whole records with one write(2) to the same
  O_APPEND file (gateway/audit.py), so none is lost or interleaved; records carry
  the worker's ``pid``;
- metrics: prometheus_client's multiprocess mode (a directory of per-process files,
  ``<state_dir>/run/gateway-metrics``), summed by the supervisor's /metrics.

What gRPC bounds per listener (max_clients) and the audit rate of anonymous calls
are split evenly among the workers.

Every worker also serves on a private UNIX socket of its own, mode 0600,
``<state_dir>/run/gateway-<index>.sock`` (worker_sockets lists them), for now only
grpc.health.v1: the way for one worker to reach every other one.

A worker that dies is started again (its calls in flight taken off the shared
counts first); SIGTERM or SIGINT to the supervisor drains every worker (each stops
like a single gateway does, within grace_period) and then it exits; SIGHUP is passed
on to every worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import math
import mmap
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, file_stamp, watched_files
from gateway.limits import SharedCounts
from services.common.config import ConfigError

log = logging.getLogger(__name__)

#: a worker that dies within this many seconds of its start is started again after a
#: second, so that one dying as it starts does not spin
_START_SECONDS = 5.0
#: seconds a draining worker gets beyond grace_period before it is killed
_STOP_SLACK = 10.0
#: the exit status of a worker whose configuration cannot serve (see worker_main)
CANNOT_START = 3


def run_dir(config: GatewayConfig) -> Path:
    """Where the gateway keeps its own sockets and shared files."""
    return config.state_dir / "run"


def worker_socket(config: GatewayConfig, index: int) -> Path:
    return run_dir(config) / f"gateway-{index}.sock"


def worker_sockets(config: GatewayConfig) -> list[Path]:
    """Every worker's private socket (mode 0600, grpc.health.v1), by worker index."""
    return [worker_socket(config, index) for index in range(config.workers)]


def limits_file(config: GatewayConfig) -> Path:
    return run_dir(config) / "gateway-limits"


def changes_file(config: GatewayConfig) -> Path:
    return run_dir(config) / "gateway-changes"


class Changes:
    """How many times the files every worker reads (identities, policy, TLS) have
    changed, as the supervisor sees them, in a shared file: each worker checks it at the
    start of every call and reloads when it moved, so that after a change (a revoked
    token, say) no worker admits a call by the old files once another has refused one."""

    def __init__(self, path: Path, create: bool = False) -> None:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_TRUNC if create else 0)
        self._fd = os.open(path, flags, 0o600)
        if create:
            os.ftruncate(self._fd, 8)
        self._map = mmap.mmap(self._fd, 8)
        self._stamps: tuple[int | None, ...] = ()

    def count(self) -> int:
        return int(struct.unpack_from("<Q", self._map)[0])

    def watch(self, config: GatewayConfig) -> None:
        """Count a change when the files' modification times moved (the supervisor)."""
        stamps = tuple(map(file_stamp, watched_files(config)))
        if self._stamps and stamps != self._stamps:
            struct.pack_into("<Q", self._map, 0, self.count() + 1)
        self._stamps = stamps

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def metrics_dir(config: GatewayConfig) -> Path:
    return run_dir(config) / "gateway-metrics"


@dataclasses.dataclass(frozen=True)
class Place:
    """Where one worker stands among the others."""

    index: int
    count: int
    #: the supervisor's pid; 0: none
    supervisor: int = 0


def share(config: GatewayConfig) -> GatewayConfig:
    """A worker's part of the limits gRPC and the audit log apply per process; its
    metrics are served by the supervisor."""
    workers = config.workers
    return dataclasses.replace(
        config, metrics_listen="",
        max_clients=math.ceil(config.max_clients / workers),
        audit_anonymous_rate=config.audit_anonymous_rate / workers)


def _reserve(address: str | None) -> tuple[str | None, socket.socket | None]:
    """The address with a port that every worker can listen on: port 0 becomes a free
    port, held (bound with SO_REUSEPORT, not listening) until the supervisor exits."""
    if address is None:
        return None, None
    host, _, port = address.rpartition(":")
    if int(port):
        return address, None
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((bare, 0))
    except OSError as error:
        holder.close()
        raise ConfigError(f"cannot listen on {address}: {error}") from None
    return f"{host}:{holder.getsockname()[1]}", holder


def _die_with_parent(supervisor: int) -> None:
    """Die at once when the supervisor dies without stopping us (kill -9, a crash):
    the workers are one gateway, which has crashed; a worker left draining would
    share the port with the gateway started next. A stop is the supervisor's SIGTERM,
    which drains every worker."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def worker_main(config: GatewayConfig, place: Place) -> None:
    """One worker: a whole gateway with its share of the limits."""
    # Imported here: the supervisor never loads the gateway's server.
    from gateway.server import Gateway
    from services.common.logs import setup_logging

    _die_with_parent(place.supervisor)
    setup_logging(config.log_level, config.log_format, "gateway")
    shared = SharedCounts(limits_file(config), place.count, place.index)
    changes = Changes(changes_file(config))
    try:
        asyncio.run(Gateway(share(config), place, shared, changes).serve_until_signalled())
    except ConfigError as error:
        logging.getLogger("gateway").error("worker %d cannot start: %s", place.index, error)
        sys.exit(CANNOT_START)
    finally:
        shared.close()
        changes.close()


@dataclasses.dataclass(frozen=True)
class Worker:
    process: subprocess.Popen[bytes]
    #: readable once the process has exited
    pidfd: int


class Supervisor:
    """Starts ``config.workers`` workers, starts again each one that dies, and stops
    them all on SIGTERM or SIGINT."""

    def __init__(self, config: GatewayConfig) -> None:
        mtls, self._mtls_holder = _reserve(config.mtls_address)
        token, self._token_holder = _reserve(config.token_address)
        # Both addresses spelled out: a worker's token_listen never derives from listen.
        self.config = dataclasses.replace(config, listen=mtls or "none",
                                          token_listen=token or "none")
        self.workers: dict[int, Worker] = {}
        self._started: dict[int, float] = {}
        self._stopping = False
        self._stop_by = math.inf
        run_dir(config).mkdir(parents=True, exist_ok=True)
        self.shared = SharedCounts(limits_file(config), config.workers, create=True)
        self.changes = Changes(changes_file(config), create=True)
        self.changes.watch(config)
        self._metrics_server: Any = None

    def _start(self, index: int) -> None:
        """``python -m gateway.workers``, its configuration and place pickled on stdin: a
        fresh interpreter, whatever script started the supervisor."""
        process = subprocess.Popen([sys.executable, "-m", "gateway.workers"],
                                   stdin=subprocess.PIPE)
        assert process.stdin is not None
        with process.stdin:
            pickle.dump((self.config, Place(index, self.config.workers, os.getpid())),
                        process.stdin)
        self.workers[index] = Worker(process, os.pidfd_open(process.pid))
        self._started[index] = time.monotonic()
        log.info("worker %d started, pid %d", index, process.pid)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    def _on_stop(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("stopping: draining %d workers", len(self.workers))
            self._stop_by = time.monotonic() + self.config.grace_period + _STOP_SLACK
        self._stopping = True
        self._signal_all(signal.SIGTERM)

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        self._signal_all(signal.SIGHUP)

    def _serve_metrics(self) -> None:
        """/metrics of all workers together, on ``metrics_listen``."""
        if not self.config.metrics_listen:
            return
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        from services.common.metrics import BUILD_INFO
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(BUILD_INFO)
        host, _, port = self.config.metrics_listen.rpartition(":")
        try:
            self._metrics_server, _ = start_http_server(int(port), host.strip("[]"),
                                                        registry=registry)
        except (OSError, ValueError) as error:
            raise ConfigError(f"metrics_listen {self.config.metrics_listen}: {error}") from None
        log.info("metrics on http://%s:%d/metrics, of all %d workers", host,
                 self._metrics_server.server_port, self.config.workers)

    def _reap(self, index: int, worker: Worker) -> int:
        """A dead worker's exit status; its share of the limits and gauges forgotten."""
        status = worker.process.wait()
        os.close(worker.pidfd)
        self.shared.forget_worker(index)
        if self.config.metrics_listen:
            from prometheus_client import multiprocess
            multiprocess.mark_process_dead(worker.process.pid)
        return status

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status."""
        metrics = metrics_dir(self.config)
        if self.config.metrics_listen:
            shutil.rmtree(metrics, ignore_errors=True)
            metrics.mkdir(parents=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)  # read by each worker
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)
        self._serve_metrics()
        for index in range(self.config.workers):
            self._start(index)
        log.info("gateway: %d workers on %s", self.config.workers,
                 " and ".join(a for a in (self.config.mtls_address, self.config.token_address)
                              if a))
        status = 0
        while self.workers:
            if self._stopping and time.monotonic() > self._stop_by:
                log.error("workers still running %g s after SIGTERM: killing them",
                          self.config.grace_period + _STOP_SLACK)
                self._signal_all(signal.SIGKILL)
            sentinels = {worker.pidfd: index for index, worker in self.workers.items()}
            self.changes.watch(self.config)
            for ready in wait(list(sentinels), timeout=min(1.0, self.config.reload_interval)):
                index = sentinels[ready]  # type: ignore[index]
                worker = self.workers.pop(index)
                code = self._reap(index, worker)
                if self._stopping:
                    continue
                if code == CANNOT_START:
                    log.error("worker %d cannot start; stopping the gateway", index)
                    status = 1
                    self._on_stop(signal.SIGTERM, None)
                    continue
                log.error("worker %d (pid %d) exited with status %d; starting it again",
                          index, worker.process.pid, code)
                if time.monotonic() - self._started[index] < _START_SECONDS:
                    time.sleep(1.0)  # dying as it starts: not in a tight loop
                self._start(index)
        self.close()
        log.info("all workers stopped")
        return status

    def close(self) -> None:
        self.shared.close()
        self.changes.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        for holder in (self._mtls_holder, self._token_holder):
            if holder is not None:
                holder.close()


if __name__ == "__main__":  # a worker, started by Supervisor._start
    from gateway import workers  # the module itself, not this __main__ copy of it

    workers.worker_main(*pickle.load(sys.stdin.buffer))
