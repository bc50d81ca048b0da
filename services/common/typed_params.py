"""libvirt's typed parameters (virTypedParameter) and TypedParameter messages.

libvirt-python hands a list of typed parameters over as a dict of plain values:
booleans, strings and doubles keep their type, but INT, UINT, LLONG and ULLONG
all become ``int``. The width of each name is in libvirt's documentation of it
(the VIR_TYPED_PARAM_* named by each VIR_DOMAIN_JOB_*, VIR_DOMAIN_TUNABLE_*,
... constant), so the caller passes the names that are not ULLONG, the width
libvirt uses for most of its counters, sizes and times.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from virtmesh.types.v1.typed_params_pb2 import TypedParameter

#: the TypedParameter field of each of libvirt's integer types
INT, UINT, LONG, ULONG = "int_value", "uint_value", "long_value", "ulong_value"


def _field(name: str, value: Any, widths: Mapping[str, str]) -> str:
    if isinstance(value, bool):
        return "boolean_value"
    if isinstance(value, str):
        return "string_value"
    if isinstance(value, float):
        return "double_value"
    if isinstance(value, int):
        # A negative number of an unknown name cannot be ULLONG: the signed type.
        return widths.get(name, ULONG if value >= 0 else LONG)
    raise TypeError(f"typed parameter {name!r} has a {type(value).__name__} value")


def to_messages(params: Mapping[str, Any],
                widths: Mapping[str, str] | None = None) -> list[TypedParameter]:
    """TypedParameter messages, sorted by name, for what libvirt-python returned.

    ``widths`` maps a name to INT, UINT or LONG where libvirt gives it that
    type; other integers are ULONG (LONG when negative)."""
    return [TypedParameter(name=name, **{_field(name, value, widths or {}): value})
            for name, value in sorted(params.items())]


def from_messages(messages: Iterable[TypedParameter]) -> dict[str, Any]:
    """The dict libvirt-python takes for typed parameters (the name's type is
    libvirt's to know: it converts by name); a message without a value is left out."""
    return {message.name: getattr(message, field)
            for message in messages if (field := message.WhichOneof("value"))}
