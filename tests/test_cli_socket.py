"""``--socket``: each command talks to its own service's socket, given the socket itself
or the directory of sockets; a socket of another service is one clear line. Against
real compute and storage services on libvirt's test driver, side by side in one
state directory as `make run` has them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

Run = Callable[..., tuple[int, str, str]]


def _pools(out: str) -> list[str]:
    return [p["name"] for p in json.loads(out)["storage_pools"]]


def test_a_storage_command_on_the_storage_socket(virtmesh: Run, run_dir: Path) -> None:
    for socket in (run_dir / "storage.sock", f"unix:{run_dir / 'storage.sock'}",
                   run_dir / "storage-ro.sock"):
        code, out, err = virtmesh("--json", "pool-list", "--socket", str(socket))
        assert (code, err) == (0, ""), socket
        assert "default-pool" in _pools(out)


def test_a_directory_of_sockets_serves_every_command(virtmesh: Run, run_dir: Path) -> None:
    code, out, err = virtmesh("--json", "pool-list", "--socket", str(run_dir))
    assert (code, err) == (0, "")
    assert "default-pool" in _pools(out)
    code, out, err = virtmesh("--socket", str(run_dir), "--json", "list")
    assert (code, err) == (0, "")
    assert "test" in [d["name"] for d in json.loads(out)["domains"]]
    code, out, err = virtmesh("vol-list", "default-pool", "--socket", str(run_dir))
    assert (code, err) == (0, "") and out.split()[:2] == ["NAME", "TYPE"]


def test_another_services_socket_is_one_clear_line(virtmesh: Run, run_dir: Path) -> None:
    compute = run_dir / "compute.sock"
    code, out, err = virtmesh("pool-list", "--socket", str(compute))
    assert (code, out) == (1, "")
    assert err == (f"virtmesh: UNIMPLEMENTED: {compute} does not serve pool-list: --socket "
                   "takes the storage service's socket, or a directory of sockets\n")
    code, _, err = virtmesh("services", "--socket", str(run_dir))
    assert code == 2 and err == ("virtmesh: services is the gateway's own API: the gateway "
                                 "has no socket; use --gateway\n")
    # a directory without the command's socket: the service is not running
    code, _, err = virtmesh("net-list", "--socket", str(run_dir), "--timeout", "5")
    assert code == 1 and f"{run_dir}/network.sock" in err and err.count("\n") == 1
