"""What every driver's backend does the same way: hold the connection, find an
object by name or UUID, and turn optional filters into libvirt's list flags."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc
import libvirt

from services.common.errors import grpc_code_for, require
from services.common.libvirt_connection import LibvirtConnection
from services.common.shared import is_uuid

T = TypeVar("T")
S = TypeVar("S")


def by_name_or_uuid(name: str, by_uuid: Callable[[str], T], by_name: Callable[[str], T],
                    not_found: int) -> T:
    """The object called ``name``, or whose UUID it is. A name may look like a UUID, so
    a UUID that finds nothing (libvirt error ``not_found``) is tried as a name."""
    require(name, "name")
    if is_uuid(name):
        try:
            return by_uuid(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() != not_found:
                raise
    return by_name(name)


def list_flags(*filters: tuple[bool | None, int, int]) -> int:
    """libvirt's listAll* flags from (wanted, flag if true, flag if false) triples;
    a filter that is None adds nothing."""
    flags = 0
    for wanted, yes, no in filters:
        if wanted is not None:
            flags |= yes if wanted else no
    return flags


class Backend:
    """Base of a driver's backend: the live libvirt connection, reconnects included."""

    def __init__(self, connection: LibvirtConnection) -> None:
        self.connection = connection

    @property
    def conn(self) -> libvirt.virConnect:
        return self.connection.conn

    def close(self) -> None:
        """Let go of the backend's own helpers (a parse sandbox); no call is left."""


def summaries(objects: Iterable[T], summary: Callable[[T], S]) -> list[S]:
    """``summary`` of each listed object, leaving out those that went away between
    libvirt's listing and our further calls about them (NOT_FOUND), rather than failing
    the whole list."""
    found = []
    for obj in objects:
        try:
            found.append(summary(obj))
        except libvirt.libvirtError as error:
            if grpc_code_for(error.get_error_code(),
                             error.get_error_message() or "") != grpc.StatusCode.NOT_FOUND:
                raise
    return found
