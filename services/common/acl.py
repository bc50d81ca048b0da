"""The libvirt permissions each RPC declares, read from its proto options.

Both the gateway (authorisation) and the services (their read-only socket) ask
here, so the one list in the proto files is the only source of truth.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from pathlib import Path

from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from virtmesh.acl.v1 import acl_pb2

#: What libvirt allows on its read-only socket.
READ_ONLY_PATTERNS = ("*:getattr", "*:read", "*:search_*")
#: libvirt's own permission names (tools/libvirt-permissions.py writes the file).
_VOCABULARY_FILE = Path(__file__).with_name("libvirt_permissions.txt")


@functools.cache
def libvirt_permissions() -> frozenset[str]:
    """Every ``object:permission`` pair libvirt's remote protocol checks."""
    lines = _VOCABULARY_FILE.read_text().splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def listed_object(permission: str) -> str | None:
    """The object type a search permission lists: ``connect:search_domains`` -> ``domain``,
    ``storage_pool:search_storage_vols`` -> ``storage_vol``, ``network:search_ports`` ->
    ``network_port`` (libvirt's aclfilter pairs)."""
    owner, _, name = permission.partition(":")
    if not name.startswith("search_") or not name.endswith("s"):
        return None
    listed = name.removeprefix("search_")[:-1]
    for kind in (listed, f"{owner}_{listed}"):
        if f"{kind}:getattr" in libvirt_permissions():
            return kind
    return None


@dataclasses.dataclass(frozen=True)
class Permission:
    """``object:name``, needed always or only when a boolean request field is set."""

    object: str
    name: str
    when_field: str = ""

    @classmethod
    def parse(cls, text: str) -> Permission:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"bad permission '{text}': expected OBJECT:PERMISSION[:FIELD]")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.object}:{self.name}"

    @property
    def read_only(self) -> bool:
        return any(fnmatch.fnmatchcase(str(self), pattern) for pattern in READ_ONLY_PATTERNS)

    def applies_to(self, request: Message | None) -> bool:
        """Unconditional, or the request sets the field it depends on."""
        return not self.when_field or request is None or bool(
            getattr(request, self.when_field, False))


@functools.cache
def declared(method: MethodDescriptor) -> tuple[Permission, ...]:
    """The permissions the RPC declares (empty when it declares none)."""
    options = method.GetOptions()
    return tuple(Permission.parse(text) for text in options.Extensions[acl_pb2.permissions])


def required(method: MethodDescriptor, request: Message | None = None) -> tuple[Permission, ...]:
    """The permissions this call needs; without a request, the most it can need."""
    return tuple(p for p in declared(method) if p.applies_to(request))


def is_read_only(method: MethodDescriptor, request: Message | None = None) -> bool:
    """True when a read-only caller may make this call (with this request)."""
    return all(permission.read_only for permission in required(method, request))
