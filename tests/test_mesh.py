"""The mesh as a whole: a guest started through compute runs on a volume made
through storage and a network made through network, all through the gateway.

The guest proves it: its console shows the bytes we uploaded into the volume and
the DHCP lease it got on the network, and the network service lists that lease.
Compute is embedded QEMU (TCG); storage and network are the host's libvirtd.
"""

from __future__ import annotations

import contextlib
import ipaddress
import uuid
from pathlib import Path

import libvirt
import pytest

from guest import example
from tests.conftest import (
    services_and_gateway,
)
from tests.test_e2e_qemu import short_state_dir, wait_for
from tests.test_network_service import free_subnet, remove_network
from tests.test_storage_service import remove_host_pool
from virtmesh.compute.v1 import compute_service_pb2 as cpb
from virtmesh.network.v1 import network_service_pb2 as npb
from virtmesh.storage.v1 import storage_service_pb2 as spb
from virtmesh_client.client import Client, ClientError

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(300)]


def running(state: Path) -> contextlib.AbstractContextManager[str]:
    """compute, storage, network and the gateway as processes; yields the gateway."""
    return services_and_gateway(state, ("compute", "storage", "network"))


def guest_xml(name: str, state: Path, pool: str, network: str) -> str:
    """The example guest (TCG) plus a virtio disk from the pool and a NIC on the network."""
    devices = (f"<disk type='volume' device='disk'><source pool='{pool}' volume='disk.raw'/>"
               "<target dev='vda' bus='virtio'/></disk>"
               f"<interface type='network'><source network='{network}'/>"
               "<model type='virtio'/></interface>")
    return example.render(name, state, "qemu").replace("</devices>", devices + "</devices>")


def test_guest_runs_on_a_volume_and_a_network_from_their_services(host_libvirtd: None) -> None:
    tag = uuid.uuid4().hex[:6]
    pool, network, bridge, name = f"vmtest-{tag}", f"vmtest-{tag}", f"vmt-{tag}", f"mesh-{tag}"
    marker = f"virtmesh-mesh-{tag}".encode()
    subnet = ipaddress.IPv4Network(free_subnet())
    gateway_ip, first, last = subnet[1], subnet[10], subnet[20]
    with short_state_dir() as state, running(state) as target, \
            Client(target, state_dir=state, timeout=60) as client:
        try:
            client.call("DefineStoragePool", spb.DefineStoragePoolRequest(xml=(
                f"<pool type='dir'><name>{pool}</name>"
                f"<target><path>{state / 'pool'}</path></target></pool>")))
            client.call("StartStoragePool", spb.StartStoragePoolRequest(name=pool, build=True))
            client.call("CreateStorageVolume", spb.CreateStorageVolumeRequest(pool=pool, xml=(
                "<volume><name>disk.raw</name><capacity unit='MiB'>8</capacity>"
                "<target><format type='raw'/></target></volume>")))
            client.upload("UploadStorageVolume", iter([
                spb.UploadStorageVolumeRequest(pool=pool, name="disk.raw"),
                spb.UploadStorageVolumeRequest(data=marker)]), spb.UploadStorageVolumeRequest)

            client.call("DefineNetwork", npb.DefineNetworkRequest(xml=(
                f"<network><name>{network}</name><bridge name='{bridge}'/>"
                f"<ip address='{gateway_ip}' netmask='{subnet.netmask}'>"
                f"<dhcp><range start='{first}' end='{last}'/></dhcp></ip></network>")))
            client.call("StartNetwork", npb.StartNetworkRequest(name=network))

            created = client.call("CreateDomain", cpb.CreateDomainRequest(
                xml=guest_xml(name, state, pool, network)))
            assert created.domain.state == cpb.DOMAIN_STATE_RUNNING
            console = state / "guest" / f"{name}.console.log"

            def says(text: str) -> bool:
                return console.exists() and text in console.read_text(errors="replace")

            wait_for(lambda: says(f"disk vda begins '{marker.decode()}"), 120,
                     "the guest to read the uploaded marker from its disk")
            wait_for(lambda: says("eth0 got ") or says("eth0 got no DHCP lease"), 120,
                     "the guest's DHCP attempt")
            assert says("eth0 got "), console.read_text(errors="replace")
            domain_xml = client.call("GetDomainXML", cpb.GetDomainXMLRequest(name=name)).xml
            leases = client.call("ListDHCPLeases", npb.ListDHCPLeasesRequest(name=network))
            assert [lease.mac for lease in leases.leases if lease.mac in domain_xml]
            assert all(ipaddress.IPv4Address(lease.ip_address) in subnet
                       for lease in leases.leases)
        finally:
            with contextlib.suppress(ClientError):
                client.call("DestroyDomain", cpb.DestroyDomainRequest(name=name))
            remove_network(libvirt.open("network:///system"), network)
            remove_host_pool(pool)
