"""The libvirt side of a driver's events, shared by the backends: one callback per
event id, each emitting plain values for convert to turn into a Watch response."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def register(register_any: Callable[..., Any], kinds: Mapping[int, str],
             emit: Callable[..., None]) -> None:
    """Put a callback for each libvirt event id of ``kinds`` with ``register_any``
    (``conn.domainEventRegisterAny`` and the like).

    libvirt calls back with (connection, object, *details, opaque); each callback
    emits (object, kind, *details), e.g. (domain, "lifecycle", event, detail) or
    (domain, "reboot")."""
    for event_id, kind in kinds.items():
        def callback(_conn: object, obj: object, *details_and_opaque: object,
                     kind: str = kind) -> None:
            emit(obj, kind, *details_and_opaque[:-1])

        register_any(None, event_id, callback, None)
