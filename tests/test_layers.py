"""The three layers of a driver (docs/layout.md), checked on the source with ``ast``:
the servicer never imports libvirt, the backend never imports protobuf, and
convert, which may import both, is the only place they meet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parent.parent / "services"
SERVICERS = sorted(SERVICES.glob("*/servicer*.py"))
BACKENDS = sorted(SERVICES.glob("*/backend*.py"))
DRIVERS = ("compute", "storage", "network", "nwfilter", "secret", "nodedev", "iface")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path``; ``from a import b`` gives both a
    and a.b, since b may be a module (``from virtmesh.x.v1 import x_pb2``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def is_libvirt(module: str) -> bool:
    return module.split(".")[0] in ("libvirt", "libvirt_qemu", "libvirt_lxc")


def is_protobuf(module: str) -> bool:
    """Message types: generated code (ours, Google's), protobuf itself, and a driver's
    convert module, which imports them."""
    top = module.split(".")
    return (top[0] in ("virtmesh", "grpc_status", "grpc_health", "grpc_reflection")
            or module.startswith(("google.protobuf", "google.rpc"))
            or top[-1].endswith(("_pb2", "_pb2_grpc"))
            or (top[0] == "services" and top[-1] == "convert"))


def relative(path: Path) -> str:
    return str(path.relative_to(SERVICES.parent))


def test_every_driver_is_checked() -> None:
    assert {path.parent.name for path in SERVICERS} >= set(DRIVERS)
    assert {path.parent.name for path in BACKENDS} >= set(DRIVERS)


@pytest.mark.parametrize("path", SERVICERS, ids=relative)
def test_servicer_never_imports_libvirt(path: Path) -> None:
    wrong = [f"{relative(path)}:{line} imports {module}"
             for line, module in imported_modules(path) if is_libvirt(module)]
    assert not wrong, "a servicer speaks protobuf; libvirt is the backend's: " + "; ".join(wrong)


@pytest.mark.parametrize("path", SERVICERS, ids=relative)
def test_servicer_never_calls_the_connection(path: Path) -> None:
    """``self.backend.conn.anything(...)`` is a libvirt call made from the servicer."""
    wrong = [f"{relative(path)}:{node.lineno} calls conn.{node.attr}"
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
             and node.value.attr == "conn"]
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("path", BACKENDS, ids=relative)
def test_backend_never_imports_protobuf(path: Path) -> None:
    wrong = [f"{relative(path)}:{line} imports {module}"
             for line, module in imported_modules(path) if is_protobuf(module)]
    assert not wrong, ("a backend speaks libvirt and plain Python; messages are "
                       "convert's: " + "; ".join(wrong))
