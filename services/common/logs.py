"""Logging of every virtmesh process: readable text or JSON, with the call's request id.

The gateway gives every call an ``x-request-id`` and forwards it; each process keeps
the id of the call it is serving in a context variable, so every line logged while
serving that call carries it, whichever module logs.

The level and per-logger filters can be read and changed while the process runs
(the admin API, services/common/admin.py): a filter is a logger's own level.
"""

from __future__ import annotations

import json
import logging
import re
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


#: what could end a log line early or make it show other than it is: C0 and C1
#: controls, DEL, Unicode line and paragraph separators, bidirectional overrides
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with control characters backslash-escaped, so that a name a caller
    chose (say ``"x\\n2026-01-01 ... INFO forged"``) stays inside its own log line."""
    return _CONTROL.sub(_escaped, text) if _CONTROL.search(text) else text


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
    """One line a record; a traceback follows on lines of its own, each indented, so
    that none of them reads as a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = escape(super().formatMessage(record))
        rid = getattr(record, "request_id", "")
        return f"{line} [request_id={rid}]" if rid else line

    def formatException(self, ei: Any) -> str:
        return "\n".join(f"    {escape(line)}"
                         for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(f"    {escape(line)}" for line in stack_info.splitlines())


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        entry.update({name: getattr(record, name) for name in _FIELDS
                      if getattr(record, name, "") != ""})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: every control character (C1 and U+2028 too) as a \\u escape
        return json.dumps(entry, ensure_ascii=True)


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


# -- changing the level and per-logger filters while the process runs (admin API) --

#: the levels the admin API sets, in Python's names
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_settings() -> tuple[str, dict[str, str]]:
    """The root level, and every logger that has a level of its own (its filter):
    ours set through the admin API, and any a library set for itself."""
    loggers = logging.Logger.manager.loggerDict.values()
    filters = {logger.name: logging.getLevelName(logger.level) for logger in loggers
               if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET}
    return logging.getLevelName(logging.getLogger().level), dict(sorted(filters.items()))


def set_log_settings(level: str | None, filters: dict[str, str | None],
                     clear_filters: bool = False) -> None:
    """Set the root level (None: keep it) and loggers' filters (None: remove one, so it
    follows its parent again), after removing every filter with ``clear_filters``.
    logging drops its caches on every change, so the next line follows the new
    settings. ValueError for an unknown level or an empty logger name (the root's
    level is ``level``)."""
    if "" in filters:
        raise ValueError("a filter needs a logger name (the root logger's is the level)")
    for value in (level, *filters.values()):
        if value is not None and value not in LEVELS:
            raise ValueError(f"unknown log level {value!r} (one of {', '.join(LEVELS)})")
    if clear_filters:
        for logger_name in log_settings()[1]:
            logging.getLogger(logger_name).setLevel(logging.NOTSET)
    for logger_name, value in filters.items():
        logging.getLogger(logger_name).setLevel(value or logging.NOTSET)
    if level is not None:
        logging.getLogger().setLevel(level)
    current_level, current_filters = log_settings()
    logging.getLogger(__name__).info("log level %s, filters %s", current_level,
                                     current_filters or "none")
