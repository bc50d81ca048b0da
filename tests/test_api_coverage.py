"""What each RPC says it reaches of libvirt is true, and docs/api-coverage.md is current.

An RPC names the libvirt functions that do its work (the method option
``virtmesh.acl.v1.libvirt_functions``). Each must be a real libvirt function of the
service's own area, and the code the RPC runs must call it. libvirt-python's method
for a C function is read from libvirt-python's source (tools/api-coverage.py
``python_methods``); the code an RPC runs is found statically: its servicer method,
and every function of the service's package whose name that code mentions, and so
on (a Watch RPC also the servicer's constructor, where the backend's event
callbacks are registered). That code must use the method's name. Names shared by
several functions make the search take in more than runs, never less.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
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


@functools.cache
def functions_in(path: Path) -> dict[str, list[ast.AST]]:
    """The functions and methods defined in a module, by name."""
    found: dict[str, list[ast.AST]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.setdefault(node.name, []).append(node)
    return found


def names_in(node: ast.AST) -> set[str]:
    """The names and attribute names a piece of code mentions."""
    return {child.attr for child in ast.walk(node) if isinstance(child, ast.Attribute)} | {
        child.id for child in ast.walk(node) if isinstance(child, ast.Name)}


@functools.cache
def reached_names(service: str, rpc: str) -> frozenset[str]:
    """Every name mentioned by the code the RPC runs in the service's package."""
    servicer: dict[str, list[ast.AST]] = {}  # servicer.py and its mixins, servicer_*.py
    functions: dict[str, list[ast.AST]] = {}
    for path in (ROOT / "services" / service).glob("*.py"):
        side = servicer if path.stem.startswith("servicer") else functions
        for name, found in functions_in(path).items():
            side.setdefault(name, []).extend(found)
    assert rpc in servicer, f"{service}'s servicer has no method {rpc}"
    todo = list(servicer[rpc])
    if "watch" in names_in(todo[0]):  # events: registered by the servicer's constructor
        todo += servicer["__init__"]
    seen: set[int] = set()
    names: set[str] = set()
    while todo:
        node = todo.pop()
        if id(node) not in seen:
            seen.add(id(node))
            used = names_in(node)
            names |= used
            for name in used:
                todo += servicer.get(name, []) + functions.get(name, [])
    return frozenset(names)


def uncalled(service: str) -> list[str]:
    """The functions the service's RPCs declare that the code they run never calls."""
    missing = []
    for rpc, names in DECLARED[service].items():
        reached = reached_names(service, rpc)
        missing += [f"{rpc}: {name}" for name in names if not METHODS.get(name, set()) & reached]
    return sorted(missing)


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
def test_each_rpc_calls_what_it_declares(service: str) -> None:
    assert not uncalled(service)


def test_a_function_the_rpc_never_calls_is_found() -> None:
    """The check above can fail: a function another RPC of the service calls, and one
    the service never calls, are both found on an RPC that does not call them."""
    assert METHODS["virDomainSaveFlags"] == {"saveFlags"}
    assert METHODS["virNWFilterBindingDelete"] == {"delete"}
    assert "delete" in reached_names("nwfilter", "DeleteNWFilterBinding")
    assert "delete" not in reached_names("nwfilter", "ListNWFilters")
    assert "nwfilterEventRegisterAny" not in reached_names("nwfilter", "ListNWFilters")
    assert "storagePoolEventRegisterAny" in reached_names("storage", "WatchStoragePoolEvents")
    original = DECLARED["nwfilter"]["ListNWFilters"]
    DECLARED["nwfilter"]["ListNWFilters"] = [*original, "virNWFilterBindingDelete",
                                             "virDomainSaveFlags"]
    try:
        assert uncalled("nwfilter") == ["ListNWFilters: virDomainSaveFlags",
                                        "ListNWFilters: virNWFilterBindingDelete"]
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
    tables = {**tool.COVERED_BY, **tool.ANSWERED_BY, **tool.NOT_APPLICABLE,
              **tool.SAME_IN_THIS_LIBVIRT, **tool.PASSES_FILES}
    assert not set(tables) & reached
    assert set(tables) <= set(FUNCTIONS)
    # what covers or answers a function is a libvirt function an RPC reaches
    assert set(tool.ANSWERED_BY.values()) <= reached
    assert set(tool.COVERED_BY.values()) - reached <= {"virConnectDomainEventDeregisterAny"}
    assert {older for older, _ in tool.SAME_IN_THIS_LIBVIRT.values()} <= reached
    compute_rpcs = set(DECLARED["compute"])
    assert set(tool.PASSES_FILES.values()) <= compute_rpcs


def test_same_in_this_libvirt_is_true_of_the_installed_libvirt() -> None:
    """A newer spelling left out as the same call must take no parameter the older lacks."""
    api = (tool.API_DIR / "libvirt-api.xml").read_text()
    save_params = set(re.findall(r"VIR_DOMAIN_SAVE_PARAM_[A-Z_]+", api))
    assert save_params == {"VIR_DOMAIN_SAVE_PARAM_FILE", "VIR_DOMAIN_SAVE_PARAM_DXML"}


def test_document_is_current() -> None:
    text = tool.render(tool.table(FUNCTIONS, DECLARED), tool.libvirt_version())
    assert (ROOT / "docs" / "api-coverage.md").read_text() == text, (
        "docs/api-coverage.md is not current: run make api-coverage")
