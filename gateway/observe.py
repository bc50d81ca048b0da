"""What the gateway records of every forwarded call, paid once per call.

The services record their calls with the shared interceptors
(services/common/interceptors.py). The gateway's proxy does it itself, in its one
handler per call (gateway/proxy.py through gateway/admission.py's CallGuard), with
the same metric series and the same log line: a server interceptor costs grpc.aio
an extra coroutine chain and a new handler on every call, and the interceptor's
``labels()`` lookups a dictionary each. Here a method's series are bound once, when
its route is built.

The log line (``virtmesh.rpc``: method, code, duration, request id) is written for
every call, as by the services, but made without looking up the caller's source
line (what ``Logger.log`` spends most of its time on); ``call_log_sample`` N > 1
writes only every Nth successful read-only call's line at INFO, so a busy gateway
spends its time on calls rather than on lines. Failed calls and calls that may
change something are always logged, every call is counted in the metrics, and
every call that may change something is audited whatever the sampling.
"""

from __future__ import annotations

import itertools
import logging
import os

import grpc

from gateway.backends import Metadata
from services.common import logs, metrics
from services.common.interceptors import rpc_log
from services.common.shared import CallKind


class RequestIds:
    """The request id of a call: the caller's (logs.request_id_from checks it is fit for
    logs), or a new one: 32 hex digits, this process's random half and a count, unique
    like a uuid4 without asking the kernel for randomness on every call."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def of(self, metadata: Metadata) -> str:
        if any(key == logs.REQUEST_ID_KEY for key, _ in metadata):
            return logs.request_id_from(metadata)
        return f"{self._prefix}{next(self._count):016x}"


REQUEST_IDS = RequestIds()


class MethodMetrics:
    """The grpc_server_* series of one method, bound once."""

    def __init__(self, path: str, kind: CallKind, known: bool = True) -> None:
        service, _, name = path.lstrip("/").rpartition("/")
        self.labels = (kind.metric_label, service, name) if known else (
            kind.metric_label, "unknown", "unknown")
        self.path = path
        self.started = metrics.STARTED.labels(*self.labels)
        self.received = metrics.MSG_RECEIVED.labels(*self.labels)
        self.sent = metrics.MSG_SENT.labels(*self.labels)
        self.seconds = metrics.HANDLING_SECONDS.labels(*self.labels)
        self._handled: dict[grpc.StatusCode, metrics.Counter] = {}

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = metrics.HANDLED.labels(*self.labels, code.name)
        counter.inc()
        self.seconds.observe(seconds)


class CallLog:
    """The per-call log line, every ``sample``th successful read-only call's at INFO."""

    def __init__(self, sample: int = 1) -> None:
        self.sample = sample
        self._count = itertools.count()

    def write(self, path: str, code: grpc.StatusCode, seconds: float, details: str,
              read_only: bool) -> None:
        level = logging.INFO
        if code == grpc.StatusCode.OK and read_only and self.sample > 1 and \
                next(self._count) % self.sample:
            level = logging.DEBUG
        if not rpc_log.isEnabledFor(level):
            return
        milliseconds = seconds * 1000
        suffix = f": {details}" if details and code != grpc.StatusCode.OK else ""
        # makeRecord + handle: Logger.log without its search for the caller's frame
        rpc_log.handle(rpc_log.makeRecord(
            rpc_log.name, level, __file__, 0, "%s %s %.1f ms%s", (path, code.name,
                                                                  milliseconds, suffix),
            None, extra={"method": path, "code": code.name,
                         "duration_ms": round(milliseconds, 3), "identity": ""}))
