"""Per-call authorisation: the permissions an RPC declares, against the policy.

Each RPC declares libvirt permissions (services/common/acl.py). The gateway
decodes the request with the descriptor pool to learn which objects it
addresses, and allows the call only when the caller's grants cover every
permission on every one of them. Which object a permission is about:

- ``connect:*``: the connection, no object;
- otherwise the request's ``name`` field, or each of its ``names``; a request
  without a ``name`` field (DefineDomain, CreateVolume...) names the object in
  its ``xml``: the root element's ``<name>``; a ``new_name`` (RenameDomain, a
  volume's clone) is addressed as well, so a grant cannot move an object out of
  its names or into someone else's;
- a storage volume is ``<pool>/<name>``, the pool from the request's ``pool``
  field; a storage pool permission on a request with a ``pool`` field is about
  that pool.

Objects are matched by the names the caller gives: a UUID addresses an object
only for grants that are not restricted to names.

A permission about objects of a type the call lists (its search permission:
``connect:search_domains`` lists domains) and naming none of them is checked
per item instead: the items of List responses, and the events of Watch streams,
that the caller may not see (``<type>:getattr`` plus the call's other
permissions on that type) are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from gateway.config import file_stamp
from gateway.identity import Identity
from gateway.policy import Policy
from gateway.policy import load as load_policy
from services.common.acl import Permission, declared, listed_object, required
from services.common.config import ConfigError
from services.common.shared import is_uuid

log = logging.getLogger(__name__)

#: object type inside a container -> (the container's type, the request field naming it)
CONTAINED = {"storage_vol": ("storage_pool", "pool")}
_CONTAINERS = {container: field for container, field in CONTAINED.values()}


class Denied(Exception):
    """Authenticated but not allowed: PERMISSION_DENIED, the backend is never called."""

    def __init__(self, identity: Identity, permission: str, name: str | None,
                 message: str = "") -> None:
        kind = permission.partition(":")[0]
        target = ("" if kind == "connect" else f" on {kind} {name!r}" if name is not None
                  else f" on a {kind} the request does not name (only unrestricted grants "
                       "allow that)")
        super().__init__(message or f"{identity.name!r} lacks permission {permission}{target}")
        self.permission = permission
        self.name = name
        #: every object the request addresses (for the audit log), set by authorize
        self.objects: tuple[str, ...] = ()


def _field(descriptor: Any, name: str) -> Any:
    """The message type's field ``name``, None when it has none."""
    return descriptor.fields_by_name.get(name)


def _is_string(field: Any) -> bool:
    return field is not None and field.type == FieldDescriptor.TYPE_STRING


def xml_name(text: str) -> str | None:
    """The ``<name>`` of an XML document's root element as libvirt reads it (all of
    its text, spaces kept); None when there is none, or when it is ambiguous: several
    ``<name>`` elements, or one with child elements."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None
    found = root.findall("name")
    if len(found) != 1 or len(found[0]):
        return None
    return found[0].text or None


def _addressable(names: tuple[str, ...]) -> tuple[str, ...] | None:
    """Names as a grant's globs may judge them: None (only unrestricted grants apply)
    when one is a UUID, which the services accept in place of a name but which
    says nothing about the object's name."""
    return None if any(is_uuid(name) for name in names) else names


def own_names(request: Message) -> tuple[str, ...] | None:
    """The objects the request names itself; () for none; None when it names one in
    XML that cannot be read."""
    descriptor = request.DESCRIPTOR
    name = _field(descriptor, "name")
    if _is_string(name) and not name.is_repeated:
        value = str(getattr(request, "name"))  # noqa: B009 - any message type
        return _addressable((value,)) if value else ()
    names = _field(descriptor, "names")
    if _is_string(names) and names.is_repeated:
        return _addressable(tuple(getattr(request, "names")))  # noqa: B009
    return _xml_names(request)


def _xml_names(request: Message) -> tuple[str, ...] | None:
    if _is_string(_field(request.DESCRIPTOR, "xml")) and getattr(request, "xml"):  # noqa: B009
        found = xml_name(getattr(request, "xml"))  # noqa: B009
        return _addressable((found,)) if found else None
    return ()


def _created_names(request: Message) -> tuple[str, ...] | None:
    """What a copy or renamed object is called (CloneStorageVolume, RenameDomain:
    ``new_name``, or for a clone its XML's name)."""
    if not _is_string(_field(request.DESCRIPTOR, "new_name")):
        return ()
    new_name = str(getattr(request, "new_name"))  # noqa: B009
    return _addressable((new_name,)) if new_name else _xml_names(request)


def _container(request: Message, field: str) -> str:
    return str(getattr(request, field)) if _is_string(
        _field(request.DESCRIPTOR, field)) else ""


def object_names(object_type: str, request: Message) -> tuple[str, ...] | None:
    """Names of the ``object_type`` objects the request addresses (see the module's
    docstring); () when it addresses none by name, None when its name is unreadable."""
    container_field = _CONTAINERS.get(object_type)
    if container_field and _container(request, container_field):
        return _addressable((_container(request, container_field),))
    if object_type not in CONTAINED:  # a rename's new name is addressed too
        own, created = own_names(request), _created_names(request)
        return None if own is None or created is None else own + created
    # A contained object is <container>/<name>. Without the container, the name is a
    # path or key the service looks up in every pool: not a name a glob can judge.
    field = CONTAINED[object_type][1]
    source, copy = own_names(request), _created_names(request)
    pool = _container(request, field)
    if source is None or copy is None or (source and not pool) or (
            pool and is_uuid(pool)):
        return None
    target = _container(request, f"target_{field}") or pool
    return (tuple(f"{pool}/{name}" for name in source)
            + tuple(f"{target}/{name}" for name in copy))


@dataclasses.dataclass(frozen=True)
class Decision:
    """An allowed call: what it addresses (for the audit log) and how its responses
    are filtered."""

    identity: Identity
    request: Message | None
    #: names of the objects the request addresses
    objects: tuple[str, ...] = ()
    #: object type of the items to filter out of responses, with the permissions an
    #: item needs; "" when nothing is filtered
    listed: str = ""
    item_permissions: tuple[str, ...] = ()


class Authorizer:
    """Decides calls against a policy; with ``path``, the policy file it came from is
    read again when it changes (a file that does not load keeps the policy in force)."""

    def __init__(self, policy: Policy, path: Path | None = None) -> None:
        self.policy = policy
        self.path = path
        self._mtime = file_stamp(path)
        #: without_request's answers for self.policy, by identity and method
        self._unconditional: dict[tuple[str, frozenset[str], MethodDescriptor],
                                  Decision | None] = {}
        self._unconditional_policy = policy

    @classmethod
    def from_file(cls, path: Path | None) -> Authorizer:
        """From a policy file (None: the built-in roles only); ConfigError if it is bad."""
        return cls(load_policy(path), path)

    def reload(self, force: bool = False) -> str:
        """"" or why the policy in force was kept."""
        mtime = file_stamp(self.path)
        if self.path is None or (mtime == self._mtime and not force):
            return ""
        self._mtime = mtime
        try:
            self.policy = load_policy(self.path)
        except ConfigError as error:
            log.error("keeping the policy in force: %s", error)
            return str(error)
        log.info("policy reloaded from %s: %d grants", self.path, len(self.policy.grants))
        return ""

    def visible(self, identity: Identity, object_type: str, name: str) -> bool:
        """May the caller see this object (``<object_type>:getattr`` on it)? For
        search results, listings and events; a storage volume's name is
        ``<pool>/<volume>``."""
        return self.policy.allows(identity, f"{object_type}:getattr", name)

    def allowed(self, identity: Identity, permissions: tuple[str, ...], name: str) -> bool:
        return all(self.policy.allows(identity, permission, name) for permission in permissions)

    def without_request(self, identity: Identity, method: MethodDescriptor
                        ) -> Decision | None:
        """The decision of a call whose request need not be read, None when it must be:
        a read-only call (whatever its request asks: then it has no audit record to name
        objects in) that the caller may make on every object, with every permission the
        method can need, and whose listed items it may all see."""
        if self._unconditional_policy is not self.policy:  # reloaded: answers may differ
            self._unconditional, self._unconditional_policy = {}, self.policy
        key = (identity.name, identity.groups, method)
        try:
            return self._unconditional[key]
        except KeyError:
            pass
        if len(self._unconditional) > 10_000:
            self._unconditional.clear()
        # Kept for every call of this identity, from whichever peer: no peer in it.
        decision = self._unconditional[key] = (
            Decision(dataclasses.replace(identity, peer=""), None)
            if self._needs_no_request(identity, method) else None)
        return decision

    def _needs_no_request(self, identity: Identity, method: MethodDescriptor) -> bool:
        permissions = required(method)  # without a request: the most it can need
        if not permissions or not all(p.read_only for p in permissions):
            return False
        listed = {kind for kind in map(listed_object, map(str, permissions)) if kind}
        needed = [*map(str, permissions), *(f"{kind}:getattr" for kind in listed)]
        return all(self.policy.allows_everywhere(identity, p) for p in needed)

    def authorize(self, identity: Identity, method: MethodDescriptor,
                  request: Message) -> Decision:
        """The call's decision; raises Denied naming the first permission missing."""
        if not declared(method):  # tests/test_acl_rules.py keeps this from happening
            raise Denied(identity, "connect:write", None,
                         f"{method.full_name} declares no permissions: nobody may call it")
        permissions = required(method, request)
        listed = {kind for kind in map(listed_object, map(str, permissions)) if kind}
        named = [(permission, None if permission.object == "connect"
                  else object_names(permission.object, request)) for permission in permissions]
        objects = tuple(dict.fromkeys(name for _, names in named for name in names or ()))
        try:
            deferred = self._check_all(identity, named, listed)
        except Denied as denied:
            denied.objects = objects
            raise
        return Decision(identity, request, objects, *self._filter(identity, listed, deferred))

    def _check_all(self, identity: Identity,
                   named: list[tuple[Permission, tuple[str, ...] | None]],
                   listed: set[str]) -> dict[str, list[str]]:
        """Check each permission on each object it is about (None: about no object
        named, as ``connect:*`` always is); returns the permissions left to check per
        listed item, by object type. Raises Denied."""
        deferred: dict[str, list[str]] = {}
        for permission, names in named:
            text = str(permission)
            if names is None or (not names and permission.object not in listed):
                self._check(identity, text, None)
            elif not names:
                deferred.setdefault(permission.object, []).append(text)
                if not any(grant.role.covers(text) for grant in self.policy.grants_of(
                        identity)):
                    raise Denied(identity, text, None)
            for name in names or ():
                self._check(identity, text, name)
        return deferred

    def _check(self, identity: Identity, permission: str, name: str | None) -> None:
        if not self.policy.allows(identity, permission, name):
            raise Denied(identity, permission, name)

    def _filter(self, identity: Identity, listed: set[str],
                deferred: dict[str, list[str]]) -> tuple[str, tuple[str, ...]]:
        for kind in listed:
            needed = tuple(dict.fromkeys([f"{kind}:getattr", *deferred.get(kind, ())]))
            if not all(self.policy.allows_everywhere(identity, p) for p in needed):
                return kind, needed
        return "", ()

    def item_name(self, decision: Decision, item: Message) -> str:
        name = str(getattr(item, "name"))  # noqa: B009 - any message type
        container = CONTAINED.get(decision.listed)
        if container is None:
            return name
        pool = _container(item, container[1]) or (
            _container(decision.request, container[1]) if decision.request else "")
        return f"{pool}/{name}" if pool else name

    def visible_item(self, decision: Decision, item: Message) -> bool:
        return self.allowed(decision.identity, decision.item_permissions,
                            self.item_name(decision, item))

    def filter_message(self, decision: Decision, message: Message, streamed: bool) -> bool:
        """Drop the items the caller may not see from a response, in place; False when
        the whole message is about such an object (a Watch event) and must be dropped."""
        if not decision.listed:
            return True
        if streamed and _is_string(_field(message.DESCRIPTOR, "name")):
            return self.visible_item(decision, message)
        for field in message.DESCRIPTOR.fields:
            if field.type != FieldDescriptor.TYPE_MESSAGE or not field.is_repeated:
                continue
            items = getattr(message, field.name)
            if not _is_string(_field(field.message_type, "name")):
                del items[:]  # items without a name (network ports): none can be judged
                continue
            kept = [item for item in items if self.visible_item(decision, item)]
            if len(kept) != len(items):
                del items[:]
                items.extend(kept)
        return True
