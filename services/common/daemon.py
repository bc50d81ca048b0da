"""The daemon every driver service runs: one skeleton, many drivers.

A driver package hands ``main`` a ``ServiceSpec`` (its name, default libvirt URI,
proto service and servicer factory) and gets config, logging, the libvirt
connection, health, reflection, metrics, the UNIX socket, signal handling and the
idle timeout from here.

Each service listens on two UNIX sockets, as libvirt's daemons do: the main one
(``socket_mode``, for the gateway and local administrators, who may name the caller
they act for in ``x-virtmesh-identity``) and a read-only one (``<name>-ro.sock``,
mode 0666 by default, like libvirt's -sock-ro) where only calls whose permissions
are all read-only are served. One process, one servicer, one thread pool: two
servers, because a gRPC server cannot tell its listening ports apart.

The servers are grpc.aio servers on one event loop (a thread of its own, shared by
the services of a process): coroutine methods such as event watches run on the
loop and cost no thread; blocking ones (libvirt calls) run on a bounded thread pool
(services/common/sync_bridge.py).

A health Check answer carries the service's name, version and start time in its
response headers (``x-virtmesh-service``, ``-version``, ``-started``): that is how
the gateway lists what runs behind it without knowing any service's own API.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import importlib
import logging
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.registry import Collector

from services.common import admin, metrics, reflection
from services.common import config as config_module
from services.common.config import Config, ConfigError
from services.common.error_interceptor import ErrorInterceptor
from services.common.interceptors import (
    ActivityInterceptor,
    CallWrapper,
    ObserveInterceptor,
    Pipeline,
    ReadOnlyInterceptor,
    read_methods,
)
from services.common.libvirt_connection import LibvirtConnection
from services.common.logs import setup_logging
from services.common.shared import SERVICE_KEY, STARTED_KEY, VERSION_KEY, rfc3339_now
from services.common.sync_bridge import Bridge, CallsInFlight, Workers
from services.common.version import VERSION

log = logging.getLogger(__name__)
#: mallopt(3)'s M_ARENA_MAX
_M_ARENA_MAX = -8


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """What a driver package says about itself; the skeleton does the rest. The
    service's descriptor and registration come from its generated module, and its
    default libvirt URI from its driver, so nothing here is typed twice."""

    name: str
    #: the generated ``*_pb2`` module of the service's .proto file (one service in it)
    proto: ModuleType
    #: libvirt's name of the driver: the URI scheme, and the modular daemon's suffix
    driver: str
    #: whether the driver runs inside the service by default (libvirt's embedded mode,
    #: its state under ``<state_dir>/<driver>``); otherwise the host's daemon serves it
    embedded: bool
    #: the service's metrics port is the base port plus this (fixed per service, so
    #: that scrape configurations and dashboards keep their targets)
    port_offset: int
    #: libvirt's names of the objects it serves, as in its error codes (NO_<OBJECT> is
    #: NOT_FOUND, INVALID_<OBJECT> INVALID_ARGUMENT: tests/test_registry.py checks the
    #: error table against these)
    objects: tuple[str, ...]
    #: builds the servicer; it may register connect hooks on the connection
    servicer_factory: Callable[[LibvirtConnection, Config], Any]
    #: runs before the first libvirt open (e.g. writes an embedded driver's config)
    prepare: Callable[[Config], None] | None = None
    #: runs after the server stopped, before the connection closes
    on_exit: Callable[[Any, Config], None] | None = None
    #: (servicer, config) -> the driver's own collectors, registered while the service
    #: serves metrics
    collectors: Callable[[Any, Config], list[Collector]] | None = None
    #: servicer -> True while the service must not exit for being idle although no
    #: call is in flight (compute: guests are running); calls in flight, event watches
    #: and transfers included, already keep it
    busy: Callable[[Any], bool] | None = None
    #: libvirt can run the driver in-process although the service does not by default
    #: (secret: see its package); a profile without a libvirt daemon runs it embedded
    embeddable: bool = False

    @property
    def descriptor(self) -> ServiceDescriptor:
        (service,) = self.proto.DESCRIPTOR.services_by_name.values()
        return service  # type: ignore[no-any-return]

    @property
    def grpc_module(self) -> ModuleType:
        """The generated ``*_pb2_grpc`` module beside ``proto``."""
        return importlib.import_module(f"{self.proto.__name__}_grpc")

    @property
    def add_to_server(self) -> Callable[[Any, grpc.Server | grpc.aio.Server], None]:
        """The generated ``add_<Service>Servicer_to_server``."""
        return getattr(self.grpc_module, f"add_{self.descriptor.name}Servicer_to_server")  # type: ignore[no-any-return]

    @property
    def can_embed(self) -> bool:
        """libvirt can run the driver inside the service (by default or on request)."""
        return self.embedded or self.embeddable

    @property
    def embedded_uri(self) -> str:
        """The URI of the driver embedded in the service, its root under the state dir."""
        return f"{self.driver}:///embed?root={{state_dir}}/{self.driver}"

    @property
    def default_uri(self) -> str:
        return self.embedded_uri if self.embedded else f"{self.driver}:///system"


def _make_socket_dir(directory: Path) -> None:
    """Create the sockets' directory if missing, writable by the group: the services of a
    node may run as different users sharing a group (a pod's fsGroup), and whichever
    starts first creates it. An existing directory (systemd's RuntimeDirectory) is
    left as it is."""
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # another service was quicker
        directory.mkdir()
        inherited = directory.stat().st_mode & stat.S_ISGID  # keep the group for new files
        directory.chmod(0o775 | inherited)


def prepare_socket(path: Path) -> None:
    """Make room for our socket: remove a stale file, refuse to steal a live one."""
    _make_socket_dir(path.parent)
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        log.info("removed stale socket %s", path)
        return
    except OSError as error:
        raise ConfigError(f"socket {path}: {error}") from None
    finally:
        probe.close()
    raise ConfigError(f"socket {path} is in use by another running process")


class _Health(health.HealthServicer):
    """grpc.health.v1 whose Check also says who answers: name, version, start time."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._watch_enders: set[Callable[[], None]] = set()
        self._watches_ended = False
        self.headers = ((SERVICE_KEY, name), (VERSION_KEY, VERSION),
                        (STARTED_KEY, rfc3339_now()))

    async def Check(self, request: health_pb2.HealthCheckRequest,  # type: ignore[override]
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        """On the loop, never waiting for a thread: probes must be answered however
        busy the service is."""
        await context.send_initial_metadata(self.headers)
        with self._lock:
            status = self._server_status.get(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext,
              send_response_callback: Callable[[Any], None] | None = None) -> Any:
        """grpc's Watch, whose streams end_watches() can end: a Watch is a call in flight
        that never finishes by itself, so it would hold every stop for the whole grace.

        Behind our interceptors the handler is a blocking one (they do not keep grpc's
        non-blocking mark), and the base class returns an iterator: closing it ends the
        stream. Without them it gets ``send_response_callback``: None ends the stream."""
        ended = threading.Event()
        guard = threading.Lock()

        def send(response: Any) -> None:
            with guard:  # the status goes out once: ours, or the base class's on close
                if ended.is_set():
                    return
                if response is None:
                    ended.set()
                assert send_response_callback is not None
                send_response_callback(response)

        if send_response_callback is None:
            stream = super().Watch(request, context)
            close: Callable[[], None] = stream.close
        else:
            stream = super().Watch(request, context, send)
            close = functools.partial(send, None)

        def end() -> None:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("the service is shutting down")
            close()

        with self._lock:
            late = self._watches_ended  # end_watches() has run: this one ends at once
            if not late:
                self._watch_enders.add(end)
        context.add_callback(lambda: self._forget(end))
        if late:
            end()
        return stream

    def _forget(self, end: Callable[[], None]) -> None:
        with self._lock:
            self._watch_enders.discard(end)

    def end_watches(self) -> None:
        """End every Watch stream with UNAVAILABLE (after enter_graceful_shutdown, so
        each has been told NOT_SERVING first)."""
        with self._lock:
            self._watches_ended = True
            enders, self._watch_enders = self._watch_enders, set()
        for end in enders:
            end()


_loop: asyncio.AbstractEventLoop | None = None
_loop_guard = threading.Lock()


def service_loop() -> asyncio.AbstractEventLoop:
    """The event loop the services of this process serve from, on a thread of its own
    (started on first use; it runs as long as the process)."""
    global _loop
    with _loop_guard:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="grpc-loop", daemon=True).start()
        return _loop


def on_loop(coroutine: Any) -> Any:
    """Run ``coroutine`` on the services' loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, service_loop()).result()


class Daemon:
    """A running service: start() binds and serves, stop() drains and closes."""

    def __init__(self, spec: ServiceSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self.connection = LibvirtConnection(
            config.libvirt_uri, keepalive_interval=config.keepalive_interval,
            keepalive_count=config.keepalive_count, min_delay=config.reconnect_min_delay,
            max_delay=config.reconnect_max_delay)
        self.health = _Health(spec.name)
        self.server: grpc.aio.Server | None = None
        self.read_only_server: grpc.aio.Server | None = None
        self.workers: Workers | None = None
        #: blocking calls admitted at once (running or queued): unary ones on the main
        #: and the read-only socket, and streams (consoles, transfers) on both
        self.unary_calls = CallsInFlight(config.max_workers * 4)
        self.read_only_calls = CallsInFlight(max(config.max_workers // 2, 1))
        self.stream_calls = CallsInFlight(2 * config.max_sessions)
        self.servicer: Any = None
        self.admin: Any = None  # admin.DaemonControl, once bound
        self.metrics: metrics.MetricsEndpoint | None = None
        self.activity = ActivityInterceptor()
        self._socket_inodes: dict[Path, int] = {}
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._binding = threading.Lock()  # a stop() waits for start() to bind its sockets

    @property
    def socket_path(self) -> Path:
        return self.config.socket_path

    @property
    def read_only_socket_path(self) -> Path | None:
        return self.config.socket_ro_path

    def _set_serving(self, up: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if up
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set("", status)
        self.health.set(self.spec.descriptor.full_name, status)

    def start(self, connect_wait: float = 30.0) -> None:
        """Bind and serve at once (NOT_SERVING until libvirt is reached), then wait up
        to ``connect_wait`` seconds for the first libvirt connection."""
        with self._binding:
            if self._stopping.is_set():  # a SIGTERM came first
                return
            self._bind()
        # While libvirt is unreachable the socket is up: health says NOT_SERVING and
        # calls get UNAVAILABLE, instead of callers finding no socket at all.
        self.connection.start(wait=connect_wait)  # returns at once if stop() has begun
        if self.config.idle_timeout > 0:
            self.activity.touch()  # starting took a while: that was not idleness
            threading.Thread(target=self._exit_when_idle, name="idle", daemon=True).start()

    def _bind(self) -> None:
        """Prepare the driver, then serve on the sockets (NOT_SERVING for now)."""
        config = self.config
        sockets = [path for path in (self.socket_path, self.read_only_socket_path) if path]
        # Before touching libvirt: a second instance must not open the first one's
        # (embedded) driver state or rewrite its files on its way to failing.
        for path in sockets:
            prepare_socket(path)
        if self.spec.prepare:
            self.spec.prepare(config)
        self._set_serving(False)
        self.connection.on_state_change(self._set_serving)
        self.servicer = self.spec.servicer_factory(self.connection, config)
        self.admin = admin.DaemonControl(self)  # admin API: on both sockets (see _serve)
        if config.metrics_listen:
            own = self.spec.collectors(self.servicer, config) if self.spec.collectors else []
            self.metrics = metrics.MetricsEndpoint(config.metrics_listen, [
                *metrics.SERVICE_METRICS, metrics.ConnectionCollector(self.connection), *own])

        # Event watches are coroutines and hold no thread. A stream served by a blocking
        # method (a console session, a volume transfer) holds its thread for its whole
        # life: those get threads of their own on top of max_workers, so they can never
        # starve unary calls. Both sockets share the threads (and the servicer's limits).
        threads = config.max_workers + self.stream_calls.limit
        self.workers = Workers(threads)
        bridge = Bridge(self.workers)
        reads = read_methods(self.spec.descriptor)
        # outermost first: observe the status errors are mapped to
        self.server = on_loop(self._serve(self.socket_path, config.socket_mode, Pipeline(
            [ObserveInterceptor(trust_identity=True, quiet=reads), ErrorInterceptor(),
             self.activity],
            bridge, self.unary_calls, self.stream_calls)))
        read_only = self.read_only_socket_path
        if read_only:
            # Any local user reaches it: its calls may hold at most half of the unary
            # threads (more get RESOURCE_EXHAUSTED), so the main socket keeps the rest.
            wrappers: list[CallWrapper] = [ObserveInterceptor(quiet=reads), ErrorInterceptor(),
                                           # admin API: its read RPCs too
                                           ReadOnlyInterceptor(self.spec.descriptor,
                                                               admin.SERVICE),
                                           self.activity]
            self.read_only_server = on_loop(self._serve(
                read_only, config.socket_ro_mode,
                Pipeline(wrappers, bridge, self.read_only_calls, self.stream_calls)))
        log.info("%s serving %s on unix:%s%s", self.spec.name, self.spec.descriptor.full_name,
                 self.socket_path, f" and read-only on unix:{read_only}" if read_only else "")

    async def _serve(self, path: Path, mode: int, pipeline: Pipeline) -> grpc.aio.Server:
        """A started server of the servicer, health and reflection on socket ``path``."""
        config = self.config
        options = [("grpc.max_receive_message_length", config.max_message_bytes),
                   ("grpc.max_send_message_length", config.max_message_bytes)]
        # admin API: outside the pipeline, where every call is a coroutine on the loop
        clients = self.admin.interceptor(path, trust_identity=path == self.socket_path)
        server = grpc.aio.server(interceptors=[clients, pipeline], options=options)
        self.spec.add_to_server(self.servicer, server)
        admin.add_to_server(admin.AdminServicer(self.admin), server)  # admin API
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable((self.spec.descriptor.full_name, admin.SERVICE.full_name,  # admin API
                           health.SERVICE_NAME), server)
        old_umask = os.umask(0o177)
        try:
            server.add_insecure_port(f"unix:{path}")
            await server.start()
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        self._socket_inodes[path] = path.stat().st_ino
        return server

    def _busy(self) -> bool:
        if self.spec.busy is None:
            return False
        try:
            return self.spec.busy(self.servicer)
        except Exception as error:  # noqa: BLE001 - cannot tell (e.g. libvirt is away)
            log.debug("cannot tell whether %s is busy, assuming so: %s", self.spec.name, error)
            return True

    def _exit_when_idle(self) -> None:
        """libvirt's --timeout: stop once no call has come for idle_timeout seconds
        and the service is not busy. Busy counts as activity: the wait starts over."""
        timeout = self.config.idle_timeout
        while not self._stopping.wait(min(1.0, timeout / 4)):
            idle = self.activity.idle_seconds()
            if idle < timeout:
                continue
            if self._busy():
                self.activity.touch()
                continue
            log.info("idle for %.0f s, exiting", idle)
            self.stop()
            return

    def stop(self) -> None:
        """Refuse new calls, let in-flight ones finish, then let go of libvirt."""
        with self._binding:
            if self._stopping.is_set():
                return
            self._stopping.set()
        self.health.enter_graceful_shutdown()  # NOT_SERVING, to Check and to watchers
        self.health.end_watches()
        close = getattr(self.servicer, "close", None)
        if close is not None:  # a servicer may end its long-lived streams first
            close()
        servers = [server for server in (self.server, self.read_only_server) if server]

        async def stop_servers() -> None:
            await asyncio.gather(*(server.stop(self.config.grace_period) for server in servers))

        on_loop(stop_servers())
        if self.workers is not None:  # threads still in libvirt finish on their own
            self.workers.shutdown()
        stopped_hook = getattr(self.servicer, "stopped", None)
        if stopped_hook is not None:  # no call is left: helpers of the servicer may go
            stopped_hook()
        if self.spec.on_exit and self.connection.connected:
            try:
                self.spec.on_exit(self.servicer, self.config)
            except Exception:  # noqa: BLE001 - exit must go on
                log.exception("exit handler failed")
        self.connection.close()
        if self.metrics is not None:
            self.metrics.close()
        # Unless a successor (say, started on demand while we drained) has bound it anew.
        for path, inode in self._socket_inodes.items():
            with contextlib.suppress(OSError):
                if path.stat().st_ino == inode:
                    path.unlink()
        log.info("%s stopped", self.spec.name)
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Few malloc arenas for the threads started after this: glibc gives each of up to
    8 x cores threads an arena of its own, and every arena keeps what one large request
    (a 10 MB document is refused, but first received and decoded) once needed, so a
    burst of them would pin tens of MiB per worker thread."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


def main(spec: ServiceSpec, argv: Sequence[str] | None = None) -> int:
    """Entry point of a service process: run until SIGTERM or SIGINT."""
    limit_malloc_arenas()
    try:
        config = config_module.load(spec.name, spec.default_uri, argv)
    except ConfigError as error:
        print(f"virtmesh-{spec.name}: {error}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format, spec.name)
    log.info("starting with %s", config_module.describe(config))
    daemon = Daemon(spec, config)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        threading.Thread(target=daemon.stop, name="stop").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
    except (ConfigError, OSError, RuntimeError) as error:
        log.error("cannot start: %s", error)
        daemon.connection.close()
        return 1
    daemon.wait()
    return 0
