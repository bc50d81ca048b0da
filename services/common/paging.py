"""AIP-158 pagination over name-sorted lists.

A page token records the last name returned and a fingerprint of the request's
filters, so a token cannot be replayed with other filters. Names are unique, so
"everything after this name" stays correct when objects are added or removed
between pages. Tokens are encrypted with a key of this process (Fernet): the
gateway may drop from a page the objects a caller may not see, and the token must
not tell their names. A token from before a restart is refused as expired.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
from cryptography.fernet import Fernet, InvalidToken

from services.common.shared import ServiceError

Item = TypeVar("Item")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


_SEAL = Fernet(Fernet.generate_key())


def _encode(after: str, filters: str) -> str:
    return _SEAL.encrypt(json.dumps({"after": after, "filters": filters}).encode()).decode()


def _decode(token: str, filters: str) -> str:
    try:
        data = json.loads(_SEAL.decrypt(token.encode()))
        after, token_filters = data["after"], data["filters"]
    except (InvalidToken, ValueError, KeyError, TypeError):
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           "page_token is malformed, or from before the service restarted: "
                           "list again from the first page", "INVALID_PAGE_TOKEN") from None
    if token_filters != filters or not isinstance(after, str):
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           "page_token was issued for a request with other filters",
                           "INVALID_PAGE_TOKEN")
    return after


def page(items: Sequence[Item], key: Callable[[Item], str], page_size: int,
         page_token: str, filters: str = "") -> tuple[list[Item], str]:
    """One page of ``items`` sorted by ``key``, and the token for the next page."""
    if page_size < 0:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"page_size must not be negative (got {page_size})",
                           "INVALID_PAGE_SIZE")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    ordered = sorted(items, key=key)
    if page_token:
        after = _decode(page_token, filters)
        ordered = [item for item in ordered if key(item) > after]
    chunk = ordered[:size]
    next_token = _encode(key(chunk[-1]), filters) if len(ordered) > size else ""
    return chunk, next_token
