"""Host interface commands (virsh's iface-*) for the iface service."""

from __future__ import annotations

import argparse
import re
from typing import Any

from virtmesh.iface.v1 import iface_service_pb2 as pb
from virtmesh_client.cli_commands import CommandFactory
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import Output, fields, read_input
from virtmesh_client.client import Client

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def _row(i: Any) -> tuple[object, ...]:
    return (i.name, "active" if i.active else "inactive", i.mac or "-", i.type or "-")


def _list(client: Client, args: argparse.Namespace) -> Any:
    active = True if args.active else False if args.inactive else None
    request = pb.ListInterfacesRequest(active=active)
    return pb.ListInterfacesResponse(
        interfaces=client.all_pages("ListInterfaces", request, "interfaces"))


cmd_list = Query(_list, ("NAME", "STATE", "MAC", "TYPE"), _row, "interfaces")


def cmd_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    """By name, or by MAC address when it looks like one (as virsh does)."""
    request = (pb.GetInterfaceRequest(mac=args.interface) if _MAC.fullmatch(args.interface)
               else pb.GetInterfaceRequest(name=args.interface))
    found = client.call("GetInterface", request).interface
    out.show(found, fields((("Name", found.name), ("MAC", found.mac or "-"),
                            ("Type", found.type or "-"),
                            ("State", "active" if found.active else "inactive"))))


def cmd_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetInterfaceXML", pb.GetInterfaceXMLRequest(
        name=args.interface, inactive=args.inactive))
    out.show(response, response.xml.rstrip("\n"))


def cmd_define(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DefineInterface", pb.DefineInterfaceRequest(
        xml=read_input(args.file), validate=args.validate))
    out.show(response, f"Interface '{response.interface.name}' defined")


def _simple(method: str, request: type, done: str) -> Any:
    """A command that sends just the interface name and reports success."""
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        out.show(client.call(method, request(name=args.interface)),
                 f"Interface '{args.interface}' {done}")
    return handler


def _transaction(method: str, request: type, done: str) -> Any:
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        out.show(client.call(method, request()), done)
    return handler


def register(command: CommandFactory) -> None:
    sub = command("iface-list", cmd_list, "list host network interfaces")
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--active", action="store_true", help="only active (up) interfaces")
    which.add_argument("--inactive", action="store_true", help="only inactive interfaces")
    sub = command("iface-info", cmd_info, "show an interface's summary")
    sub.add_argument("interface", metavar="INTERFACE", help="interface name or MAC address")
    sub = command("iface-dumpxml", cmd_dumpxml, "print an interface's XML", "interface")
    sub.add_argument("--inactive", action="store_true",
                     help="the configuration it gets when next started")
    sub = command("iface-define", cmd_define, "define (or replace) an interface from XML")
    sub.add_argument("file", type=argparse.FileType("r"),
                     help="interface XML file, or - for stdin")
    sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    for name, method, request, done, summary in (
            ("iface-undefine", "UndefineInterface", pb.UndefineInterfaceRequest, "undefined",
             "remove an interface's configuration"),
            ("iface-start", "StartInterface", pb.StartInterfaceRequest, "started",
             "bring an interface up"),
            ("iface-destroy", "StopInterface", pb.StopInterfaceRequest, "destroyed",
             "take an interface down (its configuration stays)")):
        command(name, _simple(method, request, done), summary, "interface")
    command("iface-begin", _transaction(
        "BeginInterfaceChange", pb.BeginInterfaceChangeRequest,
        "Network config change transaction started"),
        "snapshot the interface configuration to commit or roll back later")
    command("iface-commit", _transaction(
        "CommitInterfaceChange", pb.CommitInterfaceChangeRequest,
        "Network config change transaction committed"), "keep the changes since iface-begin")
    command("iface-rollback", _transaction(
        "RollbackInterfaceChange", pb.RollbackInterfaceChangeRequest,
        "Network config change transaction rolled back"),
        "undo the changes since iface-begin")
