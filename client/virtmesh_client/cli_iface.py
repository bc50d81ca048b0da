"""Host interface commands (virsh's iface-*) for the iface service."""

from __future__ import annotations

import argparse
import re
from typing import Any

from virtmesh.iface.v1 import iface_service_pb2 as pb
from virtmesh_client.cli_commands import (
    VALIDATE,
    Argument,
    CommandFactory,
    Commands,
    Kind,
    either,
)
from virtmesh_client.cli_edit import add_edit
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import Output, fields, yes
from virtmesh_client.client import Client

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
INTERFACE = Kind("Interface '{}'", (Argument("interface", "INTERFACE", "interface name"),),
                 response_field="interface")


def _row(i: Any) -> tuple[object, ...]:
    return (i.name, yes(i.active), i.mac or "-", i.type or "-")


def _list(client: Client, args: argparse.Namespace) -> Any:
    request = pb.ListInterfacesRequest(active=either(args, "active", "inactive"))
    return pb.ListInterfacesResponse(
        interfaces=client.all_pages("ListInterfaces", request, "interfaces"))


cmd_list = Query(_list, ("NAME", "ACTIVE", "MAC", "TYPE"), _row, "interfaces")


def cmd_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    """By name, or by MAC address when it looks like one (as virsh does)."""
    request = (pb.GetInterfaceRequest(mac=args.interface) if _MAC.fullmatch(args.interface)
               else pb.GetInterfaceRequest(name=args.interface))
    found = client.call("GetInterface", request).interface
    out.show(found, fields((("Name", found.name), ("MAC", found.mac or "-"),
                            ("Type", found.type or "-"),
                            ("State", "active" if found.active else "inactive"))))


def _transaction(method: str, request: type, done: str) -> Any:
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        out.show(client.call(method, request()), done)
    return handler


def register(command: CommandFactory) -> None:
    interfaces = Commands(command, INTERFACE)
    sub = command("iface-list", cmd_list, "list host network interfaces")
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--active", action="store_true", help="only active (up) interfaces")
    which.add_argument("--inactive", action="store_true", help="only inactive interfaces")
    sub = command("iface-info", cmd_info, "show an interface's summary")
    sub.add_argument("interface", metavar="INTERFACE", help="interface name or MAC address")
    interfaces.dumpxml("iface-dumpxml", "GetInterfaceXML", pb.GetInterfaceXMLRequest,
                       "print an interface's XML",
                       ("--inactive", "the configuration it gets when next started"))
    interfaces.from_xml("iface-define", "DefineInterface", pb.DefineInterfaceRequest,
                        "defined", "define (or replace) an interface from XML",
                        "interface XML file, or - for stdin", VALIDATE)
    add_edit(interfaces, "iface-edit", ("GetInterfaceXML", pb.GetInterfaceXMLRequest),
             ("DefineInterface", pb.DefineInterfaceRequest),
             "edit an interface's configuration XML in $EDITOR", inactive=True)
    interfaces.simple("iface-undefine", "UndefineInterface", pb.UndefineInterfaceRequest,
                      "undefined", "remove an interface's configuration")
    interfaces.simple("iface-start", "StartInterface", pb.StartInterfaceRequest, "started",
                      "bring an interface up")
    interfaces.simple("iface-destroy", "StopInterface", pb.StopInterfaceRequest, "destroyed",
                      "take an interface down (its configuration stays)")
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
