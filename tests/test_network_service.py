"""The network service over its UNIX socket: against libvirt's test driver (a private
node file per test), and against the host's libvirt daemon (network:///system), where
networks really get a bridge, addresses, firewall rules and dnsmasq."""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import secrets
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest

from services.common.daemon import Daemon
from services.network import SPEC
from tests.conftest import XML_REFUSED, error_of, reason_of, running_service
from virtmesh.network.v1 import network_service_pb2 as pb
from virtmesh.network.v1 import network_service_pb2_grpc as pb_grpc

Stub = pb_grpc.NetworkServiceStub
SYSTEM_URI = "network:///system"

NODE_XML = """<node>
  <network>
    <name>default</name>
    <bridge name='virbr0'/>
    <forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
    </ip>
  </network>
</node>
"""


def network_xml(name: str, bridge: str, subnet: str = "10.213.0.0/24",
                extra: str = "") -> str:
    """An isolated network (no <forward>) with a DHCP range on ``subnet``."""
    net = ipaddress.ip_network(subnet)
    hosts = list(net.hosts())
    return (f"<network><name>{name}</name><bridge name='{bridge}'/>{extra}"
            f"<ip address='{hosts[0]}' netmask='{net.netmask}'><dhcp>"
            f"<range start='{hosts[99]}' end='{hosts[199]}'/></dhcp></ip></network>")


def names(stub: Stub, **filters: Any) -> list[str]:
    return [n.name for n in stub.ListNetworks(pb.ListNetworksRequest(**filters)).networks]


@contextlib.contextmanager
def serving(state_dir: Path, uri: str) -> Iterator[tuple[Daemon, Stub]]:
    with running_service(state_dir, uri, spec=SPEC, grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield daemon, pb_grpc.NetworkServiceStub(channel)


class Events:
    """A WatchNetworkEvents stream read on a thread; ``next()`` waits (with a hang guard)."""

    def __init__(self, stub: Stub, names: list[str]) -> None:
        self.call = stub.WatchNetworkEvents(pb.WatchNetworkEventsRequest(names=names),
                                            timeout=120)
        self.call.initial_metadata()  # the service has subscribed us
        self.queue: queue.Queue[pb.WatchNetworkEventsResponse] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in self.call:
                self.queue.put(event)

    def next(self) -> pb.WatchNetworkEventsResponse:
        return self.queue.get(timeout=60)

    def close(self) -> None:
        self.call.cancel()


# -- hermetic: libvirt's test driver ---------------------------------------------

@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Stub]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    with serving(tmp_path, f"test://{node}") as (_, network_stub):
        yield network_stub


def test_list_get_and_xml(stub: Stub) -> None:
    networks = stub.ListNetworks(pb.ListNetworksRequest()).networks
    assert [n.name for n in networks] == ["default"]
    default = networks[0]
    assert default.bridge == "virbr0" and default.active and default.persistent
    assert len(default.uuid) == 36
    assert stub.GetNetwork(pb.GetNetworkRequest(name=default.uuid)).network == default
    reply = stub.GetNetworkXML(pb.GetNetworkXMLRequest(name=default.uuid))
    assert reply.name == "default" and "<name>default</name>" in reply.xml
    # The test driver has no separate persistent config to show.
    error = error_of(stub.GetNetworkXML, pb.GetNetworkXMLRequest(name="default", inactive=True))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_lifecycle_with_events(stub: Stub) -> None:
    events = Events(stub, ["lab"])
    try:
        # another network's events do not reach this watcher
        stub.StopNetwork(pb.StopNetworkRequest(name="default"))
        stub.StartNetwork(pb.StartNetworkRequest(name="default"))
        defined = stub.DefineNetwork(pb.DefineNetworkRequest(
            xml=network_xml("lab", "vmlab0"), validate=True)).network
        assert (defined.name, defined.bridge, defined.active, defined.persistent) == \
            ("lab", "vmlab0", False, True)
        started = stub.StartNetwork(pb.StartNetworkRequest(name=defined.uuid)).network
        assert started.active
        stub.SetNetworkAutostart(pb.SetNetworkAutostartRequest(name="lab", autostart=True))
        assert names(stub, autostart=True) == ["lab"]
        stub.StopNetwork(pb.StopNetworkRequest(name="lab"))
        assert names(stub, active=False) == ["lab"]
        stub.UndefineNetwork(pb.UndefineNetworkRequest(name="lab"))
        assert names(stub) == ["default"]
        seen = [events.next() for _ in range(4)]
    finally:
        events.close()
    assert [e.type for e in seen] == [
        pb.NETWORK_EVENT_TYPE_DEFINED, pb.NETWORK_EVENT_TYPE_STARTED,
        pb.NETWORK_EVENT_TYPE_STOPPED, pb.NETWORK_EVENT_TYPE_UNDEFINED]
    assert {(e.name, e.uuid) for e in seen} == {("lab", defined.uuid)}


def test_transient_network_is_gone_once_stopped(stub: Stub) -> None:
    created = stub.CreateNetwork(pb.CreateNetworkRequest(
        xml=network_xml("temp", "vmtemp0"))).network
    assert created.active and not created.persistent and not created.autostart
    assert names(stub, persistent=False) == ["temp"]
    stub.StopNetwork(pb.StopNetworkRequest(name="temp"))
    assert names(stub) == ["default"]


def test_pagination_and_filters(stub: Stub) -> None:
    for i in range(5):
        stub.DefineNetwork(pb.DefineNetworkRequest(
            xml=network_xml(f"net-{i}", f"vmnet{i}", f"10.213.{i}.0/24")))
    pages, token = [], ""
    while True:
        reply = stub.ListNetworks(pb.ListNetworksRequest(page_size=2, page_token=token))
        pages.append([n.name for n in reply.networks])
        token = reply.next_page_token
        if not token:
            break
    assert pages == [["default", "net-0"], ["net-1", "net-2"], ["net-3", "net-4"]]
    assert names(stub, active=True) == ["default"]
    assert names(stub, active=False, persistent=True) == [f"net-{i}" for i in range(5)]
    first = stub.ListNetworks(pb.ListNetworksRequest(page_size=2, active=False))
    error = error_of(stub.ListNetworks, pb.ListNetworksRequest(
        page_size=2, page_token=first.next_page_token))  # other filters
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(stub.ListNetworks, pb.ListNetworksRequest(page_size=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_update_sections(stub: Stub) -> None:
    host = "<host mac='52:54:00:00:00:01' name='web' ip='192.168.122.10'/>"

    def update(**fields: Any) -> None:
        """Add ``host`` live and in config, unless ``fields`` say otherwise."""
        request = pb.UpdateNetworkRequest(
            name="default", command=pb.UPDATE_COMMAND_ADD_LAST,
            section=pb.NETWORK_SECTION_IP_DHCP_HOST, xml=host, live=True, config=True)
        for key, value in fields.items():
            setattr(request, key, value)
        stub.UpdateNetwork(request)

    def update_error(**fields: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            update(**fields)
        return caught.value

    update()
    assert "52:54:00:00:00:01" in stub.GetNetworkXML(pb.GetNetworkXMLRequest(name="default")).xml
    assert update_error().code() == grpc.StatusCode.ALREADY_EXISTS
    missing = "<host mac='52:54:00:00:00:09' ip='192.168.122.19'/>"
    error = update_error(command=pb.UPDATE_COMMAND_DELETE, xml=missing)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    update(command=pb.UPDATE_COMMAND_DELETE)
    assert "52:54:00:00:00:01" not in stub.GetNetworkXML(
        pb.GetNetworkXMLRequest(name="default")).xml

    update(section=pb.NETWORK_SECTION_DNS_HOST,
           xml="<host ip='192.168.122.20'><hostname>db</hostname></host>")
    assert "<hostname>db</hostname>" in stub.GetNetworkXML(
        pb.GetNetworkXMLRequest(name="default")).xml

    bad: list[tuple[dict[str, Any], str]] = [
        ({"command": pb.UPDATE_COMMAND_UNSPECIFIED}, "command"),
        ({"section": pb.NETWORK_SECTION_UNSPECIFIED}, "section"),
        ({"section": 77}, "section"),
        ({"parent_index": -2}, "parent_index"),
        ({"parent_index": 5}, "index 5"),
        ({"xml": "<host mac="}, ""),
        ({"xml": "<range start='192.168.122.2' end='192.168.122.3'/>"}, "range"),
    ]
    for fields, message in bad:
        error = update_error(**fields)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert message in str(error.details()), fields
    assert "52:54:00:00:00:01" not in stub.GetNetworkXML(
        pb.GetNetworkXMLRequest(name="default")).xml

    stub.DefineNetwork(pb.DefineNetworkRequest(xml=network_xml("idle", "vmidle0")))
    error = update_error(name="idle", config=False)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # live, but not running


def test_bad_input_gets_precise_status_and_leaves_nothing(stub: Stub) -> None:
    for xml in ("<network><name>", "not xml at all", "<network><name>x</name><ip address="):
        for call, request in ((stub.DefineNetwork, pb.DefineNetworkRequest(xml=xml)),
                              (stub.CreateNetwork, pb.CreateNetworkRequest(xml=xml))):
            error = error_of(call, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, xml
            assert reason_of(error) in XML_REFUSED
    error = error_of(stub.DefineNetwork, pb.DefineNetworkRequest(
        xml="<network><name>odd</name><bogus/></network>", validate=True))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "VIR_ERR_XML_INVALID_SCHEMA"
    error = error_of(stub.DefineNetwork, pb.DefineNetworkRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "xml" in str(error.details())
    error = error_of(stub.DefineNetwork, pb.DefineNetworkRequest(
        xml=network_xml("default", "vmother0")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert names(stub) == ["default"]  # nothing half-defined

    for name in ("nope", "00000000-0000-0000-0000-0000000000aa"):
        error = error_of(stub.GetNetwork, pb.GetNetworkRequest(name=name))
        assert error.code() == grpc.StatusCode.NOT_FOUND and reason_of(error) == \
            "VIR_ERR_NO_NETWORK"
        assert error_of(stub.StartNetwork, pb.StartNetworkRequest(name=name)).code() == \
            grpc.StatusCode.NOT_FOUND
    error = error_of(stub.GetNetwork, pb.GetNetworkRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in str(error.details())
    error = error_of(stub.StartNetwork, pb.StartNetworkRequest(name="default"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_test_driver_has_no_leases_or_ports(stub: Stub) -> None:
    """The test driver does not implement them: UNIMPLEMENTED, not INTERNAL."""
    error = error_of(stub.ListDHCPLeases, pb.ListDHCPLeasesRequest(name="default"))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    error = error_of(stub.ListNetworkPorts, pb.ListNetworkPortsRequest(name="default"))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    error = error_of(stub.GetNetworkPort, pb.GetNetworkPortRequest(name="default",
                                                                   port="not-a-uuid"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "UUID" in str(error.details())


# -- the host's libvirt daemon --------------------------------------------------

def _used_subnets() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route of the host and every libvirt network's <ip>."""
    used = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        destination, mask = (socket.inet_ntoa(struct.pack("<I", int(value, 16)))
                             for value in (fields[1], fields[7]))
        used.append(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    return used


def free_subnet() -> str:
    used = _used_subnets()
    for _ in range(1000):
        candidate = ipaddress.IPv4Network(
            f"10.{secrets.randbelow(150) + 100}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return str(candidate)
    raise AssertionError("no free private /24 in 10.100.0.0/16-10.249.0.0/16")


def remove_network(conn: libvirt.virConnect, name: str) -> None:
    """Stop and undefine ``name`` if it is (still) there."""
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError:
        return
    if net.isActive():
        net.destroy()
    with contextlib.suppress(libvirt.libvirtError):  # a transient one is gone already
        net.undefine()


@pytest.fixture
def host_network(host_libvirtd: None, tmp_path: Path) -> Iterator[tuple[Stub, str, str]]:
    """A service on network:///system, a unique network name and bridge name; whatever
    the test leaves of networks named like it is removed afterwards."""
    tag = secrets.token_hex(3)
    name, bridge = f"vmtest-{tag}", f"vmt-{tag}"
    with serving(tmp_path, SYSTEM_URI) as (_, system_stub):
        conn = libvirt.open(SYSTEM_URI)
        try:
            yield system_stub, name, bridge
        finally:
            for leftover in (name, f"{name}-b", f"{name}-t"):
                remove_network(conn, leftover)
            conn.close()


def test_real_network_lifecycle(host_network: tuple[Stub, str, str]) -> None:
    stub, name, bridge = host_network
    subnet = free_subnet()
    events = Events(stub, [name])
    try:
        defined = stub.DefineNetwork(pb.DefineNetworkRequest(
            xml=network_xml(name, bridge, subnet), validate=True)).network
        assert (defined.bridge, defined.active, defined.persistent) == (bridge, False, True)
        assert not Path(f"/sys/class/net/{bridge}").exists()

        started = stub.StartNetwork(pb.StartNetworkRequest(name=name)).network
        assert started.active and started.uuid == defined.uuid
        assert Path(f"/sys/class/net/{bridge}").is_dir()
        assert name in names(stub, active=True)
        assert stub.GetNetwork(pb.GetNetworkRequest(name=defined.uuid)).network == started

        host_ip = str(list(ipaddress.ip_network(subnet).hosts())[9])
        stub.UpdateNetwork(pb.UpdateNetworkRequest(
            name=name, command=pb.UPDATE_COMMAND_ADD_LAST,
            section=pb.NETWORK_SECTION_IP_DHCP_HOST, parent_index=0, live=True, config=True,
            xml=f"<host mac='52:54:00:12:34:56' name='web' ip='{host_ip}'/>"))
        for inactive in (False, True):
            xml = stub.GetNetworkXML(pb.GetNetworkXMLRequest(name=name, inactive=inactive)).xml
            assert f"ip='{host_ip}'" in xml, xml

        leases = stub.ListDHCPLeases(pb.ListDHCPLeasesRequest(name=name))
        assert leases.name == name and list(leases.leases) == []  # no guest asked yet
        error = error_of(stub.ListDHCPLeases, pb.ListDHCPLeasesRequest(name=name, mac="zz"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

        stub.StopNetwork(pb.StopNetworkRequest(name=name))
        assert not Path(f"/sys/class/net/{bridge}").exists()
        assert not stub.GetNetwork(pb.GetNetworkRequest(name=name)).network.active
        stub.UndefineNetwork(pb.UndefineNetworkRequest(name=name))
        assert name not in names(stub)
        seen = [events.next().type for _ in range(4)]
    finally:
        events.close()
    assert seen == [pb.NETWORK_EVENT_TYPE_DEFINED, pb.NETWORK_EVENT_TYPE_STARTED,
                    pb.NETWORK_EVENT_TYPE_STOPPED, pb.NETWORK_EVENT_TYPE_UNDEFINED]
    error = error_of(stub.GetNetwork, pb.GetNetworkRequest(name=name))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def port_xml(port: str, mac: str = "52:54:00:ab:cd:ef", uuid_line: bool = True) -> str:
    uuid = f"<uuid>{port}</uuid>" if uuid_line else ""
    return (f"<networkport>{uuid}<owner><name>vmtest-guest</name>"
            "<uuid>00000000-0000-4000-8000-00000000beef</uuid></owner>"
            f"<mac address='{mac}'/></networkport>")


def test_real_network_ports(host_network: tuple[Stub, str, str]) -> None:
    stub, name, bridge = host_network
    stub.DefineNetwork(pb.DefineNetworkRequest(xml=network_xml(name, bridge, free_subnet())))
    port_id = "5e1f0c4a-0000-4000-8000-" + secrets.token_hex(6)
    error = error_of(stub.CreateNetworkPort,
                     pb.CreateNetworkPortRequest(name=name, xml=port_xml(port_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # not active yet
    stub.StartNetwork(pb.StartNetworkRequest(name=name))
    assert list(stub.ListNetworkPorts(pb.ListNetworkPortsRequest(name=name)).ports) == []

    created = stub.CreateNetworkPort(pb.CreateNetworkPortRequest(
        name=name, xml=port_xml(port_id))).port
    assert (created.network, created.uuid, created.owner_name, created.mac) == \
        (name, port_id, "vmtest-guest", "52:54:00:ab:cd:ef")
    assert (created.plug_type, created.plug_device) == ("network", bridge)
    listed = stub.ListNetworkPorts(pb.ListNetworkPortsRequest(name=name))
    assert listed.name == name and list(listed.ports) == [created]
    got = stub.GetNetworkPort(pb.GetNetworkPortRequest(name=name, port=port_id)).port
    assert got == created
    xml = stub.GetNetworkPortXML(pb.GetNetworkPortXMLRequest(name=name, port=port_id))
    assert xml.port == port_id and f"<uuid>{port_id}</uuid>" in xml.xml

    error = error_of(stub.CreateNetworkPort,
                     pb.CreateNetworkPortRequest(name=name, xml=port_xml(port_id)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    for bad in ("<networkport>", port_xml(port_id, uuid_line=False)):
        error = error_of(stub.CreateNetworkPort, pb.CreateNetworkPortRequest(name=name, xml=bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert [p.uuid for p in stub.ListNetworkPorts(
        pb.ListNetworkPortsRequest(name=name)).ports] == [port_id]  # nothing half-created

    stub.DeleteNetworkPort(pb.DeleteNetworkPortRequest(name=name, port=port_id))
    assert list(stub.ListNetworkPorts(pb.ListNetworkPortsRequest(name=name)).ports) == []
    error = error_of(stub.GetNetworkPort, pb.GetNetworkPortRequest(name=name, port=port_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(error) == "VIR_ERR_NO_NETWORK_PORT"
    error = error_of(stub.DeleteNetworkPort, pb.DeleteNetworkPortRequest(name="nope-net",
                                                                         port=port_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_real_bad_input_leaves_nothing(host_network: tuple[Stub, str, str]) -> None:
    stub, name, bridge = host_network
    before = names(stub)
    error = error_of(stub.DefineNetwork, pb.DefineNetworkRequest(xml=f"<network><name>{name}"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(stub.GetNetwork, pb.GetNetworkRequest(name=name))
    assert error.code() == grpc.StatusCode.NOT_FOUND

    subnet = free_subnet()
    stub.DefineNetwork(pb.DefineNetworkRequest(xml=network_xml(name, bridge, subnet)))
    error = error_of(stub.DefineNetwork, pb.DefineNetworkRequest(
        xml=network_xml(name, f"{bridge}b", subnet)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS  # the name
    error = error_of(stub.DefineNetwork, pb.DefineNetworkRequest(
        xml=network_xml(f"{name}-b", bridge, subnet)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS  # the bridge
    # A transient network that cannot start (its bridge would be the loopback
    # interface) is not left behind.
    error = error_of(stub.CreateNetwork, pb.CreateNetworkRequest(
        xml=network_xml(f"{name}-t", "lo", free_subnet())))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert names(stub) == sorted([*before, name])
    error = error_of(stub.StopNetwork, pb.StopNetworkRequest(name=name))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # not active


def test_real_transient_network(host_network: tuple[Stub, str, str]) -> None:
    stub, name, bridge = host_network
    created = stub.CreateNetwork(pb.CreateNetworkRequest(
        xml=network_xml(name, bridge, free_subnet()))).network
    assert created.active and not created.persistent
    assert Path(f"/sys/class/net/{bridge}").is_dir()
    assert name in names(stub, persistent=False)
    error = error_of(stub.SetNetworkAutostart,
                     pb.SetNetworkAutostartRequest(name=name, autostart=True))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = error_of(stub.UndefineNetwork, pb.UndefineNetworkRequest(name=name))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.StopNetwork(pb.StopNetworkRequest(name=name))
    assert name not in names(stub)  # a transient network is gone once stopped
    assert not Path(f"/sys/class/net/{bridge}").exists()


def test_bridge_name(stub: Stub) -> None:
    reply = stub.GetNetworkBridgeName(pb.GetNetworkBridgeNameRequest(name="default"))
    assert (reply.name, reply.bridge) == ("default", "virbr0")
    stub.DefineNetwork(pb.DefineNetworkRequest(
        xml="<network><name>direct</name><forward mode='bridge'>"
            "<interface dev='eth0'/></forward></network>"))
    error = error_of(stub.GetNetworkBridgeName, pb.GetNetworkBridgeNameRequest(name="direct"))
    assert (error.code(), reason_of(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_BRIDGE")
    error = error_of(stub.GetNetworkBridgeName, pb.GetNetworkBridgeNameRequest(name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # the test driver has no ports, so none has parameters
    error = error_of(stub.GetNetworkPortParameters, pb.GetNetworkPortParametersRequest(
        name="default", port="5e1f0c4a-0000-4000-8000-000000000001"))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_real_port_parameters(host_network: tuple[Stub, str, str]) -> None:
    stub, name, bridge = host_network
    stub.CreateNetwork(pb.CreateNetworkRequest(xml=network_xml(name, bridge, free_subnet())))
    port_id = "5e1f0c4a-0000-4000-8000-" + secrets.token_hex(6)
    stub.CreateNetworkPort(pb.CreateNetworkPortRequest(name=name, xml=port_xml(port_id).replace(
        "</networkport>", "<bandwidth><inbound average='1000'/></bandwidth></networkport>")))
    assert stub.GetNetworkBridgeName(pb.GetNetworkBridgeNameRequest(name=name)).bridge == bridge

    got = stub.GetNetworkPortParameters(pb.GetNetworkPortParametersRequest(
        name=name, port=port_id))
    assert (got.name, got.port) == (name, port_id)
    assert got.bandwidth == pb.PortBandwidth(inbound=pb.BandwidthLimits(
        average_kibps=1000, peak_kibps=0, burst_kib=0, floor_kibps=0))

    changed = stub.SetNetworkPortParameters(pb.SetNetworkPortParametersRequest(
        name=name, port=port_id, bandwidth=pb.PortBandwidth(inbound=pb.BandwidthLimits(
            peak_kibps=2000, burst_kib=512)))).bandwidth
    assert changed.inbound == pb.BandwidthLimits(average_kibps=1000, peak_kibps=2000,
                                                 burst_kib=512, floor_kibps=0)
    assert not changed.HasField("outbound")
    assert stub.GetNetworkPortParameters(pb.GetNetworkPortParametersRequest(
        name=name, port=port_id)).bandwidth == changed
    assert "peak='2000'" in stub.GetNetworkPortXML(pb.GetNetworkPortXMLRequest(
        name=name, port=port_id)).xml

    def refused(bandwidth: pb.PortBandwidth, port: str = port_id) -> tuple[Any, str]:
        error = error_of(stub.SetNetworkPortParameters, pb.SetNetworkPortParametersRequest(
            name=name, port=port, bandwidth=bandwidth))
        return error.code(), reason_of(error)

    assert refused(pb.PortBandwidth()) == (grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD")
    assert refused(pb.PortBandwidth(outbound=pb.BandwidthLimits(floor_kibps=1))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_PARAMETER")
    assert refused(pb.PortBandwidth(outbound=pb.BandwidthLimits(average_kibps=1))) == (
        grpc.StatusCode.FAILED_PRECONDITION, "NO_SUCH_PARAMETER")
    # a floor needs the network's own inbound QoS, which this one lacks
    assert refused(pb.PortBandwidth(inbound=pb.BandwidthLimits(floor_kibps=1)))[0] == \
        grpc.StatusCode.UNIMPLEMENTED
    assert refused(pb.PortBandwidth(inbound=pb.BandwidthLimits(average_kibps=1)),
                   "5e1f0c4a-0000-4000-8000-000000000000")[0] == grpc.StatusCode.NOT_FOUND
