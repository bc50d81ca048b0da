"""The nodedev service over its UNIX socket: hermetic cases on a private test:///
node, and the host's real devices through nodedev:///system."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from services.nodedev import SPEC
from tests.conftest import XML_REFUSED, running_service
from tests.test_compute_service import error_of, reason_of
from virtmesh.nodedev.v1 import nodedev_service_pb2 as pb
from virtmesh.nodedev.v1 import nodedev_service_pb2_grpc as pb_grpc

Stub = pb_grpc.NodeDeviceServiceStub
C = grpc.StatusCode
T = TypeVar("T")

#: A host with a PCI NIC and an FC HBA that can host vHBAs. The test driver makes a
#: new vHBA by copying scsi_host11, so that one must exist.
NODE_XML = """<node>
  <device><name>computer</name>
    <capability type='system'><hardware><uuid>11111111-2222-3333-4444-555555555555</uuid>
    </hardware></capability></device>
  <device><name>pci_0000_00_03_0</name><path>/sys/devices/pci0000:00/0000:00:03.0</path>
    <parent>computer</parent><driver><name>virtio-pci</name></driver>
    <capability type='pci'><domain>0</domain><bus>0</bus><slot>3</slot><function>0</function>
      <product id='0x1000'/><vendor id='0x1af4'/></capability></device>
  <device><name>net_eth1_aa_bb_cc_dd_ee_ff</name><parent>pci_0000_00_03_0</parent>
    <capability type='net'><interface>eth1</interface><address>aa:bb:cc:dd:ee:ff</address>
    </capability></device>
  <device><name>scsi_host1</name><parent>computer</parent>
    <capability type='scsi_host'><host>1</host><unique_id>0</unique_id>
      <capability type='fc_host'><wwnn>2000000012341234</wwnn><wwpn>1000000012341234</wwpn>
        <fabric_wwn>2000000043214321</fabric_wwn></capability>
      <capability type='vport_ops'><max_vports>0</max_vports><vports>0</vports></capability>
    </capability></device>
  <device><name>scsi_host11</name><parent>scsi_host1</parent>
    <capability type='scsi_host'><host>11</host><unique_id>10</unique_id>
      <capability type='fc_host'><wwnn>2000000034563456</wwnn><wwpn>1000000034563456</wwpn>
        <fabric_wwn>2000000043214321</fabric_wwn></capability></capability></device>
</node>
"""
DEVICES = ["computer", "net_eth1_aa_bb_cc_dd_ee_ff", "pci_0000_00_03_0", "scsi_host1",
           "scsi_host11"]


def vhba_xml(parent: str = "scsi_host1", wwn: str = "12345678") -> str:
    return (f"<device><parent>{parent}</parent><capability type='scsi_host'>"
            f"<capability type='fc_host'><wwnn>20000000{wwn}</wwnn><wwpn>10000000{wwn}</wwpn>"
            "</capability></capability></device>")


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Stub]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    with running_service(tmp_path, f"test://{node}", spec=SPEC, grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield Stub(channel)


def names(stub: Stub, **filters: object) -> list[str]:
    request = pb.ListNodeDevicesRequest(**filters)  # type: ignore[arg-type]
    return [d.name for d in stub.ListNodeDevices(request).node_devices]


def test_list_filters_and_tree(stub: Stub) -> None:
    assert names(stub) == DEVICES
    assert names(stub, capabilities=[pb.NODE_DEVICE_CAPABILITY_PCI]) == ["pci_0000_00_03_0"]
    assert names(stub, capabilities=[pb.NODE_DEVICE_CAPABILITY_PCI,
                                     pb.NODE_DEVICE_CAPABILITY_NET]) == DEVICES[1:3]
    assert names(stub, capabilities=[pb.NODE_DEVICE_CAPABILITY_VPORTS]) == ["scsi_host1"]
    assert names(stub, capabilities=[pb.NODE_DEVICE_CAPABILITY_USB_DEVICE]) == []
    assert names(stub, parent="computer") == ["pci_0000_00_03_0", "scsi_host1"]
    assert names(stub, parent="pci_0000_00_03_0") == ["net_eth1_aa_bb_cc_dd_ee_ff"]
    assert names(stub, parent="net_eth1_aa_bb_cc_dd_ee_ff") == []
    error = error_of(stub.ListNodeDevices, pb.ListNodeDevicesRequest(parent="nope"))
    assert (error.code(), reason_of(error)) == (C.NOT_FOUND, "VIR_ERR_NO_NODE_DEVICE")
    error = error_of(stub.ListNodeDevices, pb.ListNodeDevicesRequest(
        capabilities=[pb.NodeDeviceCapability.ValueType(99)]))
    assert error.code() == C.INVALID_ARGUMENT and "capability 99" in str(error.details())
    # the test driver has no notion of inactive devices
    error = error_of(stub.ListNodeDevices, pb.ListNodeDevicesRequest(active=True))
    assert error.code() == C.UNIMPLEMENTED


def test_get_and_xml(stub: Stub) -> None:
    pci = stub.GetNodeDevice(pb.GetNodeDeviceRequest(name="pci_0000_00_03_0")).node_device
    assert (pci.name, pci.parent, list(pci.capabilities), pci.path) == (
        "pci_0000_00_03_0", "computer", ["pci"], "/sys/devices/pci0000:00/0000:00:03.0")
    # the test driver cannot tell: unset rather than a guess
    assert not pci.HasField("active") and not pci.HasField("persistent")
    computer = stub.GetNodeDevice(pb.GetNodeDeviceRequest(name="computer")).node_device
    assert (computer.parent, list(computer.capabilities)) == ("", ["system"])
    reply = stub.GetNodeDeviceXML(pb.GetNodeDeviceXMLRequest(name="scsi_host1"))
    assert reply.name == "scsi_host1"
    assert ET.fromstring(reply.xml).findtext("name") == "scsi_host1"


def test_pagination(stub: Stub) -> None:
    pages, token = [], ""
    while True:
        reply = stub.ListNodeDevices(pb.ListNodeDevicesRequest(page_size=2, page_token=token))
        pages.append([d.name for d in reply.node_devices])
        token = reply.next_page_token
        if not token:
            break
    assert pages == [DEVICES[0:2], DEVICES[2:4], DEVICES[4:]]
    first = stub.ListNodeDevices(pb.ListNodeDevicesRequest(page_size=2))
    error = error_of(stub.ListNodeDevices, pb.ListNodeDevicesRequest(
        page_size=2, page_token=first.next_page_token, parent="computer"))
    assert error.code() == C.INVALID_ARGUMENT and "other filters" in str(error.details())
    error = error_of(stub.ListNodeDevices, pb.ListNodeDevicesRequest(page_size=-1))
    assert error.code() == C.INVALID_ARGUMENT


def test_create_destroy_vhba_with_events(stub: Stub) -> None:
    events = stub.WatchNodeDeviceEvents(pb.WatchNodeDeviceEventsRequest(), timeout=30)
    events.initial_metadata()  # subscribed
    created = stub.CreateNodeDevice(pb.CreateNodeDeviceRequest(xml=vhba_xml())).node_device
    assert created.name not in DEVICES and created.parent == "scsi_host1"
    assert created.capabilities == ["scsi_host"]
    assert names(stub, parent="scsi_host1") == sorted(["scsi_host11", created.name])
    stub.DestroyNodeDevice(pb.DestroyNodeDeviceRequest(name=created.name))
    assert names(stub) == DEVICES
    seen = [(e.name, e.lifecycle.type) for e in (next(events), next(events))]
    events.cancel()
    assert seen == [(created.name, pb.NODE_DEVICE_LIFECYCLE_EVENT_TYPE_CREATED),
                    (created.name, pb.NODE_DEVICE_LIFECYCLE_EVENT_TYPE_DELETED)]
    error = error_of(stub.DestroyNodeDevice, pb.DestroyNodeDeviceRequest(name=created.name))
    assert error.code() == C.NOT_FOUND


def test_watch_filters_by_name(stub: Stub) -> None:
    events = stub.WatchNodeDeviceEvents(
        pb.WatchNodeDeviceEventsRequest(names=["no-such-device"]), timeout=30)
    events.initial_metadata()
    other = stub.WatchNodeDeviceEvents(pb.WatchNodeDeviceEventsRequest(), timeout=30)
    other.initial_metadata()
    created = stub.CreateNodeDevice(pb.CreateNodeDeviceRequest(xml=vhba_xml())).node_device
    stub.DestroyNodeDevice(pb.DestroyNodeDeviceRequest(name=created.name))
    # once the unfiltered watcher has both events, the filtered one would have them too
    assert [next(other).name, next(other).name] == [created.name] * 2
    other.cancel()
    events.cancel()
    assert list(_drain(events)) == []


def _drain(call: grpc.Call) -> Iterator[object]:
    try:
        yield from call  # type: ignore[misc]
    except grpc.RpcError as error:
        assert error.code() == C.CANCELLED  # type: ignore[attr-defined]


def test_bad_input_gets_precise_status_and_leaves_nothing(stub: Stub) -> None:
    for xml, code in (("<device><parent>", C.INVALID_ARGUMENT),
                      ("", C.INVALID_ARGUMENT),
                      (vhba_xml(parent="nope"), C.NOT_FOUND),
                      (vhba_xml(parent="computer"), C.INVALID_ARGUMENT)):
        error = error_of(stub.CreateNodeDevice, pb.CreateNodeDeviceRequest(xml=xml))
        assert error.code() == code, (xml, error.details())
    error = error_of(stub.CreateNodeDevice, pb.CreateNodeDeviceRequest(xml="<device"))
    assert reason_of(error) in XML_REFUSED
    assert names(stub) == DEVICES  # nothing half-created

    error = error_of(stub.GetNodeDevice, pb.GetNodeDeviceRequest(name="nope"))
    assert (error.code(), reason_of(error)) == (C.NOT_FOUND, "VIR_ERR_NO_NODE_DEVICE")
    error = error_of(stub.GetNodeDeviceXML, pb.GetNodeDeviceXMLRequest())
    assert error.code() == C.INVALID_ARGUMENT and "name" in str(error.details())
    # the test driver has no persistent devices
    error = error_of(stub.DefineNodeDevice, pb.DefineNodeDeviceRequest(xml=vhba_xml()))
    assert error.code() == C.UNIMPLEMENTED
    error = error_of(stub.StartNodeDevice, pb.StartNodeDeviceRequest(name="scsi_host1"))
    assert error.code() == C.UNIMPLEMENTED
    assert names(stub) == DEVICES


def test_pci_operations_check_the_device(stub: Stub) -> None:
    for call, request in ((stub.DetachNodeDevice, pb.DetachNodeDeviceRequest),
                          (stub.ReattachNodeDevice, pb.ReattachNodeDeviceRequest),
                          (stub.ResetNodeDevice, pb.ResetNodeDeviceRequest)):
        error = error_of(call, request(name="nope"))
        assert error.code() == C.NOT_FOUND
        error = error_of(call, request(name="scsi_host1"))
        assert (error.code(), reason_of(error)) == (C.INVALID_ARGUMENT, "NOT_A_PCI_DEVICE")
        assert "not a PCI device" in str(error.details())
        # a PCI device, but the test driver cannot detach anything
        error = error_of(call, request(name="pci_0000_00_03_0"))
        assert (error.code(), reason_of(error)) == (C.UNIMPLEMENTED, "VIR_ERR_NO_SUPPORT")


# -- the host's libvirtd ---------------------------------------------------------

@pytest.fixture
def host(tmp_path: Path, host_libvirtd: None) -> Iterator[Stub]:
    with running_service(tmp_path, "nodedev:///system", spec=SPEC,
                         grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield Stub(channel)


def all_devices(stub: Stub, **filters: object) -> list[pb.NodeDevice]:
    request = pb.ListNodeDevicesRequest(page_size=5, **filters)  # type: ignore[arg-type]
    devices: list[pb.NodeDevice] = []
    while True:
        reply = stub.ListNodeDevices(request)
        devices.extend(reply.node_devices)
        if not reply.next_page_token:
            return devices
        request.page_token = reply.next_page_token


def unless_gone(call: Callable[[str], T], name: str) -> T | None:
    """``call(name)``, or None when its device went away meanwhile: the host is shared, and
    other tests' networks add and remove bridge and tap devices at any time."""
    try:
        return call(name)
    except grpc.RpcError as error:
        assert error.code() == C.NOT_FOUND  # type: ignore[attr-defined]
        return None


def test_host_devices_tree_and_xml(host: Stub) -> None:
    devices = {d.name: d for d in all_devices(host)}
    assert "computer" in devices and devices["computer"].parent == ""
    assert devices["computer"].capabilities == ["system"]
    assert all(d.HasField("active") and d.HasField("persistent") for d in devices.values())
    def xml_of(name: str) -> str:
        return host.GetNodeDeviceXML(pb.GetNodeDeviceXMLRequest(name=name)).xml

    def children_of(name: str) -> set[str]:
        return {d.name for d in all_devices(host, parent=name)}

    xmls = {name: unless_gone(xml_of, name) for name in devices}
    children = {name: unless_gone(children_of, name) for name in devices}
    # the devices that were there all along
    stable = {d.name for d in all_devices(host)} & {n for n in devices if xmls[n]
                                                     and children[n] is not None}
    assert "computer" in stable and any(devices[n].driver for n in stable)
    for name in stable:
        root = ET.fromstring(xmls[name] or "")
        device = devices[name]
        assert root.findtext("name") == name
        assert (root.findtext("parent") or "") == device.parent
        assert (root.findtext("driver/name") or "") == device.driver
        assert (root.findtext("path") or "") == device.path
        assert {c.get("type") for c in root.findall("capability")} <= set(device.capabilities)
    # every device but the root is among its parent's children, and only there
    for name in stable - {"computer"}:
        assert [p for p, kids in children.items() if kids and name in kids] == [
            devices[name].parent]
    assert "computer" not in set().union(*(kids or set() for kids in children.values()))


def test_host_filters(host: Stub) -> None:
    devices = all_devices(host)
    for capability in (pb.NODE_DEVICE_CAPABILITY_PCI, pb.NODE_DEVICE_CAPABILITY_NET,
                       pb.NODE_DEVICE_CAPABILITY_SYSTEM, pb.NODE_DEVICE_CAPABILITY_STORAGE):
        label = pb.NodeDeviceCapability.Name(capability).removeprefix(
            "NODE_DEVICE_CAPABILITY_").lower()
        filtered = {d.name for d in all_devices(host, capabilities=[capability])}
        after = {d.name for d in all_devices(host)}
        expected = {d.name for d in devices if label in d.capabilities}
        assert filtered & after == expected & after, label  # of the devices still there
    assert "computer" in [d.name for d in all_devices(host, capabilities=[
        pb.NODE_DEVICE_CAPABILITY_SYSTEM])]
    active = {d.name for d in all_devices(host, active=True)}
    inactive = {d.name for d in all_devices(host, active=False)}
    after = {d.name for d in all_devices(host)}
    assert active & after == {d.name for d in devices if d.active} & after
    assert inactive & after == {d.name for d in devices if not d.active} & after
    assert "computer" in active and not active & inactive


def test_host_bad_input_and_read_only_devices(host: Stub) -> None:
    # Only vHBAs and mdevs can be created; other engineers' networks come and go.
    creatable = [pb.NODE_DEVICE_CAPABILITY_SCSI_HOST, pb.NODE_DEVICE_CAPABILITY_MDEV]
    before = [d.name for d in all_devices(host, capabilities=creatable)]
    pci = next(d.name for d in all_devices(host, capabilities=[pb.NODE_DEVICE_CAPABILITY_PCI]))
    cases = [
        (host.CreateNodeDevice, pb.CreateNodeDeviceRequest(xml="<device><parent>"),
         C.INVALID_ARGUMENT),
        (host.DefineNodeDevice, pb.DefineNodeDeviceRequest(xml="<device"), C.INVALID_ARGUMENT),
        (host.CreateNodeDevice, pb.CreateNodeDeviceRequest(
            xml="<device><capability type='bogus'/></device>"), C.INVALID_ARGUMENT),
        (host.CreateNodeDevice, pb.CreateNodeDeviceRequest(
            xml=vhba_xml(parent="vmtest-no-such-parent")), C.NOT_FOUND),
        (host.CreateNodeDevice, pb.CreateNodeDeviceRequest(xml=vhba_xml(parent="computer")),
         C.INVALID_ARGUMENT),
        (host.GetNodeDevice, pb.GetNodeDeviceRequest(name="vmtest-nope"), C.NOT_FOUND),
        (host.DestroyNodeDevice, pb.DestroyNodeDeviceRequest(name="vmtest-nope"), C.NOT_FOUND),
        # devices the host found by itself cannot be destroyed, undefined or started again
        (host.DestroyNodeDevice, pb.DestroyNodeDeviceRequest(name=pci), C.UNIMPLEMENTED),
        (host.UndefineNodeDevice, pb.UndefineNodeDeviceRequest(name=pci),
         C.FAILED_PRECONDITION),
        (host.StartNodeDevice, pb.StartNodeDeviceRequest(name="computer"),
         C.FAILED_PRECONDITION),
        (host.SetNodeDeviceAutostart, pb.SetNodeDeviceAutostartRequest(name=pci, autostart=True),
         C.UNIMPLEMENTED),
    ]
    for call, request, code in cases:
        error = error_of(call, request)
        assert error.code() == code, (request, error.details())
    assert [d.name for d in all_devices(host, capabilities=creatable)] == before


def test_host_pci_operations_never_reach_a_device(host: Stub) -> None:
    """nodedev:///system has no hypervisor driver: libvirt refuses to detach, reattach
    or reset before touching anything, so this is safe on any host."""
    pcis = [d.name for d in all_devices(host, capabilities=[pb.NODE_DEVICE_CAPABILITY_PCI])]
    for call, request in ((host.DetachNodeDevice, pb.DetachNodeDeviceRequest),
                          (host.ReattachNodeDevice, pb.ReattachNodeDeviceRequest),
                          (host.ResetNodeDevice, pb.ResetNodeDeviceRequest)):
        assert error_of(call, request(name="vmtest-nope")).code() == C.NOT_FOUND
        error = error_of(call, request(name="computer"))
        assert (error.code(), reason_of(error)) == (C.INVALID_ARGUMENT, "NOT_A_PCI_DEVICE")
        if pcis:
            error = error_of(call, request(name=pcis[0]))
            assert (error.code(), reason_of(error)) == (C.UNIMPLEMENTED, "VIR_ERR_NO_SUPPORT")


def test_host_watch_subscribes(host: Stub) -> None:
    events = host.WatchNodeDeviceEvents(pb.WatchNodeDeviceEventsRequest(), timeout=30)
    events.initial_metadata()  # registered with the host's libvirtd and subscribed
    events.cancel()
    assert list(_drain(events)) == []



#: the test driver's FC HBA scsi_host1 has this pair; no host here has an FC HBA
WWNN, WWPN = "2000000012341234", "1000000012341234"


def test_scsi_host_lookup_on_the_test_driver(stub: Stub) -> None:
    """The test driver cannot look SCSI hosts up; bad names are refused before."""
    error = error_of(stub.LookupSCSIHostByWWN, pb.LookupSCSIHostByWWNRequest(
        wwnn=WWNN, wwpn=WWPN))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    for wwnn, wwpn in (("", WWPN), (WWNN, "12345"), ("0x" + WWNN, "zz" * 8)):
        error = error_of(stub.LookupSCSIHostByWWN, pb.LookupSCSIHostByWWNRequest(
            wwnn=wwnn, wwpn=wwpn))
        assert (error.code(), reason_of(error)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                    "INVALID_WWN"), (wwnn, wwpn)


def test_host_scsi_host_lookup_finds_none(host: Stub) -> None:
    """libvirt's node device driver fails without an error when no SCSI host has the
    pair; the service says NOT_FOUND. (This host has no FC HBA to find.)"""
    for wwnn in (WWNN, "0x" + WWNN):
        error = error_of(host.LookupSCSIHostByWWN, pb.LookupSCSIHostByWWNRequest(
            wwnn=wwnn, wwpn=WWPN))
        assert (error.code(), reason_of(error)) == (grpc.StatusCode.NOT_FOUND,
                                                    "VIR_ERR_NO_NODE_DEVICE")
