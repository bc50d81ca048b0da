"""Network commands: virsh's net-* and net-port-* against the network service.

Ports are named ``NETWORK PORT-UUID``. net-update takes the element as XML text
(anything starting with ``<``) or as a file name, as virsh does.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from virtmesh.network.v1 import network_service_pb2 as pb
from virtmesh_client.cli_commands import (
    VALIDATE,
    XML_FILE,
    Argument,
    CommandFactory,
    Commands,
    Kind,
    add_flags,
    either,
    enum_choices,
)
from virtmesh_client.cli_edit import add_edit
from virtmesh_client.cli_fleet import Query, UsageError
from virtmesh_client.cli_output import (
    Output,
    enum_name,
    event_line,
    fields,
    read_input,
    table,
    yes,
)
from virtmesh_client.client import Client

#: virsh's net-update command names; "add" is add-last
UPDATE_COMMANDS = enum_choices(pb.UpdateCommand, "UPDATE_COMMAND_", "-")
UPDATE_COMMANDS["add"] = pb.UPDATE_COMMAND_ADD_LAST
#: virsh's net-update section names: ip-dhcp-host, dns-host, portgroup, ...
SECTIONS = enum_choices(pb.NetworkSection, "NETWORK_SECTION_", "-")
_NETWORK = Argument("network", "NETWORK", "network name or UUID")
NETWORK = Kind("Network '{}'", (_NETWORK,), response_field="network", plural="networks")
#: a port is named by its network and its UUID
PORT = Kind("Network port {}", (_NETWORK, Argument("port", "PORT", "port UUID",
                                                   field="port")))


def _list(client: Client, args: argparse.Namespace) -> Any:
    request = pb.ListNetworksRequest(active=either(args, "active", "inactive"),
                                     persistent=either(args, "persistent", "transient"),
                                     autostart=either(args, "autostart", "no_autostart"))
    return pb.ListNetworksResponse(networks=client.all_pages("ListNetworks", request,
                                                             "networks"))


cmd_net_list = Query(_list, ("NAME", "ACTIVE", "AUTOSTART", "PERSISTENT", "BRIDGE"),
                     lambda n: (n.name, yes(n.active), yes(n.autostart),
                                yes(n.persistent), n.bridge or "-"),
                     "networks")

cmd_net_info = Query(
    lambda client, args: client.call("GetNetwork",
                                     pb.GetNetworkRequest(name=args.network)).network,
    ("Name", "UUID", "Active", "Persistent", "Autostart", "Bridge"),
    lambda n: (n.name, n.uuid, yes(n.active), yes(n.persistent), yes(n.autostart),
               n.bridge or "-"))


def _element(text: str) -> str:
    """net-update's XML argument: the element itself, or a file holding it."""
    if text.lstrip().startswith("<"):
        return text
    try:
        with open(text) as file:
            return file.read()
    except OSError as error:
        raise UsageError(f"net-update: cannot read XML file {text}: {error.strerror}") from None


def cmd_net_update(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.current and (args.live or args.config):
        raise UsageError("net-update: --current excludes --live and --config")
    request = pb.UpdateNetworkRequest(
        name=args.network, command=UPDATE_COMMANDS[args.update_command],
        section=SECTIONS[args.section], xml=_element(args.xml), live=args.live,
        config=args.config)
    if args.parent_index is not None:
        request.parent_index = args.parent_index
    response = client.call("UpdateNetwork", request)
    scope = (" live state and persistent config" if args.live and args.config else
             " live state" if args.live else " persistent config" if args.config else "")
    out.show(response, f"Network '{args.network}'{scope} updated ({args.update_command} "
                       f"{args.section})")


def _lease_row(lease: Any) -> Sequence[object]:
    family = "ipv6" if lease.type == pb.IP_ADDRESS_TYPE_IPV6 else "ipv4"
    return (lease.expiry_time.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds"),
            lease.mac or "-", family, f"{lease.ip_address}/{lease.prefix}",
            lease.hostname or "-", lease.client_id or "-")


def cmd_net_dhcp_leases(client: Client, args: argparse.Namespace, out: Output) -> None:
    request = pb.ListDHCPLeasesRequest(name=args.network, mac=args.mac or "")
    leases = client.all_pages("ListDHCPLeases", request, "leases")
    out.show(pb.ListDHCPLeasesResponse(name=args.network, leases=leases), table(
        ("EXPIRY_TIME", "MAC", "TYPE", "IP_ADDRESS", "HOSTNAME", "CLIENT_ID"),
        map(_lease_row, leases)))


def _port_fields(p: Any) -> str:
    return fields((("UUID", p.uuid), ("Network", p.network),
                   ("Owner", f"{p.owner_name} ({p.owner_uuid})"), ("MAC", p.mac),
                   ("Port group", p.port_group or "-"), ("Plug type", p.plug_type or "-"),
                   ("Plugged into", p.plug_device or "-")))


def cmd_net_port_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    ports = client.all_pages("ListNetworkPorts", pb.ListNetworkPortsRequest(
        name=args.network), "ports")
    out.show(pb.ListNetworkPortsResponse(name=args.network, ports=ports), table(
        ("UUID", "OWNER_NAME", "MAC", "PLUG"),
        ((p.uuid, p.owner_name, p.mac, p.plug_device or p.plug_type or "-") for p in ports)))


def cmd_net_port_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateNetworkPort", pb.CreateNetworkPortRequest(
        name=args.network, xml=read_input(args.file), validate=args.validate, reclaim=args.reclaim))
    out.show(response, f"Network port {response.port.uuid} created on '{args.network}'")


def cmd_net_port_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    port = client.call("GetNetworkPort", pb.GetNetworkPortRequest(
        name=args.network, port=args.port)).port
    out.show(port, _port_fields(port))


def cmd_net_port_delete(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DeleteNetworkPort", pb.DeleteNetworkPortRequest(
        name=args.network, port=args.port))
    out.show(response, f"Network port {args.port} deleted from '{args.network}'")


def _event_text(event: pb.WatchNetworkEventsResponse) -> str:
    return event_line(event, enum_name(pb.NetworkEventType, event.type, "NETWORK_EVENT_TYPE_"))


def register(command: CommandFactory) -> None:
    networks, ports = Commands(command, NETWORK), Commands(command, PORT)
    sub = command("net-list", cmd_net_list, "list networks")
    add_flags(sub, ("--active", "only active networks"),
              ("--inactive", "only inactive networks"),
              ("--persistent", "only persistent networks"),
              ("--transient", "only transient networks"),
              ("--autostart", "only networks marked autostart"),
              ("--no-autostart", "only networks not marked autostart"),
              ("--all", "all networks (the default)"))
    networks.add("net-info", cmd_net_info, "show a network's summary")
    networks.dumpxml("net-dumpxml", "GetNetworkXML", pb.GetNetworkXMLRequest,
                     "print a network's XML", ("--inactive", "the persistent config"))
    networks.from_xml("net-define", "DefineNetwork", pb.DefineNetworkRequest, "defined",
                      "define a persistent network from XML",
                      "network XML file, or - for stdin", VALIDATE, uuid=True)
    add_edit(networks, "net-edit", ("GetNetworkXML", pb.GetNetworkXMLRequest),
             ("DefineNetwork", pb.DefineNetworkRequest),
             "edit a network's persistent XML in $EDITOR", inactive=True)
    networks.from_xml("net-create", "CreateNetwork", pb.CreateNetworkRequest, "created",
                      "create and start a transient network from XML",
                      "network XML file, or - for stdin", VALIDATE, uuid=True)
    networks.simple("net-start", "StartNetwork", pb.StartNetworkRequest, "started",
                    "start a defined network")
    networks.simple("net-destroy", "StopNetwork", pb.StopNetworkRequest, "destroyed",
                    "stop an active network")
    networks.simple("net-undefine", "UndefineNetwork", pb.UndefineNetworkRequest, "undefined",
                    "remove a network's definition")
    networks.autostart("net-autostart", "SetNetworkAutostart", pb.SetNetworkAutostartRequest,
                       "start a network with the network driver")
    sub = networks.add("net-update", cmd_net_update,
                       "add, modify or delete one element of a network's definition")
    sub.add_argument("update_command", metavar="COMMAND", choices=sorted(UPDATE_COMMANDS),
                     help=f"one of {', '.join(sorted(UPDATE_COMMANDS))}")
    sub.add_argument("section", metavar="SECTION", choices=sorted(SECTIONS),
                     help=f"one of {', '.join(sorted(SECTIONS))}")
    sub.add_argument("xml", metavar="XML", help="the element's XML, or a file holding it")
    sub.add_argument("--parent-index", type=int, metavar="N",
                     help="which <ip> element a DHCP host or range belongs to (from 0)")
    sub.add_argument("--live", action="store_true", help="change the running network")
    sub.add_argument("--config", action="store_true", help="change the persistent config")
    sub.add_argument("--current", action="store_true",
                     help="the running network if active, else its config (the default)")
    sub = networks.add("net-dhcp-leases", cmd_net_dhcp_leases,
                       "list the DHCP leases of a network")
    sub.add_argument("--mac", metavar="MAC", help="only this MAC address's leases")

    networks.add("net-port-list", cmd_net_port_list, "list a network's ports")
    sub = networks.add("net-port-create", cmd_net_port_create, "create a network port from XML")
    sub.add_argument("file", type=XML_FILE, help="<networkport> XML file, or - for stdin")
    add_flags(sub, VALIDATE, ("--reclaim", "take over an existing plug"))
    ports.add("net-port-info", cmd_net_port_info, "show a network port's summary")
    ports.dumpxml("net-port-dumpxml", "GetNetworkPortXML", pb.GetNetworkPortXMLRequest,
                  "print a network port's XML")
    ports.add("net-port-delete", cmd_net_port_delete, "delete a network port")
    networks.events("net-event", "WatchNetworkEvents", pb.WatchNetworkEventsRequest, "network",
                    _event_text, "print network lifecycle events as they happen")
