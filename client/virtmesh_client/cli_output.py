"""How the CLI prints: tables and labelled fields for people, the messages' JSON for
scripts. Knows no service, so every command module formats the same way.

``--json`` is the response message in protobuf's JSON mapping with the API's own field
names (what grpcurl or any other client sees), except that:

- numbers are JSON numbers, 64-bit ones included (the mapping makes int64 and uint64
  strings; Python's json has no precision limit, and jq's is that of a double);
- enums are their names everywhere, also the few int32 fields that carry a libvirt
  enum the API has no enum type for (``INT_ENUMS``, e.g. a vCPU's state);
- paging fields (``next_page_token``) are left out: the CLI has followed every page;
- fields without presence are printed with their zero values, so every key is there.
Timestamps and durations keep the mapping's RFC 3339 and ``"1.5s"`` strings.

A table's column is headed by the field it shows, as JSON names it: upper case, the
path of a nested field joined with ``_`` (``cpu.time_ns`` → ``CPU_TIME``), without
the unit suffix (``_kib``, ``_bytes``, ``_ns``) when the table prints the value with
its unit (``memory_kib`` → ``MEMORY``, "2.0 GiB"); a column that sums a repeated
field or joins fields is named by their path or common prefix (``blocks[].read_bytes``
→ ``BLOCKS_READ``; ``hypervisor_type`` and ``hypervisor_version`` → ``HYPERVISOR``).
``column_matches`` is that rule; tests/test_cli_json.py holds every ``Query``
table and the list tables to it. (``vncdisplay --all``'s DISPLAY is virsh's
display string, built from several fields, and keeps virsh's name.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import IO, Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

#: libvirt's typed parameters (virtmesh.types.v1), printed as name=value
TYPED_PARAMETER = "virtmesh.types.v1.TypedParameter"
#: int32 fields holding a libvirt enum the API has no enum type for, by full name:
#: value → name (command modules add theirs)
INT_ENUMS: dict[str, dict[int, str]] = {}
#: fields that only serve paging, which the CLI has done
PAGING_FIELDS = frozenset({"next_page_token"})
_INT64 = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                    FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                    FieldDescriptor.TYPE_SFIXED64})
#: the units a column header drops (see the module's docstring)
UNIT_SUFFIXES = ("_kib", "_bytes", "_ns", "_ms")


def to_dict(message: Any, node: str | None = None) -> dict[str, Any]:
    """The message as JSON (see the module's docstring); with ``node``, labelled with
    the node it came from."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    for name in PAGING_FIELDS & set(data):
        del data[name]
    data = _json_values(message, data)
    return data if node is None else {"node": node, **data}


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64 and isinstance(value, str):
        return int(value)
    names = INT_ENUMS.get(field.full_name)
    return names.get(value, value) if names is not None and isinstance(value, int) else value


def _json_values(message: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (MessageToDict of ``message``) with 64-bit integers as numbers and the
    ``INT_ENUMS`` by name, in nested messages, lists and maps too."""
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        value, item = getattr(message, field.name), data[field.name]
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            target = entry.fields_by_name["value"]
            data[field.name] = {k: (_json_values(value[_key(entry, k)], v)
                                    if target.message_type is not None else _scalar(target, v))
                                for k, v in item.items()}
        elif entry is not None:
            if entry.full_name.startswith("google.protobuf."):
                continue  # well-known types keep their JSON form
            data[field.name] = ([_json_values(m, d) for m, d in zip(value, item, strict=True)]
                                if _repeated(field) else _json_values(value, item))
        else:
            data[field.name] = ([_scalar(field, v) for v in item] if _repeated(field)
                                else _scalar(field, item))
    # in the .proto's order (MessageToDict puts fields left at their zero values last)
    return {field.name: data[field.name] for field in message.DESCRIPTOR.fields
            if field.name in data}


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _key(entry: Any, text: str) -> Any:
    """A map's key as the message holds it (JSON makes every key a string)."""
    key = entry.fields_by_name["key"]
    return text if key.type == FieldDescriptor.TYPE_STRING else (
        text == "true" if key.type == FieldDescriptor.TYPE_BOOL else int(text))


def column_matches(header: str, descriptor: Any) -> bool:
    """Whether a table's column ``header`` names a field of messages of type
    ``descriptor`` by the rule in the module's docstring."""
    def names(message: Any, prefix: str, depth: int) -> Iterable[str]:
        for field in message.fields:
            path = f"{prefix}{field.name}"
            yield path
            yield from (path.removesuffix(unit) for unit in UNIT_SUFFIXES
                        if path.endswith(unit))
            nested = field.message_type
            if nested is not None and depth < 3 and not nested.GetOptions().map_entry \
                    and not nested.full_name.startswith("google.protobuf."):
                yield from names(nested, f"{path}_", depth + 1)
    wanted = header.lower()
    return any(name == wanted or name.startswith(f"{wanted}_")
               for name in names(descriptor, "", 0))


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """``DOMAIN_STATE_RUNNING`` as ``running``; "?" for a value newer than this client."""
    return enum.Name(value).removeprefix(prefix).lower() if value in enum.values() else "?"


def _size(amount: float, units: Sequence[str]) -> str:
    for unit in units[:-1]:
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == units[0] else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} {units[-1]}"


def kib(amount: int) -> str:
    return _size(amount, ("KiB", "MiB", "GiB", "TiB"))


def byte_size(count: int) -> str:
    return _size(count, ("B", "KiB", "MiB", "GiB", "TiB"))


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _enum_prefix(enum: Any) -> str:
    """The prefix of an enum's values (buf's rule): ``IoErrorAction`` → ``IO_ERROR_ACTION_``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _value_text(field: FieldDescriptor, value: Any) -> str:
    if (enum := field.enum_type) is not None:
        name = enum.values_by_number.get(value)
        return name.name.removeprefix(_enum_prefix(enum)).lower() if name else "?"
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return "{" + message_text(value) + "}"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "yes" if value else "no"
    return str(value)


def message_text(message: Any) -> str:
    """A message's set fields as ``name=value`` words, for an event's line: enums by
    their short lower-case names, nested messages in braces; a TypedParameter list
    (libvirt's typed parameters) as one ``name=value`` per parameter."""
    words = []
    for field, value in message.ListFields():
        if field.message_type and field.message_type.full_name == TYPED_PARAMETER:
            words += [f"{param.name}={getattr(param, param.WhichOneof('value'))}"
                      for param in value if param.WhichOneof("value")]
        elif _repeated(field):
            words.append(f"{field.name}=[{', '.join(_value_text(field, v) for v in value)}]")
        else:
            words.append(f"{field.name}={_value_text(field, value)}")
    return " ".join(words)


def event_line(event: Any, *parts: str) -> str:
    """One line of a Watch… stream: time, object name, then what happened."""
    when = event.time.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds")
    return "  ".join((when, event.name, *parts)).rstrip()


def read_input(file: IO[str]) -> str:
    """The contents of a FileType argument; stdin stays open for the caller."""
    text = file.read()
    if file is not sys.stdin:
        file.close()
    return text


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [[str(cell) for cell in row] for row in (headers, *rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                        strict=True)).rstrip()
                     for row in cells)


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """``Label:  value`` lines with the values aligned."""
    items = list(pairs)
    width = max(len(label) for label, _ in items) + 2
    return "\n".join(f"{label + ':':<{width}}{value}" for label, value in items)


class Output:
    """Prints a result as text, or as the JSON of its message with ``--json``."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def show(self, message: Any, text: str) -> None:
        print(json.dumps(to_dict(message), indent=2) if self.json else text)

    def line(self, message: Any, text: str, node: str | None = None) -> None:
        """One line per item as it arrives (JSON Lines with ``--json``)."""
        print(json.dumps(to_dict(message, node)) if self.json else
              f"{node}  {text}" if node else text, flush=True)

def parse_bytes(text: str) -> int:
    """A byte count with an optional K, M, G or T suffix (powers of 1024)."""
    units = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
    number, unit = text.rstrip("kKmMgGtTiIbB"), text[len(text.rstrip("kKmMgGtTiIbB")):]
    unit = unit.lower().removesuffix("b").removesuffix("i")
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size such as 4096, 512K or 10G")
    return int(number) * 1024 ** units[unit]


def parse_kib(text: str) -> int:
    """KiB, as virsh's memory sizes: a plain number is KiB, ``1G`` is 1048576."""
    return int(text) if text.isdigit() else parse_bytes(text) // 1024
