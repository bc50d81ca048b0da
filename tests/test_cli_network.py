"""The virtmesh CLI's net-* commands against a real network service socket: on
libvirt's test driver (a private node file), and on the host's libvirt daemon for
what the test driver lacks (DHCP leases, ports)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import libvirt
import pytest

from services.common.daemon import Daemon
from services.network import SPEC
from tests.conftest import running_service
from tests.test_network_service import NODE_XML, free_subnet, network_xml, remove_network
from virtmesh.network.v1 import network_service_pb2 as pb
from virtmesh.network.v1 import network_service_pb2_grpc as pb_grpc
from virtmesh_client.cli import main

#: ``virtmesh(*args) -> (exit code, stdout, stderr)``
Run = Callable[..., tuple[int, str, str]]


def _runner(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--socket", str(daemon.socket_path)])
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
    return _runner(service, capsys)


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()[1:]]


def test_net_list_and_info(virtmesh: Run) -> None:
    code, out, err = virtmesh("net-list")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == ["NAME", "ACTIVE", "AUTOSTART", "PERSISTENT", "BRIDGE"]
    assert _rows(out) == [["default", "yes", "no", "yes", "virbr0"]]
    code, out, _ = virtmesh("net-list", "--json", "--inactive")
    assert code == 0 and json.loads(out)["networks"] == []
    code, out, _ = virtmesh("net-info", "default")
    assert code == 0 and "Bridge:" in out and "virbr0" in out
    code, out, _ = virtmesh("net-info", "default", "--json")
    assert code == 0 and json.loads(out)["active"] is True


def test_net_lifecycle(virtmesh: Run, tmp_path: Path) -> None:
    xml = tmp_path / "lab.xml"
    xml.write_text(network_xml("lab", "vmlab0"))
    code, out, err = virtmesh("net-define", str(xml), "--validate")
    assert code == 0, err
    assert "Network 'lab' defined" in out
    assert virtmesh("net-start", "lab")[0] == 0
    assert virtmesh("net-autostart", "lab")[0] == 0
    code, out, _ = virtmesh("net-list", "--autostart")
    assert [row[:3] for row in _rows(out)] == [["lab", "yes", "yes"]]

    host = tmp_path / "host.xml"
    host.write_text("<host mac='52:54:00:00:00:02' ip='10.213.0.20'/>")
    code, out, err = virtmesh("net-update", "lab", "add", "ip-dhcp-host", str(host), "--live")
    assert code == 0, err
    assert "live state updated" in out
    code, _, err = virtmesh("net-update", "lab", "add-first", "dns-host",
                            "<host ip='10.213.0.21'><hostname>db</hostname></host>",
                            "--parent-index", "0")
    assert code == 0, err
    code, out, _ = virtmesh("net-dumpxml", "lab")
    assert code == 0 and "52:54:00:00:00:02" in out and "<hostname>db</hostname>" in out
    code, _, err = virtmesh("net-update", "lab", "delete", "ip-dhcp-host",
                            "<host mac='52:54:00:00:00:09' ip='10.213.0.29'/>")
    assert code == 1 and "NOT_FOUND" in err
    code, _, err = virtmesh("net-update", "lab", "add", "ip-dhcp-host", str(host), "--current",
                            "--live")
    assert code == 2 and "--current" in err
    code, _, err = virtmesh("net-update", "lab", "add", "ip-dhcp-host", str(tmp_path / "none"))
    assert code == 2 and "cannot read" in err

    assert virtmesh("net-destroy", "lab")[0] == 0
    code, out, _ = virtmesh("net-info", "lab", "--json")
    assert json.loads(out)["active"] is False
    code, out, _ = virtmesh("net-undefine", "lab")
    assert code == 0 and "Network 'lab' undefined" in out
    assert [row[0] for row in _rows(virtmesh("net-list")[1])] == ["default"]

    xml.write_text(network_xml("temp", "vmtemp0"))
    code, out, err = virtmesh("net-create", str(xml))
    assert code == 0 and "Network 'temp' created" in out, err
    code, out, _ = virtmesh("net-list", "--transient")
    assert [row[0] for row in _rows(out)] == ["temp"]
    assert virtmesh("net-destroy", "temp")[0] == 0


def test_errors_are_one_line(virtmesh: Run, tmp_path: Path) -> None:
    code, out, err = virtmesh("net-info", "nope")
    assert (code, out) == (1, "")
    assert err.startswith("virtmesh: NOT_FOUND") and "VIR_ERR_NO_NETWORK" in err
    bad = tmp_path / "bad.xml"
    bad.write_text("<network><name>")
    code, _, err = virtmesh("net-define", str(bad))
    assert code == 1 and "INVALID_ARGUMENT" in err and len(err.strip().splitlines()) == 1
    code, _, err = virtmesh("net-start", "default")
    assert code == 1 and "FAILED_PRECONDITION" in err
    code, _, err = virtmesh("net-update", "default", "insert", "ip-dhcp-host", "<host/>")
    assert code == 2 and "invalid choice" in err


def test_net_event(service: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    result: list[int] = []
    watcher = threading.Thread(target=lambda: result.append(
        main(["net-event", "default", "--count", "2", "--json", "--socket",
              str(service.socket_path)])), daemon=True)
    watcher.start()
    deadline = time.monotonic() + 30  # hang guard
    while service.servicer.events.subscriber_count == 0:
        assert time.monotonic() < deadline, "net-event never subscribed"
        time.sleep(0.02)
    # Straight through gRPC: nothing but the watcher prints while it runs.
    with grpc.insecure_channel(f"unix:{service.socket_path}") as channel:
        stub = pb_grpc.NetworkServiceStub(channel)
        stub.StopNetwork(pb.StopNetworkRequest(name="default"))
        stub.StartNetwork(pb.StartNetworkRequest(name="default"))
    watcher.join(60)
    assert result == [0]
    out = capsys.readouterr().out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["name"], e["type"]) for e in events] == [
        ("default", "NETWORK_EVENT_TYPE_STOPPED"), ("default", "NETWORK_EVENT_TYPE_STARTED")]


def test_leases_and_ports_on_the_host(host_libvirtd: None, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    tag = secrets.token_hex(3)
    name, bridge = f"vmtest-{tag}", f"vmt-{tag}"
    port_id = f"5e1f0c4a-0000-4000-8000-{secrets.token_hex(6)}"
    xml = tmp_path / "net.xml"
    xml.write_text(network_xml(name, bridge, free_subnet()))
    port_xml = tmp_path / "port.xml"
    port_xml.write_text(f"<networkport><uuid>{port_id}</uuid><owner><name>vmtest-guest</name>"
                        "<uuid>00000000-0000-4000-8000-00000000beef</uuid></owner>"
                        "<mac address='52:54:00:ab:cd:ef'/></networkport>")
    with running_service(tmp_path, "network:///system", spec=SPEC,
                         grace_period=0.5) as daemon:
        virtmesh = _runner(daemon, capsys)
        try:
            assert virtmesh("net-define", str(xml))[0] == 0
            assert virtmesh("net-start", name)[0] == 0
            code, out, err = virtmesh("net-dhcp-leases", name)
            assert code == 0, err
            assert out.split()[:3] == ["EXPIRY_TIME", "MAC", "TYPE"] and _rows(out) == []
            code, out, _ = virtmesh("net-dhcp-leases", name, "--json", "--mac",
                                    "52:54:00:ab:cd:ef")
            assert code == 0 and json.loads(out) == {"name": name, "leases": []}

            code, out, err = virtmesh("net-port-create", name, str(port_xml))
            assert code == 0, err
            assert port_id in out
            code, out, _ = virtmesh("net-port-list", name)
            assert _rows(out) == [[port_id, "vmtest-guest", "52:54:00:ab:cd:ef", bridge]]
            code, out, _ = virtmesh("net-port-info", name, port_id, "--json")
            assert json.loads(out)["plug_type"] == "network"
            code, out, _ = virtmesh("net-port-dumpxml", name, port_id)
            assert code == 0 and f"<uuid>{port_id}</uuid>" in out
            code, out, _ = virtmesh("net-port-delete", name, port_id)
            assert code == 0 and "deleted" in out
            assert _rows(virtmesh("net-port-list", name)[1]) == []
            code, _, err = virtmesh("net-port-delete", name, port_id)
            assert code == 1 and "VIR_ERR_NO_NETWORK_PORT" in err

            assert virtmesh("net-destroy", name)[0] == 0
            assert virtmesh("net-undefine", name)[0] == 0
        finally:
            conn = libvirt.open("network:///system")
            try:
                remove_network(conn, name)
            finally:
                conn.close()
