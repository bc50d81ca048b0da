"""Who is calling: what authentication finds and authorisation, limits and audit use."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Identity:
    #: e.g. "admin", or a certificate's subject DN in libvirt's order "O=example,CN=alice"
    name: str
    #: roles and groups the policy refers to (e.g. "admin", "readonly", "team-a")
    groups: frozenset[str] = frozenset()
    #: how it was established: "certificate" or "token"
    method: str = ""
    #: the client's address, as gRPC reports it (context.peer())
    peer: str = ""


class AuthenticationError(Exception):
    """No valid identity: the call fails with UNAUTHENTICATED and never reaches a backend."""
