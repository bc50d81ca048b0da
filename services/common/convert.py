"""What every driver's convert module does the same way: pair a proto enum with
libvirt's constants by name.

A proto enum starts at *_UNSPECIFIED = 0 and libvirt's usually at a real value,
so numbers cannot be trusted to agree; names can, and a value either side adds
later is paired (or left out) without a table to edit by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

import libvirt

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

V = TypeVar("V", bound=int)


def proto_to_libvirt(enum: _EnumTypeWrapper[V], proto_prefix: str, libvirt_prefix: str,
                     spellings: Mapping[str, str] | None = None) -> dict[V, int]:
    """proto value -> libvirt value for every proto name that libvirt also has.

    ``FOO_BAR`` of ``proto_prefix + FOO_BAR`` is looked up as ``libvirt_prefix +
    FOO_BAR``, or as ``libvirt_prefix + spellings[FOO_BAR]`` where libvirt spells it
    otherwise. The zero value (*_UNSPECIFIED) is never paired."""
    table: dict[V, int] = {}
    for name, value in enum.items():
        suffix = name.removeprefix(proto_prefix)
        constant = libvirt_prefix + (spellings or {}).get(suffix, suffix)
        if value and hasattr(libvirt, constant):
            table[value] = getattr(libvirt, constant)
    return table


def libvirt_to_proto(enum: _EnumTypeWrapper[V], proto_prefix: str,
                     libvirt_prefix: str) -> dict[int, V]:
    """The same pairs as ``proto_to_libvirt``, looked up from libvirt's side."""
    return {number: value
            for value, number in proto_to_libvirt(enum, proto_prefix, libvirt_prefix).items()}
