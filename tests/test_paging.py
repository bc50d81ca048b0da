"""AIP-158 page tokens: they page, they are bound to the filters, and they are sealed,
because the gateway may drop objects a caller may not see from a page and the token
must not name them."""

from __future__ import annotations

import base64

import grpc
import pytest

from services.common import paging
from services.common.errors import ServiceError

NAMES = ["team-a-1", "team-b-secret", "team-c-2"]


def test_pages_follow_the_token() -> None:
    chunk, token = paging.page(NAMES, str, 1, "", "f")
    seen = list(chunk)
    while token:
        chunk, token = paging.page(NAMES, str, 1, token, "f")
        seen += chunk
    assert seen == NAMES


def test_token_does_not_tell_the_last_name() -> None:
    _, token = paging.page(NAMES, str, 2, "", "f")
    padded = token + "=" * (-len(token) % 4)
    assert "team-b-secret" not in token
    assert b"team-b-secret" not in base64.urlsafe_b64decode(padded)


@pytest.mark.parametrize("mangle", [lambda t: t[:-4] + "AAAA", lambda t: "x" + t,
                                    lambda t: "garbage"])
def test_tampered_or_foreign_token_is_invalid(mangle: object) -> None:
    _, token = paging.page(NAMES, str, 1, "", "f")
    with pytest.raises(ServiceError) as error:
        paging.page(NAMES, str, 1, mangle(token), "f")  # type: ignore[operator]
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_token_is_bound_to_the_filters() -> None:
    _, token = paging.page(NAMES, str, 1, "", "active")
    with pytest.raises(ServiceError, match="other filters"):
        paging.page(NAMES, str, 1, token, "inactive")


def all_pages(listings: paging.Listings[str], names: list[str], size: int,
              filters: str = "f", scope: object = None) -> tuple[list[str], int]:
    """Every page, and how many times the listing was asked for."""
    asked = []

    def listing() -> list[str]:
        asked.append(1)
        return list(reversed(names))

    seen, token = [], ""
    while True:
        chunk, token = listings.page(listing, str, size, token, filters, scope)
        seen += chunk
        if not token:
            return seen, len(asked)


def test_a_held_listing_is_listed_and_sorted_once() -> None:
    listings: paging.Listings[str] = paging.Listings()
    names = [f"vm-{i:03d}" for i in range(250)]
    seen, asked = all_pages(listings, names, 10)
    assert seen == names and asked == 1
    assert len(listings) == 0  # the last page lets it go


def test_without_its_listing_a_token_goes_on_after_its_last_name() -> None:
    names = [f"vm-{i:03d}" for i in range(30)]
    listings: paging.Listings[str] = paging.Listings(ttl=0.0)  # gone at once
    seen, asked = all_pages(listings, names, 10)
    assert seen == names and asked == 3
    listings = paging.Listings()
    _, token = listings.page(lambda: names, str, 10, "", "f", scope="old connection")
    chunk, _ = listings.page(lambda: names[5:], str, 10, token, "f", scope="new connection")
    assert chunk == names[10:20]


def test_held_listings_are_bounded() -> None:
    listings: paging.Listings[str] = paging.Listings(max_listings=2, max_items=25)
    names = [f"vm-{i:03d}" for i in range(20)]
    for _ in range(3):
        listings.page(lambda: names, str, 5, "", "f")
    assert len(listings) == 1  # two listings of 20 are more than 25 items


def test_a_held_listing_token_is_bound_to_the_filters() -> None:
    listings: paging.Listings[str] = paging.Listings()
    _, token = listings.page(lambda: NAMES, str, 1, "", "active")
    with pytest.raises(ServiceError, match="other filters"):
        listings.page(lambda: NAMES, str, 1, token, "inactive")
    _, plain = paging.page(NAMES, str, 1, "", "active")
    assert listings.page(lambda: NAMES, str, 1, plain, "active")[0] == ["team-b-secret"]
