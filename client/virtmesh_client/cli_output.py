"""How the CLI prints: tables and labelled fields for people, the messages' JSON
(protobuf field names) for scripts. Knows no service, so every command module
formats the same way."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import IO, Any

from google.protobuf import json_format


def to_dict(message: Any, node: str | None = None) -> dict[str, Any]:
    """The message as JSON; with ``node``, labelled with the node it came from."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    return data if node is None else {"node": node, **data}


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
