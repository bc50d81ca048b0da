"""virtmesh-run and its Python API: one guest on a private embedded QEMU root.

    from virtmesh_run import run
    with run(open("guest.xml").read()) as vm:
        vm.wait_console("booted", 30)
        vm.shutdown()
        print(vm.wait(60))

See virtmesh_run.vm for the API and virtmesh_run.cli for the command. The API
is loaded on first use, so that the command can set libvirt's logging up
before libvirt is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtmesh_run.vm import Event, Run, RunError, Stopped, run

__all__ = ["Event", "Run", "RunError", "Stopped", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("virtmesh_run.vm"), name)
    raise AttributeError(f"module 'virtmesh_run' has no attribute {name!r}")
