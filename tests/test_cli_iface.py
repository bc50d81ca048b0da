"""The iface-* commands against a real iface service: on a private test:/// node and
on the host's libvirtd."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.iface import SPEC
from tests.conftest import running_service
from tests.test_iface_service import NODE_XML, iface_xml
from virtmesh_client.cli import main

#: ``virtmesh(*args) -> (exit code, stdout, stderr)``
Run = Callable[..., tuple[int, str, str]]


def _runner(socket: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--socket", str(socket)])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def virtmesh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    with running_service(tmp_path, f"test://{node}", spec=SPEC, grace_period=0.5) as daemon:
        yield _runner(daemon.socket_path, capsys)


def _rows(out: str) -> list[list[str]]:
    return [row.split() for row in out.splitlines()[1:]]


def test_list_info_dumpxml(virtmesh: Run) -> None:
    code, out, err = virtmesh("iface-list")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == ["NAME", "ACTIVE", "MAC", "TYPE"]
    assert _rows(out) == [["eth1", "yes", "aa:bb:cc:dd:ee:ff", "ethernet"]]
    code, out, _ = virtmesh("iface-info", "AA:BB:CC:DD:EE:FF")  # by MAC, as virsh
    assert code == 0 and "Name:  eth1" in out and "State: active" in out
    code, out, _ = virtmesh("--json", "iface-info", "eth1")
    assert json.loads(out) == {"name": "eth1", "mac": "aa:bb:cc:dd:ee:ff", "active": True,
                               "type": "ethernet"}
    code, out, _ = virtmesh("iface-dumpxml", "eth1")
    assert code == 0 and out.startswith("<interface type='ethernet' name='eth1'>")
    code, _, err = virtmesh("iface-info", "nope")
    assert code == 1 and "NOT_FOUND" in err and "VIR_ERR_NO_INTERFACE" in err


def test_lifecycle(virtmesh: Run, tmp_path: Path) -> None:
    xml = tmp_path / "vm0.xml"
    xml.write_text(iface_xml("vm0"))
    assert virtmesh("iface-define", str(xml))[:2] == (0, "Interface 'vm0' defined\n")
    assert _rows(virtmesh("iface-list", "--inactive")[1]) == [
        ["vm0", "no", "52:54:00:12:34:56", "ethernet"]]
    assert virtmesh("iface-start", "vm0")[:2] == (0, "Interface 'vm0' started\n")
    assert [r[0] for r in _rows(virtmesh("iface-list", "--active")[1])] == ["eth1", "vm0"]
    code, _, err = virtmesh("iface-start", "vm0")
    assert code == 1 and "FAILED_PRECONDITION" in err
    assert virtmesh("iface-destroy", "vm0")[:2] == (0, "Interface 'vm0' destroyed\n")
    assert virtmesh("iface-undefine", "vm0")[:2] == (0, "Interface 'vm0' undefined\n")
    assert [r[0] for r in _rows(virtmesh("iface-list")[1])] == ["eth1"]


def test_transactions(virtmesh: Run, tmp_path: Path) -> None:
    xml = tmp_path / "tx.xml"
    xml.write_text(iface_xml("tx0"))
    assert virtmesh("iface-begin")[:2] == (0, "Network config change transaction started\n")
    assert virtmesh("iface-define", str(xml))[0] == 0
    assert virtmesh("iface-rollback")[:2] == (
        0, "Network config change transaction rolled back\n")
    assert [r[0] for r in _rows(virtmesh("iface-list")[1])] == ["eth1"]
    assert virtmesh("iface-begin")[0] == 0
    assert virtmesh("iface-define", str(xml))[0] == 0
    assert virtmesh("iface-commit")[:2] == (0, "Network config change transaction committed\n")
    assert [r[0] for r in _rows(virtmesh("iface-list")[1])] == ["eth1", "tx0"]
    code, _, err = virtmesh("iface-commit")
    assert code == 1 and "FAILED_PRECONDITION" in err and "no transaction" in err


def test_bad_input(virtmesh: Run, tmp_path: Path) -> None:
    xml = tmp_path / "bad.xml"
    xml.write_text("<interface")
    code, _, err = virtmesh("iface-define", str(xml))
    assert code == 1 and "INVALID_ARGUMENT" in err and len(err.splitlines()) == 1
    code, _, err = virtmesh("iface-dumpxml", "eth1", "--inactive")
    assert code == 1 and "UNIMPLEMENTED" in err
    assert [r[0] for r in _rows(virtmesh("iface-list")[1])] == ["eth1"]


# -- the host's libvirtd ---------------------------------------------------------

@pytest.fixture
def host(tmp_path: Path, host_libvirtd: None, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    with running_service(tmp_path, "interface:///system", spec=SPEC,
                         grace_period=0.5) as daemon:
        yield _runner(daemon.socket_path, capsys)


def test_host_commands(host: Run, tmp_path: Path) -> None:
    code, out, err = host("iface-list")
    assert (code, err) == (0, "")
    rows = {row[0]: row for row in _rows(out)}
    assert "lo" in rows
    code, out, _ = host("iface-info", "lo")
    assert code == 0 and "Name:  lo" in out
    code, out, _ = host("iface-dumpxml", "lo", "--inactive")
    assert code == 0 and "name='lo'" in out
    code, out, _ = host("--json", "iface-list", "--active")
    active = [i["name"] for i in json.loads(out)["interfaces"]]
    assert code == 0 and active == sorted(active)
    assert all(i["active"] for i in json.loads(out)["interfaces"])
    assert ("lo" in active) == (rows["lo"][1] == "yes")
    # the udev backend is read-only
    xml = tmp_path / "vmtest.xml"
    xml.write_text(iface_xml("vmtest-cli0"))
    code, _, err = host("iface-define", str(xml))
    if code == 0:  # a writable (netcf) backend: leave the host as it was
        host("iface-undefine", "vmtest-cli0")
        pytest.skip("the host's interface backend is writable")
    assert (code, err) == (1, "virtmesh: UNIMPLEMENTED: this function is not supported by the "
                              "connection driver: virInterfaceDefineXML (VIR_ERR_NO_SUPPORT)\n")
    for command in ("iface-begin", "iface-commit", "iface-rollback"):
        code, _, err = host(command)
        assert code == 1 and "VIR_ERR_NO_SUPPORT" in err
    listed = {row[0] for row in _rows(host("iface-list")[1])}
    assert "lo" in listed and "vmtest-cli0" not in listed
