"""Prometheus metrics of every virtmesh process, and the /metrics endpoint.

RPC metrics carry the names and labels of go-grpc-prometheus, so existing gRPC
dashboards and alerts work unchanged; ``virtmesh_*`` are our own. Which process a
series comes from (``service="compute"``, ``"gateway"``) is a target label that
the scrape config adds (``make run``'s targets.json), not a label we export: the
process does not need to know how it is deployed, and every series stays free of
deployment details. Labels never carry identities, peers or request ids.

RPC metrics and build info exist in every process. The driver services' and the
gateway's own metrics are registered only by the process they belong to, when it
serves metrics (``SERVICE_METRICS``, ``GATEWAY_METRICS``), so that the gateway
never exports, say, a ``virtmesh_libvirt_connected`` of 0.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import grpc
import prometheus_client
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.context_managers import Timer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from services.common.config import ConfigError
from services.common.shared import call_kind
from services.common.version import VERSION

log = logging.getLogger(__name__)

# ``*_created`` series double every counter and histogram and no dashboard reads them.
prometheus_client.disable_created_metrics()

_RPC = ("grpc_type", "grpc_service", "grpc_method")
STARTED = Counter("grpc_server_started", "RPCs started on the server.", _RPC)
HANDLED = Counter("grpc_server_handled", "RPCs completed on the server, by status code.",
                  (*_RPC, "grpc_code"))
HANDLING_SECONDS = Histogram("grpc_server_handling_seconds",
                             "Time from the start of an RPC to its status.", _RPC)
MSG_RECEIVED = Counter("grpc_server_msg_received", "Messages received from clients.", _RPC)
MSG_SENT = Counter("grpc_server_msg_sent", "Messages sent to clients.", _RPC)


def _libvirt_version() -> str:
    """The version of the libvirt library this process uses; "none" in one that never
    loads libvirt (the gateway). Read when scraped: a service has loaded it by then."""
    libvirt = sys.modules.get("libvirt")
    if libvirt is None:
        return "none"
    major, rest = divmod(libvirt.getVersion(), 1_000_000)
    return "{}.{}.{}".format(major, *divmod(rest, 1000))


class _BuildInfo(Collector):
    def collect(self) -> Iterator[Any]:
        yield InfoMetricFamily("virtmesh_build",
                               "The virtmesh, libvirt and Python versions of this process.",
                               value={"version": VERSION, "libvirt_version": _libvirt_version(),
                                      "python_version": platform.python_version()})


BUILD_INFO = _BuildInfo()
REGISTRY.register(BUILD_INFO)

_FAST_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
LIBVIRT_CALL_SECONDS = Histogram("virtmesh_libvirt_call_seconds",
                                 "Latency of libvirt API calls, by C API name.", ("api",),
                                 buckets=_FAST_BUCKETS, registry=None)
EVENT_SUBSCRIBERS = Gauge("virtmesh_event_subscribers", "Open event streams.", registry=None)
ABANDONED_CALLS = Counter("virtmesh_abandoned_calls", "Calls whose caller cancelled or timed "
                          "out while their thread still waited (for libvirt).", ["grpc_method"],
                          registry=None)
ABANDONED_CALLS_RUNNING = Gauge("virtmesh_abandoned_calls_running",
                                "Abandoned calls whose thread still waits.", registry=None)
CALLS_UNABORTABLE = Counter("virtmesh_calls_unabortable",
                            "Calls that ended (cancelled, deadline passed) while waiting in a "
                            "libvirt call that cannot be aborted.", ("method",), registry=None)
SERVICE_METRICS: tuple[Collector, ...] = (LIBVIRT_CALL_SECONDS, EVENT_SUBSCRIBERS,
                                          ABANDONED_CALLS, ABANDONED_CALLS_RUNNING,
                                          CALLS_UNABORTABLE)

UPSTREAM_REQUESTS = Counter("virtmesh_gateway_upstream_requests",
                            "Calls the gateway forwarded, by driver service and status code.",
                            ("upstream", "grpc_code"), registry=None)
UPSTREAM_SECONDS = Histogram("virtmesh_gateway_upstream_seconds",
                             "Duration of forwarded calls, by driver service.", ("upstream",),
                             registry=None)
UPSTREAM_UNAVAILABLE = Counter("virtmesh_gateway_upstream_unavailable",
                               "Forwarded calls whose driver service could not be reached.",
                               ("upstream",), registry=None)
AUTH_FAILURES = Counter("virtmesh_gateway_auth_failures",
                        "Calls refused for failed authentication, by reason.", ("reason",),
                        registry=None)
ACTIVATIONS = Counter("virtmesh_gateway_activations",
                      "Driver services the gateway started on demand.", ("upstream",),
                      registry=None)
# gRPC Python exposes no connection events; a TCP connection is known by its peer
# address while it carries a call, which is what this counts.
CLIENT_CONNECTIONS = Gauge("virtmesh_gateway_client_connections",
                           "Client connections (peer addresses) with a forwarded call in flight.",
                           registry=None,
                           # several gateway workers (gateway/workers.py): the sum of the live
                           multiprocess_mode="livesum")
GATEWAY_METRICS: tuple[Collector, ...] = (UPSTREAM_REQUESTS, UPSTREAM_SECONDS,
                                          UPSTREAM_UNAVAILABLE, AUTH_FAILURES, ACTIVATIONS,
                                          CLIENT_CONNECTIONS)


class RpcMetrics:
    """The grpc_server_* series of one call: started when made, handled once at its end.

    The one implementation behind the sync services' and the asyncio gateway's
    interceptors. ``known=False`` (a method the server does not have, named by the
    caller) is counted as ``unknown``, so callers cannot mint label values.
    """

    def __init__(self, method: str, handler: grpc.RpcMethodHandler, known: bool = True) -> None:
        kind = call_kind(handler.request_streaming, handler.response_streaming).metric_label
        self._series = _MethodSeries.of(method if known else "", kind)
        self._start = time.perf_counter()
        self._series.started.inc()

    def received(self) -> None:
        self._series.received.inc()

    def sent(self) -> None:
        self._series.sent.inc()

    def handled(self, code: grpc.StatusCode) -> float:
        """Count the call's final status; returns its duration in seconds."""
        seconds = time.perf_counter() - self._start
        self._series.handled(code).inc()
        self._series.seconds.observe(seconds)
        return seconds


class _MethodSeries:
    """One method's labelled series, looked up once: a call only increments."""

    _known: dict[tuple[str, str], _MethodSeries] = {}

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = STARTED.labels(*labels)
        self.received = MSG_RECEIVED.labels(*labels)
        self.sent = MSG_SENT.labels(*labels)
        self.seconds = HANDLING_SECONDS.labels(*labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    @classmethod
    def of(cls, method: str, kind: str) -> _MethodSeries:
        """``method`` "" is a method the server does not have (label ``unknown``)."""
        series = cls._known.get((method, kind))
        if series is None:
            service, _, name = method.lstrip("/").rpartition("/")
            series = cls((kind, service or "unknown", name or "unknown"))
            cls._known[(method, kind)] = series
        return series

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = HANDLED.labels(*self.labels, code.name)
        return child


def libvirt_call(api: str) -> Timer:
    """Time a libvirt call into virtmesh_libvirt_call_seconds{api}, failures included:
    ``with libvirt_call("virConnectOpen"): ...`` or as a decorator. ``api`` is the
    libvirt C API name, a fixed string (never an object name)."""
    return LIBVIRT_CALL_SECONDS.labels(api).time()


class UpstreamCall:
    """The gateway's view of one forwarded call, as a ``with`` block around it:
    virtmesh_gateway_upstream_{requests_total,seconds}{upstream}, and the client
    connections with calls in flight (the peer is counted, never a label)."""

    _calls_by_peer: dict[str, int] = {}

    def __init__(self, service: str, peer: str) -> None:
        self.service = service
        self.peer = peer

    def __enter__(self) -> UpstreamCall:
        self._start = time.perf_counter()
        self._calls_by_peer[self.peer] = self._calls_by_peer.get(self.peer, 0) + 1
        CLIENT_CONNECTIONS.set(len(self._calls_by_peer))
        return self

    def __exit__(self, _kind: Any, error: BaseException | None, _tb: Any) -> None:
        if error is None:
            code = grpc.StatusCode.OK
        elif isinstance(error, grpc.aio.AioRpcError):
            code = error.code()
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            code = grpc.StatusCode.CANCELLED
        else:
            code = grpc.StatusCode.UNKNOWN
        UPSTREAM_REQUESTS.labels(self.service, code.name).inc()
        UPSTREAM_SECONDS.labels(self.service).observe(time.perf_counter() - self._start)
        left = self._calls_by_peer.pop(self.peer) - 1
        if left:
            self._calls_by_peer[self.peer] = left
        CLIENT_CONNECTIONS.set(len(self._calls_by_peer))


class _Connection(Protocol):
    @property
    def connected(self) -> bool: ...
    reconnects: int


class ConnectionCollector(Collector):
    """virtmesh_libvirt_connected and _reconnects_total, read from the connection when
    scraped, so they can never drift from its state."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily("virtmesh_libvirt_connected",
                                "1 while the service is connected to libvirt.",
                                value=int(self.connection.connected))
        yield CounterMetricFamily("virtmesh_libvirt_reconnects",
                                  "Times the libvirt connection was lost and reopened.",
                                  value=self.connection.reconnects)


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    try:
        if not host:
            raise ValueError("no host")
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"metrics_listen: expected HOST:PORT, got {listen!r}") from None


class MetricsEndpoint:
    """/metrics over HTTP: the process registry plus this process's own collectors,
    registered while the endpoint is up."""

    def __init__(self, listen: str, collectors: Iterable[Collector]) -> None:
        host, port = _host_port(listen)
        self.collectors: list[Collector] = []
        try:
            for collector in collectors:
                REGISTRY.register(collector)
                self.collectors.append(collector)
            self._server, self._thread = prometheus_client.start_http_server(port, host)
        except OSError as error:
            self._unregister()
            raise ConfigError(f"metrics_listen {listen}: {error}") from None
        except BaseException:
            self._unregister()
            raise
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{self._server.server_port}"
        log.info("metrics on http://%s/metrics", self.address)

    def _unregister(self) -> None:
        for collector in self.collectors:
            REGISTRY.unregister(collector)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._unregister()
