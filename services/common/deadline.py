"""The deadline of the call being served, for work that must not outlive it.

A caller whose deadline passed has been told DEADLINE_EXCEEDED; a define that went on
anyway would change state the caller believes unchanged. The error interceptor sets
the deadline of each call; code about to change state, or at the end of a long
check, asks ``check`` first. libvirt-free.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

import grpc

from services.common.errors import ServiceError

#: time.monotonic() by which the call being served must be answered (inf: none)
_deadline: ContextVar[float] = ContextVar("deadline", default=float("inf"))


def set_remaining(seconds: float | None) -> None:
    """The call being served has ``seconds`` left (None: no deadline)."""
    _deadline.set(float("inf") if seconds is None else time.monotonic() + seconds)


def remaining() -> float:
    return _deadline.get() - time.monotonic()


def check(doing: str = "the call") -> None:
    """DEADLINE_EXCEEDED, before ``doing``, once the caller's deadline has passed."""
    if remaining() <= 0:
        raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"the caller's deadline passed before {doing}; nothing was changed",
                           "DEADLINE_PASSED")
