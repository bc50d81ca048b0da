"""The network service's libvirt calls: lookups by name or UUID, flags, ports."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import libvirt

from services.common import documents, event_callbacks
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

    def bridge_name(self, name: str) -> tuple[str, str]:
        """The network's name and its bridge's."""
        net = self.lookup(name)
        try:
            return net.name(), net.bridgeName()
        except libvirt.libvirtError as error:
            # libvirt says INTERNAL_ERROR for a network that plugs guests elsewhere
            if "does not have a bridge" not in (error.get_error_message() or ""):
                raise
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"network '{net.name()}' has no bridge of its own (its "
                               "forward mode plugs guests elsewhere)", "NO_BRIDGE") from None

    def register_events(self, conn: libvirt.virConnect, emit: Callable[..., None]) -> None:
        """Emit (network, "lifecycle", event, detail)."""
        event_callbacks.register(conn.networkEventRegisterAny, {
            libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE: "lifecycle"}, emit)

    def xml(self, name: str, inactive: bool) -> tuple[str, str]:
        """The network's name and its XML."""
        net = self.lookup(name)
        return net.name(), net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE if inactive else 0)

    def start(self, name: str) -> libvirt.virNetwork:
        net = self.lookup(name)
        net.create()
        return net

    def stop(self, name: str) -> None:
        self.lookup(name).destroy()

    def undefine(self, name: str) -> None:
        self.lookup(name).undefine()

    def set_autostart(self, name: str, autostart: bool) -> None:
        self.lookup(name).setAutostart(int(autostart))

    def update(self, name: str, command: int, section: int,
               parent_index: int | None, xml: str, live: bool, config: bool) -> None:
        """virNetworkUpdate with libvirt's command and section numbers; no parent index
        is libvirt's -1 (the first element that fits)."""
        net = self.lookup(name)
        if parent_index is not None and parent_index < 0:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"parent_index must not be negative (got {parent_index})",
                               "INVALID_PARENT_INDEX")
        flags = ((libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE if live else 0)
                 | (libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG if config else 0))
        documents.submit(lambda section_xml: net.update(
            command, section, -1 if parent_index is None else parent_index, section_xml,
            flags), xml, fragment=True)

    def leases(self, name: str, mac: str) -> tuple[str, str, list[dict[str, object]]]:
        """The network's name and UUID, and its DHCP leases (of ``mac`` if given)."""
        net = self.lookup(name)
        return net.name(), net.UUIDString(), net.DHCPLeases(mac or None, 0)

    def port(self, name: str, port: str) -> tuple[str, libvirt.virNetworkPort]:
        """The network's name, and its port by the port's UUID."""
        net = self.lookup(name)
        if not is_uuid(require(port, "port")):
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"port must be a UUID (got '{port}')", "INVALID_PORT")
        return net.name(), net.portLookupByUUIDString(port)

    def port_xml(self, name: str, port: str) -> tuple[str, str, str]:
        """The network's name, the port's UUID and its XML."""
        network_name, found = self.port(name, port)
        return network_name, found.UUIDString(), found.XMLDesc(0)

    def delete_port(self, name: str, port: str) -> None:
        self.port(name, port)[1].delete(0)

    def list_ports(self, name: str) -> tuple[str, str, list[libvirt.virNetworkPort]]:
        """The network's name and UUID, and its ports."""
        net = self.lookup(name)
        return net.name(), net.UUIDString(), net.listAllPorts(0)

    def create_port(self, name: str, xml: str,
                    reclaim: bool) -> tuple[str, libvirt.virNetworkPort]:
        """The network's name and the port created on it."""
        net = self.lookup(name)
        flags = (libvirt.VIR_NETWORK_PORT_CREATE_VALIDATE
                 | (libvirt.VIR_NETWORK_PORT_CREATE_RECLAIM if reclaim else 0))
        return net.name(), documents.submit(net.portCreateXML, xml, flags, root="networkport")

    def port_parameters(self, name: str, port: str) -> tuple[str, str, dict[str, int]]:
        """The network's name, the port's UUID and its parameters."""
        network_name, found = self.port(name, port)
        return network_name, found.UUIDString(), found.parameters(0)

    def set_port_parameters(self, name: str, port: str,
                            changes: dict[str, int]) -> tuple[str, str, dict[str, int]]:
        """Change some of the port's parameters, keeping its others; as port_parameters,
        afterwards.

        libvirt replaces a direction's limits with those given (an average left out is
        0, which removes the direction), so the others of a changed direction are sent
        again. libvirt-python types each parameter after the port's current ones and
        refuses one the port does not have with a LookupError: said here as what it
        means."""
        network_name, found = self.port(name, port)
        if not changes:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "set at least one bandwidth limit", "MISSING_FIELD")
        current = found.parameters(0)
        missing = sorted(set(changes) - set(current))
        if missing:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"port {port} has no {', '.join(missing)} to change: only the "
                               "directions of its <bandwidth> when it was created can be "
                               "changed", "NO_SUCH_PARAMETER")
        changed = {key.partition(".")[0] for key in changes}
        kept = {key: value for key, value in current.items()
                if value and key.partition(".")[0] in changed}
        found.setParameters({**kept, **changes}, 0)
        return network_name, found.UUIDString(), found.parameters(0)
