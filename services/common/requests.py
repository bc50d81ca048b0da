"""What every request must be before a handler sees it: decodable, and free of NUL.

gRPC Python answers a request it cannot decode with INTERNAL ("Exception
deserializing request!") on a sync server and UNKNOWN on an asyncio one; both tell
the caller that the server broke. A NUL character in a string field is valid
protobuf but no libvirt name or document can hold one, and libvirt-python fails on
it with a ValueError. Both are the caller's mistake: INVALID_ARGUMENT, checked here
once for every method of every process (the services and the gateway's own API).

libvirt-free, so that the gateway can use it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


class Malformed:
    """Stands in for a request that failed the checks; the handler's wrapper refuses it
    with ``message`` (decoding happens where no status can be sent yet)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def nul_field(message: Message, prefix: str = "") -> str:
    """The path of the first string field holding a NUL character, or ""."""
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if field.is_repeated else (value,)
            if any("\x00" in item for item in values):
                return name
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                items = [item for pair in value.items() for item in pair
                         if isinstance(item, str)]
                if any("\x00" in item for item in items):
                    return name
                continue
            for index, item in enumerate(value if field.is_repeated else (value,)):
                found = nul_field(item, f"{name}[{index}]." if field.is_repeated
                                  else f"{name}.")
                if found:
                    return found
    return ""


def checked(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """``deserializer`` that returns a ``Malformed`` instead of raising, and for a
    request with a NUL in a string field."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    kind = descriptor.full_name if descriptor is not None else "request"

    def deserialize(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            request = deserializer(data)
        except Exception as error:  # noqa: BLE001 - DecodeError, or whatever a codec raises
            return Malformed(f"malformed {kind}: {error}" if kind not in str(error)
                             else f"malformed request: {error}")
        if isinstance(request, Message):
            field = nul_field(request)
            if field:
                return Malformed(f"{field} holds a NUL character, which no libvirt name or "
                                 "document may contain")
        return request

    return deserialize
