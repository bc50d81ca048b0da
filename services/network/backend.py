"""The network service's libvirt calls: lookups by name or UUID, flags, ports."""

from __future__ import annotations

import grpc
import libvirt

from services.common import documents
from services.common.backend import Backend, by_name_or_uuid, is_uuid, list_flags
from services.common.errors import ServiceError, require


class NetworkBackend(Backend):
    def lookup(self, name: str) -> libvirt.virNetwork:
        """A network by name or by UUID string."""
        conn = self.conn
        return by_name_or_uuid(name, conn.networkLookupByUUIDString, conn.networkLookupByName,
                               libvirt.VIR_ERR_NO_NETWORK)

    def list_networks(self, active: bool | None, persistent: bool | None,
                      autostart: bool | None) -> list[libvirt.virNetwork]:
        return self.conn.listAllNetworks(list_flags(
            (active, libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE,
             libvirt.VIR_CONNECT_LIST_NETWORKS_INACTIVE),
            (persistent, libvirt.VIR_CONNECT_LIST_NETWORKS_PERSISTENT,
             libvirt.VIR_CONNECT_LIST_NETWORKS_TRANSIENT),
            (autostart, libvirt.VIR_CONNECT_LIST_NETWORKS_AUTOSTART,
             libvirt.VIR_CONNECT_LIST_NETWORKS_NO_AUTOSTART)))

    def define(self, xml: str) -> libvirt.virNetwork:
        return documents.submit(self.conn.networkDefineXMLFlags, xml,
                                libvirt.VIR_NETWORK_DEFINE_VALIDATE, root="network")

    def create(self, xml: str) -> libvirt.virNetwork:
        return documents.submit(self.conn.networkCreateXMLFlags, xml,
                                libvirt.VIR_NETWORK_CREATE_VALIDATE, root="network")

    def update(self, net: libvirt.virNetwork, command: int, section: int,
               parent_index: int | None, xml: str, live: bool, config: bool) -> None:
        """virNetworkUpdate with libvirt's command and section numbers; no parent index
        is libvirt's -1 (the first element that fits)."""
        if parent_index is not None and parent_index < 0:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"parent_index must not be negative (got {parent_index})",
                               "INVALID_PARENT_INDEX")
        flags = ((libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE if live else 0)
                 | (libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG if config else 0))
        documents.submit(lambda section_xml: net.update(
            command, section, -1 if parent_index is None else parent_index, section_xml,
            flags), xml, fragment=True)

    def leases(self, net: libvirt.virNetwork, mac: str) -> list[dict[str, object]]:
        return net.DHCPLeases(mac or None, 0)

    def port(self, net: libvirt.virNetwork, port: str) -> libvirt.virNetworkPort:
        """A port of ``net`` by its UUID."""
        if not is_uuid(require(port, "port")):
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"port must be a UUID (got '{port}')", "INVALID_PORT")
        return net.portLookupByUUIDString(port)

    def create_port(self, net: libvirt.virNetwork, xml: str,
                    reclaim: bool) -> libvirt.virNetworkPort:
        flags = (libvirt.VIR_NETWORK_PORT_CREATE_VALIDATE
                 | (libvirt.VIR_NETWORK_PORT_CREATE_RECLAIM if reclaim else 0))
        return documents.submit(net.portCreateXML, xml, flags, root="networkport")
