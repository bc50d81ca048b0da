"""What the gateway records of every forwarded call, paid once per call.

The services record their calls with the shared interceptors
(services/common/interceptors.py). The gateway's proxy does it itself, in its one
handler per call (gateway/proxy.py through gateway/admission.py's CallGuard), with
the same metric series (metrics.RpcMetrics) and the same log line: a server
interceptor costs grpc.aio an extra coroutine chain and a new handler on every call.

The log line (``virtmesh.rpc``: method, code, duration, request id) follows the
services' rule: INFO for a call that failed or may change something, DEBUG for a
successful read (reads come by thousands a second, and a line each would cost more
than forwarding them; the metrics count every call, and the audit log records every
call that may change something). It is made without Logger.log's search for the
caller's source line.
"""

from __future__ import annotations

import itertools
import logging
import os

import grpc

from gateway.backends import Metadata
from services.common import logs
from services.common.interceptors import rpc_log


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


class CallLog:
    """The per-call log line: INFO, except a successful read-only call's, at DEBUG."""

    def write(self, path: str, code: grpc.StatusCode, seconds: float, details: str,
              read_only: bool) -> None:
        ok = code == grpc.StatusCode.OK
        level = logging.DEBUG if ok and read_only else logging.INFO
        if not rpc_log.isEnabledFor(level):
            return
        milliseconds = seconds * 1000
        suffix = f": {details}" if details and not ok else ""
        # makeRecord + handle: Logger.log without its search for the caller's frame
        rpc_log.handle(rpc_log.makeRecord(
            rpc_log.name, level, __file__, 0, "%s %s %.1f ms%s", (path, code.name,
                                                                  milliseconds, suffix),
            None, extra={"method": path, "code": code.name,
                         "duration_ms": round(milliseconds, 3), "identity": ""}))
