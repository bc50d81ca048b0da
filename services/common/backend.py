"""What every driver's backend does the same way: hold the connection, find an
object by name or UUID, and turn optional filters into libvirt's list flags."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

import libvirt

from services.common.errors import require
from services.common.libvirt_connection import LibvirtConnection

T = TypeVar("T")


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


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
