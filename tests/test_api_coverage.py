"""What each RPC says it reaches of libvirt is true, and docs/api-coverage.md is current.

An RPC names the libvirt functions that do its work (the method option
``virtmesh.acl.v1.libvirt_functions``). Each must be a real libvirt function of the
service's own area, and the service's libvirt side (every module of its package but
the servicer, which never calls libvirt) must call it: libvirt-python's method for a
C function is read from libvirt-python's source (tools/api-coverage.py
``python_methods``), and the package's source must use that method's name.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the services that must reach every function of their area that has no reason
COMPLETE = ("storage", "network", "nwfilter", "secret", "nodedev", "iface")


def load_tool() -> ModuleType:
    if "api_coverage" not in sys.modules:
        spec = importlib.util.spec_from_file_location("api_coverage",
                                                      ROOT / "tools" / "api-coverage.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["api_coverage"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["api_coverage"]


tool = load_tool()
FUNCTIONS: dict[str, str] = tool.api_functions()
DECLARED: dict[str, dict[str, list[str]]] = tool.declared()
METHODS: dict[str, set[str]] = tool.python_methods()


def attribute_names(service: str) -> set[str]:
    """Every ``.name`` used in the service's package outside its servicer: the
    libvirt-python methods it calls or hands on (``conn.networkEventRegisterAny``)."""
    names: set[str] = set()
    for path in (ROOT / "services" / service).glob("*.py"):
        if path.name != "servicer.py":
            names |= {node.attr for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.Attribute)}
    return names


def uncalled(service: str) -> list[str]:
    """The functions the service's RPCs declare that its libvirt side never calls."""
    used = attribute_names(service)
    return sorted({f"{rpc}: {name}" for rpc, names in DECLARED[service].items()
                   for name in names if not METHODS.get(name, set()) & used})


def test_every_driver_service_is_documented() -> None:
    assert set(DECLARED) == set(tool.SERVICES)


@pytest.mark.parametrize("service", tool.SERVICES)
def test_declared_names_are_libvirt_functions_of_the_service(service: str) -> None:
    for rpc, names in DECLARED[service].items():
        for name in names:
            assert name in FUNCTIONS, f"{rpc} declares {name!r}: not a libvirt function"
            assert tool.service_of(name, FUNCTIONS[name]) == service, (
                f"{rpc} declares {name}, which is about another service's objects")


@pytest.mark.parametrize("service", tool.SERVICES)
def test_every_rpc_declares_what_it_reaches(service: str) -> None:
    assert not [rpc for rpc, names in DECLARED[service].items() if not names]


@pytest.mark.parametrize("service", tool.SERVICES)
def test_backend_calls_every_declared_function(service: str) -> None:
    assert not uncalled(service)


def test_a_function_the_backend_never_calls_is_found() -> None:
    """The check above can fail: nwfilter's package calls no domain method, and a
    method it does call is found."""
    assert METHODS["virDomainSaveFlags"] == {"saveFlags"}
    assert METHODS["virConnectListAllNWFilters"] == {"listAllNWFilters"}
    used = attribute_names("nwfilter")
    assert "listAllNWFilters" in used and "saveFlags" not in used
    original = DECLARED["nwfilter"]["ListNWFilters"]
    DECLARED["nwfilter"]["ListNWFilters"] = [*original, "virNWFilterBindingDelete"]
    try:
        assert uncalled("nwfilter") == []  # deleting bindings is called, by another RPC
        DECLARED["nwfilter"]["ListNWFilters"] = [*original, "virDomainSaveFlags"]
        assert uncalled("nwfilter") == ["ListNWFilters: virDomainSaveFlags"]
    finally:
        DECLARED["nwfilter"]["ListNWFilters"] = original


@pytest.mark.parametrize("service", COMPLETE)
def test_service_reaches_every_function_without_a_reason(service: str) -> None:
    rows = tool.table(FUNCTIONS, DECLARED)[service]
    assert rows, f"no libvirt function is in {service}'s area"
    assert not [row.name for row in rows if not row.rpcs and not row.reason]


def test_every_documented_function_is_reached_or_has_a_reason_or_is_a_gap() -> None:
    """Every public function is in the document once, and the library's all have
    a reason."""
    rows = tool.table(FUNCTIONS, DECLARED)
    names = [row.name for service_rows in rows.values() for row in service_rows]
    assert sorted(names) == sorted(FUNCTIONS)
    assert all(row.reason for row in rows[None])
    assert {"virStorageVolUpload", "virDomainQemuMonitorCommand", "virStreamSend"} <= set(names)


def test_reason_tables_name_no_reached_function() -> None:
    """An entry for a function that an RPC now reaches is stale."""
    reached = {name for rpcs in DECLARED.values() for names in rpcs.values() for name in names}
    tables = {**tool.COVERED_BY, **tool.ANSWERED_BY, **tool.NOT_APPLICABLE}
    assert not set(tables) & reached
    assert set(tables) <= set(FUNCTIONS)
    # what covers or answers a function is a libvirt function an RPC reaches
    assert set(tool.ANSWERED_BY.values()) <= reached
    assert set(tool.COVERED_BY.values()) - reached <= {"virConnectDomainEventDeregisterAny"}


def test_document_is_current() -> None:
    text = tool.render(tool.table(FUNCTIONS, DECLARED), tool.libvirt_version())
    assert (ROOT / "docs" / "api-coverage.md").read_text() == text, (
        "docs/api-coverage.md is not current: run make api-coverage")
