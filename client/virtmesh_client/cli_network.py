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
from virtmesh_client.cli_commands import CommandFactory, follow, watch
from virtmesh_client.cli_fleet import Query, UsageError
from virtmesh_client.cli_output import Output, fields, read_input, table, yes
from virtmesh_client.client import Client

#: virsh's net-update command names; "add" is add-last
UPDATE_COMMANDS = {name.removeprefix("UPDATE_COMMAND_").lower().replace("_", "-"): value
                   for name, value in pb.UpdateCommand.items() if value}
UPDATE_COMMANDS["add"] = pb.UPDATE_COMMAND_ADD_LAST
#: virsh's net-update section names: ip-dhcp-host, dns-host, portgroup, ...
SECTIONS = {name.removeprefix("NETWORK_SECTION_").lower().replace("_", "-"): value
            for name, value in pb.NetworkSection.items() if value}


def _either(args: argparse.Namespace, yes: str, no: str) -> bool | None:
    return True if getattr(args, yes) else False if getattr(args, no) else None


def _list(client: Client, args: argparse.Namespace) -> Any:
    request = pb.ListNetworksRequest(active=_either(args, "active", "inactive"),
                                     persistent=_either(args, "persistent", "transient"),
                                     autostart=_either(args, "autostart", "no_autostart"))
    return pb.ListNetworksResponse(networks=client.all_pages("ListNetworks", request,
                                                             "networks"))


cmd_net_list = Query(_list, ("NAME", "STATE", "AUTOSTART", "PERSISTENT", "BRIDGE"),
                     lambda n: (n.name, "active" if n.active else "inactive", yes(n.autostart),
                                yes(n.persistent), n.bridge or "-"),
                     "networks")

cmd_net_info = Query(
    lambda client, args: client.call("GetNetwork",
                                     pb.GetNetworkRequest(name=args.network)).network,
    ("Name", "UUID", "Active", "Persistent", "Autostart", "Bridge"),
    lambda n: (n.name, n.uuid, yes(n.active), yes(n.persistent), yes(n.autostart),
               n.bridge or "-"))


def cmd_net_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetNetworkXML", pb.GetNetworkXMLRequest(
        name=args.network, inactive=args.inactive))
    out.show(response, response.xml.rstrip("\n"))


def cmd_net_define(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DefineNetwork", pb.DefineNetworkRequest(
        xml=read_input(args.file), validate=args.validate))
    out.show(response, f"Network '{response.network.name}' defined ({response.network.uuid})")


def cmd_net_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateNetwork", pb.CreateNetworkRequest(
        xml=read_input(args.file), validate=args.validate))
    out.show(response, f"Network '{response.network.name}' created ({response.network.uuid})")


def _network_command(method: str, request: type, done: str) -> Any:
    """A command that sends just the network name and reports success."""
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        out.show(client.call(method, request(name=args.network)),
                 f"Network '{args.network}' {done}")
    return handler


def cmd_net_autostart(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetNetworkAutostart", pb.SetNetworkAutostartRequest(
        name=args.network, autostart=not args.disable))
    done = "unmarked as autostarted" if args.disable else "marked as autostarted"
    out.show(response, f"Network '{args.network}' {done}")


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
        ("EXPIRY TIME", "MAC ADDRESS", "PROTOCOL", "IP ADDRESS", "HOSTNAME", "CLIENT ID"),
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
        ("UUID", "OWNER", "MAC", "PLUG"),
        ((p.uuid, p.owner_name, p.mac, p.plug_device or p.plug_type or "-") for p in ports)))


def cmd_net_port_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateNetworkPort", pb.CreateNetworkPortRequest(
        name=args.network, xml=read_input(args.file), validate=args.validate, reclaim=args.reclaim))
    out.show(response, f"Network port {response.port.uuid} created on '{args.network}'")


def cmd_net_port_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    port = client.call("GetNetworkPort", pb.GetNetworkPortRequest(
        name=args.network, port=args.port)).port
    out.show(port, _port_fields(port))


def cmd_net_port_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetNetworkPortXML", pb.GetNetworkPortXMLRequest(
        name=args.network, port=args.port))
    out.show(response, response.xml.rstrip("\n"))


def cmd_net_port_delete(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DeleteNetworkPort", pb.DeleteNetworkPortRequest(
        name=args.network, port=args.port))
    out.show(response, f"Network port {args.port} deleted from '{args.network}'")


def _event_text(event: pb.WatchNetworkEventsResponse) -> str:
    kind = (pb.NetworkEventType.Name(event.type).removeprefix("NETWORK_EVENT_TYPE_").lower()
            if event.type in pb.NetworkEventType.values() else "?")
    when = event.time.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds")
    return f"{when}  {event.name}  {kind}"


def cmd_net_event(client: Client, args: argparse.Namespace, out: Output) -> None:
    follow(watch(client, "WatchNetworkEvents", pb.WatchNetworkEventsRequest(
        names=args.networks)), "network", _event_text, out, args.count)


def register(command: CommandFactory) -> None:
    xml_in = argparse.FileType("r")

    def network_command(name: str, handler: Any, summary: str) -> argparse.ArgumentParser:
        sub = command(name, handler, summary)
        sub.add_argument("network", metavar="NETWORK", help="network name or UUID")
        return sub

    def port_command(name: str, handler: Any, summary: str) -> argparse.ArgumentParser:
        sub = network_command(name, handler, summary)
        sub.add_argument("port", metavar="PORT", help="port UUID")
        return sub

    sub = command("net-list", cmd_net_list, "list networks")
    for flag, help_text in (("--active", "only active networks"),
                            ("--inactive", "only inactive networks"),
                            ("--persistent", "only persistent networks"),
                            ("--transient", "only transient networks"),
                            ("--autostart", "only networks marked autostart"),
                            ("--no-autostart", "only networks not marked autostart")):
        sub.add_argument(flag, action="store_true", help=help_text)
    sub.add_argument("--all", action="store_true", help="all networks (the default)")
    network_command("net-info", cmd_net_info, "show a network's summary")
    sub = network_command("net-dumpxml", cmd_net_dumpxml, "print a network's XML")
    sub.add_argument("--inactive", action="store_true", help="the persistent config")
    for name, handler, summary in (
            ("net-define", cmd_net_define, "define a persistent network from XML"),
            ("net-create", cmd_net_create, "create and start a transient network from XML")):
        sub = command(name, handler, summary)
        sub.add_argument("file", type=xml_in, help="network XML file, or - for stdin")
        sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    network_command("net-start", _network_command(
        "StartNetwork", pb.StartNetworkRequest, "started"), "start a defined network")
    network_command("net-destroy", _network_command(
        "StopNetwork", pb.StopNetworkRequest, "destroyed"), "stop an active network")
    network_command("net-undefine", _network_command(
        "UndefineNetwork", pb.UndefineNetworkRequest, "undefined"),
        "remove a network's definition")
    sub = network_command("net-autostart", cmd_net_autostart,
                          "start a network with the network driver")
    sub.add_argument("--disable", action="store_true", help="do not autostart it")
    sub = network_command("net-update", cmd_net_update,
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
    sub = network_command("net-dhcp-leases", cmd_net_dhcp_leases,
                          "list the DHCP leases of a network")
    sub.add_argument("--mac", metavar="MAC", help="only this MAC address's leases")

    network_command("net-port-list", cmd_net_port_list, "list a network's ports")
    sub = network_command("net-port-create", cmd_net_port_create,
                          "create a network port from XML")
    sub.add_argument("file", type=xml_in, help="<networkport> XML file, or - for stdin")
    sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    sub.add_argument("--reclaim", action="store_true", help="take over an existing plug")
    port_command("net-port-info", cmd_net_port_info, "show a network port's summary")
    port_command("net-port-dumpxml", cmd_net_port_dumpxml, "print a network port's XML")
    port_command("net-port-delete", cmd_net_port_delete, "delete a network port")
    sub = command("net-event", cmd_net_event, "print network lifecycle events as they happen")
    sub.add_argument("networks", nargs="*", metavar="NETWORK", help="only these networks")
    sub.add_argument("--count", type=int, metavar="N", help="stop after N events")
