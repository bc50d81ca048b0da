"""The audit log: one JSON line for every call that may change something.

Every call that is not read-only (services.common.acl.is_read_only with its
request: GetDomainXML with ``secure`` counts) is recorded once it has ended,
whether it was allowed, denied or failed: when, who (identity, groups, how they
authenticated, from where), what (method and the names of the objects it
addressed), the gRPC status and how long it took. Request and response bodies
are never written, so secret values and XML cannot leak into it.

The file is opened with O_APPEND and each record is a single write(2), so lines
from concurrent calls never interleave and nothing in it is ever rewritten;
rotate it by renaming it (the next record notices and opens a new file) or with
copytruncate.

Calls from callers without a valid identity are recorded too, but at most
``anonymous_rate`` per second (bursts of ten seconds' worth): anyone who reaches
the port can make them, and they must not fill the disk. The ones left out are
counted in ``virtmesh_gateway_audit_suppressed_total`` and in the
``suppressed_before`` field of the next anonymous record (or of a last record
written when the gateway stops).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import grpc
from prometheus_client import Counter

from gateway.identity import Identity
from services.common import logs
from services.common.shared import rfc3339_now

log = logging.getLogger(__name__)

AUDIT_SUPPRESSED = Counter(
    "virtmesh_gateway_audit_suppressed",
    "Audit records of unauthenticated calls left out over audit_anonymous_rate.",
    registry=None)


class TokenBucket:
    """``rate`` per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._since = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._since) * self.rate)
        self._since = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class AuditLog:
    def __init__(self, path: Path, anonymous_rate: float = 10.0) -> None:
        self.path = path
        self._fd = -1
        self._inode = 0
        self._anonymous = TokenBucket(anonymous_rate, max(anonymous_rate * 10, 1))
        self.suppressed = 0
        #: which gateway process wrote a record (gateway/workers.py: several may)
        self._pid = os.getpid()
        self.reopen()

    def reopen(self) -> None:
        """(Re)open the file, e.g. after it was rotated away."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        old, self._fd, self._inode = self._fd, fd, os.fstat(fd).st_ino
        if old >= 0:
            os.close(old)

    def _rotated(self) -> bool:
        try:
            return self.path.stat().st_ino != self._inode
        except FileNotFoundError:
            return True

    def record(self, *, method: str, identity: Identity | None, peer: str,
               objects: tuple[str, ...], code: grpc.StatusCode, duration: float,
               denied_permission: str = "", streamed: tuple[int, int] | None = None) -> None:
        """``streamed``: a streaming call's bytes from and to the client (a console or
        graphics session, an upload): its record also says when it started."""
        entry: dict[str, object] = {
            "time": rfc3339_now(),
            "identity": identity.name if identity else None,
            "groups": sorted(identity.groups) if identity else [],
            "auth": identity.method if identity else None,
            "peer": peer,
            "method": method,
            "objects": list(objects),
            "code": code.name,
            "duration_ms": round(duration * 1000, 3),
            "request_id": logs.request_id.get() or None,
            "pid": self._pid,
        }
        if denied_permission:
            entry["denied_permission"] = denied_permission
        if streamed is not None:
            entry["started"] = rfc3339_now(duration)
            entry["bytes_from_client"], entry["bytes_to_client"] = streamed
        if identity is None:
            if not self._anonymous.take():
                self.suppressed += 1
                AUDIT_SUPPRESSED.inc()
                return
            entry["suppressed_before"], self.suppressed = self.suppressed, 0
        self._write(entry)

    def _write(self, entry: dict[str, object]) -> None:
        line = (json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
        try:
            if self._rotated():
                self.reopen()
            os.write(self._fd, line)
        except OSError as error:
            # The call has ended already; losing its record must be loud.
            log.error("cannot write the audit log %s: %s; lost record: %s", self.path, error,
                      line.decode().strip())

    def close(self) -> None:
        if self.suppressed and self._fd >= 0:  # the count must not be lost with the process
            self._write({"time": rfc3339_now(), "identity": None,
                         "suppressed_before": self.suppressed})
            self.suppressed = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
