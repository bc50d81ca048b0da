"""``domstats``: every statistic libvirt reports, printed the way virsh prints them,
against a real compute service on libvirt's test driver."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from services.common.daemon import Daemon
from tests.conftest import CliRun
from virtmesh_client.cli_compute import stats_key_order


def test_output_is_virsh_domstats_output(virtmesh: CliRun, compute: Daemon,
                                         node_uri: str) -> None:
    """virsh and the service each open the node file afresh (test:///default is one
    driver per process, which other tests change)."""
    virsh = shutil.which("virsh")
    if virsh is None:
        pytest.skip("virsh is not installed")
    expected = subprocess.run([virsh, "-c", node_uri, "domstats", "alpha"],
                              check=True, capture_output=True, text=True).stdout
    code, out, err = virtmesh("--socket", str(compute.socket_path), "domstats", "alpha")
    assert (code, err) == (0, "")
    # the same lines; within a group ours are sorted (a protobuf map keeps no order)
    assert out.splitlines()[0] == expected.splitlines()[0] == "Domain: 'alpha'"
    assert sorted(out.split()) == sorted(expected.split())


def test_groups_and_json(virtmesh: CliRun, run_dir: Path) -> None:
    code, out, err = virtmesh("--socket", str(run_dir), "--json", "domstats", "--state",
                              "--list-active")
    assert code == 0, err
    stats = json.loads(out)["stats"]
    assert [s["name"] for s in stats] == ["test"]
    assert stats[0]["raw"]["state.state"] == "1"
    code, _, err = virtmesh("--socket", str(run_dir), "domstats", "no-such-domain")
    assert code == 1 and "NOT_FOUND" in err


def test_keys_are_in_virsh_order() -> None:
    keys = ["block.10.name", "net.0.rx.bytes", "block.2.name", "block.count", "cpu.time",
            "state.state", "vcpu.1.state", "balloon.current", "vcpu.0.state", "perf.cmt"]
    assert sorted(keys, key=stats_key_order) == [
        "state.state", "cpu.time", "balloon.current", "vcpu.0.state", "vcpu.1.state",
        "net.0.rx.bytes", "block.2.name", "block.10.name", "block.count", "perf.cmt"]
