"""AIP-158 pagination over name-sorted lists.

A page token records the last name returned and a fingerprint of the request's
filters, so a token cannot be replayed with other filters. Names are unique, so
"everything after this name" stays correct when objects are added or removed
between pages. Tokens are encrypted with a key of this process (Fernet): the
gateway may drop from a page the objects a caller may not see, and the token must
not tell their names. A token from before a restart is refused as expired.

``page`` lists afresh for every page: fine for short lists. A long list (domains)
uses ``Listings``, which keeps the sorted listing of the first page for a short
while, so that listing every page of N objects costs O(N) rather than O(N²/page).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from cryptography.fernet import Fernet, InvalidToken

from services.common.shared import ServiceError

Item = TypeVar("Item")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


_SEAL = Fernet(Fernet.generate_key())


@dataclass(frozen=True)
class _Token:
    after: str
    filters: str
    #: the held listing the next page comes from (Listings), and where in it
    listing: int = 0
    offset: int = 0


def _encode(token: _Token) -> str:
    fields: dict[str, str | int] = {"after": token.after, "filters": token.filters}
    if token.listing:
        fields.update(listing=token.listing, offset=token.offset)
    return _SEAL.encrypt(json.dumps(fields).encode()).decode()


def _decode(token: str, filters: str) -> _Token:
    try:
        data = json.loads(_SEAL.decrypt(token.encode()))
        decoded = _Token(data["after"], data["filters"], int(data.get("listing", 0)),
                         int(data.get("offset", 0)))
    except (InvalidToken, ValueError, KeyError, TypeError, AttributeError):
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           "page_token is malformed, or from before the service restarted: "
                           "list again from the first page", "INVALID_PAGE_TOKEN") from None
    if decoded.filters != filters or not isinstance(decoded.after, str):
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           "page_token was issued for a request with other filters",
                           "INVALID_PAGE_TOKEN")
    return decoded


def page_size_of(page_size: int) -> int:
    """The page size a request asks for, within the server's bounds."""
    if page_size < 0:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"page_size must not be negative (got {page_size})",
                           "INVALID_PAGE_SIZE")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page(items: Sequence[Item], key: Callable[[Item], str], page_size: int,
         page_token: str, filters: str = "") -> tuple[list[Item], str]:
    """One page of ``items`` sorted by ``key``, and the token for the next page.

    Only the page is sorted (a heap of page size + 1), not all of ``items``."""
    size = page_size_of(page_size)
    candidates: Sequence[Item] = items
    if page_token:
        after = _decode(page_token, filters).after
        candidates = [item for item in items if key(item) > after]
    chunk = heapq.nsmallest(size + 1, candidates, key=key)
    if len(chunk) <= size:
        return chunk, ""
    del chunk[size:]
    return chunk, _encode(_Token(key(chunk[-1]), filters))


@dataclass
class _Held(Generic[Item]):
    items: list[Item]
    keys: list[str]
    scope: object
    expires: float


class Listings(Generic[Item]):
    """Sorted listings kept for the pages after the first, bounded in number, size
    and age.

    The first page lists and sorts once and keeps the result; its token names the
    listing and the offset of the next page, so a later page is a slice: listing
    all pages of N objects costs one listing and one sort. The pages are a
    consistent snapshot of which objects there were at the first page (an object
    gone since is left out by the caller's summaries; one added since is not
    shown). When a listing is no longer held (too old, evicted, another libvirt
    connection: ``scope``), the token's last name still says where the next page
    starts, in a fresh listing, which is then held in turn. The newest listing is
    held even when it alone is larger than ``max_items``; older ones make room.
    """

    def __init__(self, ttl: float = 60.0, max_listings: int = 8,
                 max_items: int = 200_000) -> None:
        self.ttl = ttl
        self.max_listings = max_listings
        self.max_items = max_items
        self._held: OrderedDict[int, _Held[Item]] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def page(self, listing: Callable[[], Sequence[Item]], key: Callable[[Item], str],
             page_size: int, page_token: str, filters: str = "",
             scope: object = None) -> tuple[list[Item], str]:
        """One page, sorted by ``key``, of what ``listing()`` returns (called only when
        no held listing serves the token), and the next page's token."""
        size = page_size_of(page_size)
        token = _decode(page_token, filters) if page_token else None
        held = self._get(token.listing, scope) if token else None
        if token and held:
            listing_id, start = token.listing, token.offset
        else:
            items = sorted(listing(), key=key)
            keys = [key(item) for item in items]
            start = bisect.bisect_right(keys, token.after) if token else 0
            if len(items) - start <= size:  # one page: nothing to keep
                return items[start:], ""
            listing_id, held = self._put(_Held(items, keys, scope, time.monotonic() + self.ttl))
        end = start + size
        chunk = held.items[start:end]
        if end >= len(held.items):
            self._drop(listing_id)
            return chunk, ""
        return chunk, _encode(_Token(held.keys[end - 1], filters, listing_id, end))

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def _get(self, listing_id: int, scope: object) -> _Held[Item] | None:
        with self._lock:
            self._expire()
            held = self._held.get(listing_id)
            return held if held is not None and held.scope is scope else None

    def _put(self, held: _Held[Item]) -> tuple[int, _Held[Item]]:
        listing_id = next(self._ids)
        with self._lock:
            self._expire()
            self._held[listing_id] = held
            while len(self._held) > self.max_listings or (
                    len(self._held) > 1 and self._size() > self.max_items):
                self._held.popitem(last=False)
        return listing_id, held

    def _drop(self, listing_id: int) -> None:
        with self._lock:
            self._held.pop(listing_id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for listing_id, held in list(self._held.items()):
            if held.expires <= now:
                del self._held[listing_id]

    def _size(self) -> int:
        return sum(len(held.items) for held in self._held.values())
