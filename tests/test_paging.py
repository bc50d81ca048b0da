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
