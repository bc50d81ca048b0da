"""What happens when a call ends before the work done for it: the one place that hears.

A call ends early when its client cancels it or its deadline passes. gRPC answers the
client itself, but a handler thread waiting in libvirt waits on, and libvirt's job
(a save, a dump) runs on, changing what the caller believes unchanged. The servicer
context's ``add_callback`` says when the call ends (for sync handlers on grpc.aio too,
with ``is_active`` and ``time_remaining``); ``CallWatch.guard`` turns that into
aborting libvirt's job, or, where libvirt cannot abort (a plain API call), a warning
and ``virtmesh_calls_unabortable_total{method}``. libvirt-free.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

import grpc

from services.common import deadline
from services.common.metrics import CALLS_UNABORTABLE
from services.common.shared import ServiceError

log = logging.getLogger(__name__)

#: aborts libvirt's work for a call (virDomainAbortJob, a destroy); may block
Abort = Callable[[], object]


class CallWatch:
    """One call's end, as seen by the work done for it. ``method``: the RPC's name,
    a fixed string (it labels the metric)."""

    def __init__(self, context: grpc.ServicerContext, method: str) -> None:
        self.context = context
        self.method = method

    @contextlib.contextmanager
    def guard(self, doing: str, abort: Abort | None = None) -> Iterator[None]:
        """Run the block (``doing`` says what it does, for messages). Should the call
        end first, ``abort`` runs on a thread of its own (gRPC runs callbacks on its
        serving thread, which must not wait on libvirt); without one, the wait is
        logged and counted. What the block then raises becomes CANCELLED or
        DEADLINE_EXCEEDED: the caller's own doing, not libvirt's failure."""
        deadline.check(doing)
        lock = threading.Lock()
        running, ended = True, ""  # ended: why the call ended while the block ran

        def on_end() -> None:
            nonlocal ended
            with lock:
                if not running:
                    return
                ended = self._why_ended()
            if abort is not None:
                threading.Thread(target=self._abort, args=(abort, doing), daemon=True,
                                 name=f"abort-{self.method}").start()
            else:
                CALLS_UNABORTABLE.labels(self.method).inc()
                log.warning("%s: the call ended (%s) while %s; libvirt cannot abort that, "
                            "so its thread waits on", self.method, ended, doing)

        # a call over already may never call back: ask too
        if not self.context.add_callback(on_end) or not self.context.is_active():
            with lock:
                running = False
            raise self._ended_error(self._why_ended(), doing, "nothing was done")
        try:
            yield
        except Exception as error:
            with lock:
                why = ended
            if why:
                outcome = ("libvirt's job was aborted" if abort is not None
                           else "libvirt's call could not be aborted")
                raise self._ended_error(why, doing, outcome) from error
            raise
        finally:
            with lock:
                running = False

    def _why_ended(self) -> str:
        remaining = self.context.time_remaining()
        return "deadline passed" if remaining is not None and remaining <= 0 else "cancelled"

    def _abort(self, abort: Abort, doing: str) -> None:
        log.info("%s: the call ended while %s; aborting it", self.method, doing)
        try:
            abort()
        except Exception as error:  # noqa: BLE001 - a thread of its own: say why, go on
            log.warning("%s: could not abort %s: %s", self.method, doing, error)

    @staticmethod
    def _ended_error(why: str, doing: str, outcome: str) -> ServiceError:
        code = (grpc.StatusCode.DEADLINE_EXCEEDED if why == "deadline passed"
                else grpc.StatusCode.CANCELLED)
        return ServiceError(code, f"the call ended ({why}) while {doing}; {outcome}",
                            "CALL_ENDED")
