"""Every RPC of every virtmesh service declares libvirt permissions that libvirt knows.

libvirt's check-aclrules idea: the gateway authorises each call from the
permissions its RPC declares (the ``virtmesh.acl.v1.permissions`` option), so an
RPC without one, or with a misspelt one, would be a hole or an RPC nobody may
call. The vocabulary is libvirt's own (services/common/libvirt_permissions.txt,
written by tools/libvirt-permissions.py from libvirt's remote protocol table).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor

from gateway.routes import driver_of, proxied_services
from services.common import acl
from services.supervisor import SERVICES

ROOT = Path(__file__).resolve().parent.parent


def every_service() -> list[ServiceDescriptor]:
    """The services behind the gateway, the gateway's own and the admin API."""
    return proxied_services(exclude_drivers=())


def every_method() -> list[MethodDescriptor]:
    return [method for service in every_service() for method in service.methods]


def test_every_service_is_checked() -> None:
    """The seven driver services, the gateway's own and the admin API: a test that saw
    none would pass."""
    assert {driver_of(s.full_name) for s in every_service()} == {*SERVICES, "gateway", "admin"}


@pytest.mark.parametrize("method", every_method(), ids=lambda method: method.full_name)
def test_rpc_declares_known_libvirt_permissions(method: MethodDescriptor) -> None:
    declared = acl.declared(method)
    assert declared, f"{method.full_name} declares no (virtmesh.acl.v1.permissions)"
    unknown = [str(p) for p in declared if str(p) not in acl.libvirt_permissions()]
    assert not unknown, f"{method.full_name}: not libvirt permissions: {unknown}"
    for permission in declared:
        if permission.when_field:
            field = method.input_type.fields_by_name.get(permission.when_field)
            assert field is not None and field.type == FieldDescriptor.TYPE_BOOL \
                and not field.is_repeated, (
                    f"{method.full_name}: {permission}:{permission.when_field} depends on "
                    f"{permission.when_field!r}, which is not a bool field of "
                    f"{method.input_type.full_name}")


def test_vocabulary_is_libvirts() -> None:
    vocabulary = acl.libvirt_permissions()
    assert {"connect:search_domains", "domain:start", "domain:read_secure", "secret:read_secure",
            "storage_vol:create", "node_device:detach"} <= vocabulary
    # conditions are not part of a permission's name
    assert not [p for p in vocabulary if p.count(":") != 1]
    assert "domain:launch" not in vocabulary


def test_every_search_permission_lists_a_known_object_type() -> None:
    searches = [p for p in acl.libvirt_permissions() if p.partition(":")[2].startswith("search_")]
    assert len(searches) == 10
    for permission in searches:
        listed = acl.listed_object(permission)
        assert f"{listed}:getattr" in acl.libvirt_permissions(), permission


def load_tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("libvirt_permissions_tool",
                                                  ROOT / "tools" / "libvirt-permissions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_reads_acl_and_aclfilter_columns_and_drops_conditions() -> None:
    rows = [
        {"acl": "domain:read, domain:read_secure:VIR_DOMAIN_XML_SECURE", "aclfilter": ""},
        {"acl": "connect:search_domains", "aclfilter": "domain:getattr"},
        {"acl": "none", "aclfilter": ""},
        {"acl": "domain:save:!VIR_DOMAIN_AFFECT_CONFIG|VIR_DOMAIN_AFFECT_LIVE",
         "aclfilter": ""},
    ]
    assert {"connect:search_domains", "domain:getattr", "domain:read", "domain:read_secure",
            "domain:save"} <= set(load_tool().vocabulary(rows))
    assert not {p for p in load_tool().vocabulary(rows) if p.count(":") != 1}
