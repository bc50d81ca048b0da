"""Who may do what: roles and grants in libvirt's permission vocabulary.

A policy file (TOML) defines roles (sets of ``object:permission`` patterns) and
grants them to identities and groups, optionally only on objects whose names
match globs::

    [roles.vm-user]
    permissions = ["connect:search_domains", "domain:getattr", "domain:read",
                   "domain:start", "domain:stop", "domain:init_control"]

    [[grants]]
    groups = ["team-a"]          # and/or identities = ["O=example,CN=alice"]
    role = "vm-user"             # or permissions = [...]
    objects = ["team-a-*"]       # omitted: every object

Three roles are built in and always granted, on every object, to the groups of
the same name: ``admin`` (everything), ``operator`` (everything except
destroying objects or data, reading secrets and administering the processes) and
``readonly`` (what libvirt
allows on its read-only socket). ``connect:*`` permissions name no object, so a
grant's ``objects`` never restrict them. A storage volume's name is
``<pool>/<volume>``. Patterns and globs are fnmatch patterns, case-sensitive.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.identity import Identity
from services.common.acl import READ_ONLY_PATTERNS, libvirt_permissions
from services.common.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Role:
    permissions: tuple[str, ...]
    #: patterns taken out again of what ``permissions`` matches
    excluding: tuple[str, ...] = ()

    def covers(self, permission: str) -> bool:
        return _matches(permission, self.permissions) and not _matches(permission,
                                                                       self.excluding)


BUILTIN_ROLES = {
    "admin": Role(("*:*",)),
    # Runs, changes and snapshots everything; cannot delete objects, wipe storage,
    # read guest memory or volume contents, read secret values and passwords, or
    # administer the virtmesh processes themselves (virtmesh.admin.v1: server:write).
    "operator": Role(("*:*",), ("*:delete", "*:format", "*:read_secure", "domain:mem_read",
                                "domain:core_dump", "storage_vol:data_read",
                                "server:write")),
    "readonly": Role(READ_ONLY_PATTERNS),
}


def _matches(text: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(text, pattern) for pattern in patterns)


@dataclasses.dataclass(frozen=True)
class Grant:
    role: Role
    identities: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    #: object name globs; empty: every object
    objects: tuple[str, ...] = ()

    def applies_to(self, identity: Identity) -> bool:
        return identity.name in self.identities or bool(self.groups & identity.groups)

    def allows(self, permission: str, name: str | None) -> bool:
        """``name`` None: the object is not known (yet), so only an unrestricted grant
        allows it."""
        if not self.role.covers(permission):
            return False
        if not self.objects or permission.startswith("connect:"):
            return True
        return name is not None and _matches(name, self.objects)

    def unrestricted(self, permission: str) -> bool:
        return self.allows(permission, None)


@dataclasses.dataclass(frozen=True)
class Policy:
    grants: tuple[Grant, ...] = ()

    def grants_of(self, identity: Identity) -> tuple[Grant, ...]:
        return tuple(grant for grant in self.grants if grant.applies_to(identity))

    def allows(self, identity: Identity, permission: str, name: str | None) -> bool:
        return any(grant.allows(permission, name) for grant in self.grants_of(identity))

    def allows_everywhere(self, identity: Identity, permission: str) -> bool:
        """Allowed on every object of its type, whatever its name."""
        return any(grant.unrestricted(permission) for grant in self.grants_of(identity))


BUILTIN_GRANTS = tuple(Grant(role, groups=frozenset({name}))
                       for name, role in BUILTIN_ROLES.items())


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item
                                              for item in value):
        raise ConfigError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)


def _patterns(where: str, key: str, value: Any) -> tuple[str, ...]:
    """Permission patterns, each matching at least one of libvirt's permissions."""
    patterns = _strings(where, key, value)
    known = libvirt_permissions()
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(permission, pattern) for permission in known):
            raise ConfigError(f"{where}: {key}: {pattern!r} matches none of libvirt's "
                              "permissions (OBJECT:PERMISSION, e.g. domain:start)")
    return patterns


def _checked(where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    return table


def parse(data: dict[str, Any], source: str = "policy") -> Policy:
    """A policy from a parsed TOML document; ConfigError names what is wrong."""
    _checked(source, data, {"roles", "grants"})
    roles = dict(BUILTIN_ROLES)
    defined = data.get("roles", {})
    if not isinstance(defined, dict):
        raise ConfigError(f"{source}: roles must be a table ([roles.NAME])")
    for name, table in defined.items():
        where = f"{source}: roles.{name}"
        if name in BUILTIN_ROLES:
            raise ConfigError(f"{where}: a built-in role cannot be redefined")
        table = _checked(where, table, {"permissions", "excluding"})
        if "permissions" not in table:
            raise ConfigError(f"{where}: permissions is missing")
        roles[name] = Role(_patterns(where, "permissions", table["permissions"]),
                           _patterns(where, "excluding", table.get("excluding", [])))
    grants = list(BUILTIN_GRANTS)
    entries = data.get("grants", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: grants must be an array of tables ([[grants]])")
    for index, table in enumerate(entries):
        where = f"{source}: grants[{index}]"
        table = _checked(where, table, {"identities", "groups", "role", "permissions",
                                        "objects"})
        if ("role" in table) == ("permissions" in table):
            raise ConfigError(f"{where}: needs either role or permissions")
        if "role" in table:
            if table["role"] not in roles:
                raise ConfigError(f"{where}: unknown role {table['role']!r} "
                                  f"(known: {', '.join(sorted(roles))})")
            role = roles[table["role"]]
        else:
            role = Role(_patterns(where, "permissions", table["permissions"]))
        identities = frozenset(_strings(where, "identities", table.get("identities", [])))
        groups = frozenset(_strings(where, "groups", table.get("groups", [])))
        if not identities and not groups:
            raise ConfigError(f"{where}: grants to nobody (set identities and/or groups)")
        grants.append(Grant(role, identities, groups,
                            _strings(where, "objects", table.get("objects", []))))
    return Policy(tuple(grants))


def load(path: Path | None) -> Policy:
    """The policy in ``path``; None: the built-in roles only."""
    if path is None:
        return Policy(BUILTIN_GRANTS)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"policy file {path}: {error}") from None
    return parse(data, f"policy file {path}")
