"""What one blocking call holds until it ends, whatever path it took to get it.

A backend deep inside a call can take a place that must be given back when the call
ends (a domain's slot among the calls waiting in libvirt): ``hold`` enters it into
the call's scope, which the bridge opens around every blocking unary call
(services/common/sync_bridge.py) and closes when the method returns or raises.
Outside a call (a connect hook, a test calling a backend), nothing is held.
libvirt-free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import Any

_scope: ContextVar[tuple[contextlib.ExitStack, set[Hashable]] | None] = ContextVar(
    "call_scope", default=None)


@contextlib.contextmanager
def opened() -> Iterator[None]:
    """The scope of one call: what was held in it is given back at its end."""
    with contextlib.ExitStack() as stack:
        token = _scope.set((stack, set()))
        try:
            yield
        finally:
            _scope.reset(token)


def hold(key: Hashable, place: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
    """Enter ``place()`` for the rest of the current call, once per ``key`` (a call that
    looks a domain up twice holds one place)."""
    current = _scope.get()
    if current is None:
        return
    stack, keys = current
    if key in keys:
        return
    stack.enter_context(place())
    keys.add(key)
