"""The nodedev-* commands against a real nodedev service: on a private test:/// node
and on the host's libvirtd."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.common.daemon import Daemon
from services.nodedev import SPEC
from tests.conftest import running_service
from tests.test_nodedev_service import DEVICES, NODE_XML, vhba_xml
from virtmesh.nodedev.v1 import nodedev_service_pb2 as pb
from virtmesh_client.cli import main
from virtmesh_client.client import Client

#: ``virtmesh(*args) -> (exit code, stdout, stderr)``
Run = Callable[..., tuple[int, str, str]]


def _runner(socket: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--socket", str(socket)])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Daemon]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    with running_service(tmp_path, f"test://{node}", spec=SPEC, grace_period=0.5) as daemon:
        yield daemon


@pytest.fixture
def virtmesh(service: Daemon, capsys: pytest.CaptureFixture[str]) -> Run:
    return _runner(service.socket_path, capsys)


def _first_column(out: str) -> list[str]:
    return [row.split()[0] for row in out.splitlines()[1:]]


def test_list_and_filters(virtmesh: Run) -> None:
    code, out, err = virtmesh("nodedev-list")
    assert (code, err) == (0, "")
    assert out.split("\n")[0].split() == ["NAME", "PARENT", "CAPABILITIES", "DRIVER", "ACTIVE"]
    assert _first_column(out) == DEVICES
    assert ["pci_0000_00_03_0", "computer", "pci", "-", "-"] in [
        row.split() for row in out.splitlines()]
    code, out, _ = virtmesh("nodedev-list", "--cap", "pci", "--cap", "net")
    assert _first_column(out) == ["net_eth1_aa_bb_cc_dd_ee_ff", "pci_0000_00_03_0"]
    code, out, _ = virtmesh("nodedev-list", "--parent", "computer", "--json")
    assert [d["name"] for d in json.loads(out)["node_devices"]] == ["pci_0000_00_03_0",
                                                                    "scsi_host1"]
    code, _, err = virtmesh("nodedev-list", "--cap", "warp-drive")
    assert code == 2 and "invalid choice" in err
    code, _, err = virtmesh("nodedev-list", "--parent", "nope")
    assert code == 1 and "NOT_FOUND" in err


def test_info_and_dumpxml(virtmesh: Run) -> None:
    code, out, _ = virtmesh("nodedev-info", "pci_0000_00_03_0")
    assert code == 0
    assert "Parent:       computer" in out and "Capabilities: pci" in out
    assert "Active:       -" in out  # the test driver cannot tell
    code, out, _ = virtmesh("nodedev-dumpxml", "scsi_host1")
    assert code == 0 and "<name>scsi_host1</name>" in out
    code, _, err = virtmesh("nodedev-info", "nope")
    assert code == 1 and err.startswith("virtmesh: NOT_FOUND") and "VIR_ERR_NO_NODE_DEVICE" in err


def test_create_destroy_and_event(virtmesh: Run, service: Daemon, tmp_path: Path) -> None:
    result: list[tuple[int, str, str]] = []
    watcher = threading.Thread(target=lambda: result.append(
        virtmesh("nodedev-event", "--count", "2", "--json")))
    watcher.start()
    deadline = time.monotonic() + 30  # hang guard
    while service.servicer.events.subscriber_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with Client(f"unix:{service.socket_path}") as client:  # the CLI's output is the watcher's
        created = client.call("CreateNodeDevice", pb.CreateNodeDeviceRequest(
            xml=vhba_xml())).node_device.name
        client.call("DestroyNodeDevice", pb.DestroyNodeDeviceRequest(name=created))
    watcher.join(30)
    assert result, "nodedev-event --count 2 did not return"
    code, out, _ = result[0]
    assert code == 0
    assert [(e["name"], e["lifecycle"]["type"]) for e in map(json.loads, out.splitlines())] == [
        (created, "NODE_DEVICE_LIFECYCLE_EVENT_TYPE_CREATED"),
        (created, "NODE_DEVICE_LIFECYCLE_EVENT_TYPE_DELETED")]


def test_create_destroy(virtmesh: Run, tmp_path: Path) -> None:
    xml = tmp_path / "vhba.xml"
    xml.write_text(vhba_xml())
    code, out, err = virtmesh("nodedev-create", str(xml))
    assert code == 0, err
    assert out.startswith("Node device 'scsi_host") and out.endswith("' created\n")
    created = out.split("'")[1]
    assert created in _first_column(virtmesh("nodedev-list", "--parent", "scsi_host1")[1])
    assert virtmesh("nodedev-destroy", created)[:2] == (
        0, f"Node device '{created}' destroyed\n")
    assert _first_column(virtmesh("nodedev-list")[1]) == DEVICES


def test_bad_input(virtmesh: Run, tmp_path: Path) -> None:
    xml = tmp_path / "bad.xml"
    xml.write_text("<device><parent>")
    code, _, err = virtmesh("nodedev-create", str(xml))
    assert code == 1 and "INVALID_ARGUMENT" in err and len(err.splitlines()) == 1
    code, _, err = virtmesh("nodedev-define", str(xml))
    assert code == 1 and "INVALID_ARGUMENT" in err  # checked before libvirt sees it
    xml.write_text("<device><name>mdev_x</name><parent>computer</parent>"
                   "<capability type='mdev'><type id='nvidia-11'/></capability></device>")
    code, _, err = virtmesh("nodedev-define", str(xml))
    assert code == 1 and "UNIMPLEMENTED" in err  # the test driver cannot define devices
    code, _, err = virtmesh("nodedev-destroy", "nope")
    assert code == 1 and "NOT_FOUND" in err
    assert _first_column(virtmesh("nodedev-list")[1]) == DEVICES


def test_pci_commands(virtmesh: Run) -> None:
    for command in ("nodedev-detach", "nodedev-reattach", "nodedev-reset"):
        code, _, err = virtmesh(command, "scsi_host1")
        assert (code, err) == (1, "virtmesh: INVALID_ARGUMENT: node device 'scsi_host1' is "
                                  "not a PCI device (NOT_A_PCI_DEVICE)\n")
        code, _, err = virtmesh(command, "pci_0000_00_03_0")
        assert code == 1 and "UNIMPLEMENTED" in err
    code, _, err = virtmesh("nodedev-detach", "pci_0000_00_03_0", "--driver", "vfio")
    assert code == 1 and "UNIMPLEMENTED" in err


# -- the host's libvirtd ---------------------------------------------------------

@pytest.fixture
def host(tmp_path: Path, host_libvirtd: None, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    with running_service(tmp_path, "nodedev:///system", spec=SPEC,
                         grace_period=0.5) as daemon:
        yield _runner(daemon.socket_path, capsys)


def test_host_commands(host: Run, tmp_path: Path) -> None:
    code, out, err = host("nodedev-list", "--json")
    assert (code, err) == (0, "")
    devices = {d["name"]: d for d in json.loads(out)["node_devices"]}
    assert devices["computer"]["capabilities"] == ["system"]
    code, out, _ = host("nodedev-list", "--cap", "system", "--active")
    assert _first_column(out) == ["computer"]
    code, out, _ = host("nodedev-info", "computer")
    assert code == 0 and "Active:       yes" in out and "Parent:       -" in out
    code, out, _ = host("nodedev-dumpxml", "computer")
    assert code == 0 and "<name>computer</name>" in out
    code, _, err = host("nodedev-start", "computer")
    assert code == 1 and "FAILED_PRECONDITION" in err
    code, _, err = host("nodedev-undefine", "computer")
    assert code == 1 and "UNIMPLEMENTED" in err  # the computer cannot be undefined
    code, _, err = host("nodedev-autostart", "computer")
    assert code == 1 and "UNIMPLEMENTED" in err
    code, _, err = host("nodedev-detach", "computer")
    assert code == 1 and "NOT_A_PCI_DEVICE" in err
    creatable = host("nodedev-list", "--cap", "scsi_host", "--cap", "mdev")[1]
    xml = tmp_path / "vhba.xml"
    xml.write_text(vhba_xml(parent="vmtest-no-such-parent"))
    code, _, err = host("nodedev-create", str(xml))
    assert code == 1 and "NOT_FOUND" in err
    assert host("nodedev-list", "--cap", "scsi_host", "--cap", "mdev")[1] == creatable
