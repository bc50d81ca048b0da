"""Logging of every virtmesh process: readable text or JSON, with the call's request id.

The gateway gives every call an ``x-request-id`` and forwards it; each process keeps
the id of the call it is serving in a context variable, so every line logged while
serving that call carries it, whichever module logs.
"""

from __future__ import annotations

import json
import logging
import string
import sys
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

REQUEST_ID_KEY = "x-request-id"
#: the request id of the call this thread (sync) or task (asyncio) is serving
request_id: ContextVar[str] = ContextVar("request_id", default="")

_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:")
#: structured fields a record may carry (``extra=``), copied into JSON logs
_FIELDS = ("request_id", "method", "code", "duration_ms", "identity")


def request_id_from(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The caller's request id, or a new one when it sent none (or one unfit for logs)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128 \
                and set(value) <= _ID_CHARS:
            return value
    return uuid.uuid4().hex


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id.get()
        return True


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        rid = getattr(record, "request_id", "")
        return f"{line} [request_id={rid}]" if rid else line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        entry.update({name: getattr(record, name) for name in _FIELDS
                      if getattr(record, name, "") != ""})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str, name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter(
            f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
