"""Network filter commands (virsh's nwfilter-*) for the nwfilter service."""

from __future__ import annotations

import argparse
from typing import Any

from virtmesh.nwfilter.v1 import nwfilter_service_pb2 as pb
from virtmesh_client.cli_commands import CommandFactory
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import Output, read_input
from virtmesh_client.client import Client


def _filter_row(f: Any) -> tuple[object, ...]:
    return (f.name, f.uuid, f.chain, f.priority, f.rule_count,
            ",".join(f.filter_refs) or "-")


def _binding_row(b: Any) -> tuple[object, ...]:
    return (b.name, b.filter, b.owner_name or "-", b.mac or "-")


cmd_list = Query(
    lambda client, args: pb.ListNWFiltersResponse(nwfilters=client.all_pages(
        "ListNWFilters", pb.ListNWFiltersRequest(), "nwfilters")),
    ("NAME", "UUID", "CHAIN", "PRIORITY", "RULES", "INCLUDES"), _filter_row, "nwfilters")

cmd_binding_list = Query(
    lambda client, args: pb.ListNWFilterBindingsResponse(bindings=client.all_pages(
        "ListNWFilterBindings", pb.ListNWFilterBindingsRequest(), "bindings")),
    ("PORT_DEV", "FILTER", "OWNER", "MAC"), _binding_row, "bindings")


def cmd_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetNWFilterXML", pb.GetNWFilterXMLRequest(name=args.nwfilter))
    out.show(response, response.xml.rstrip("\n"))


def cmd_define(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DefineNWFilter", pb.DefineNWFilterRequest(
        xml=read_input(args.file), validate=args.validate))
    out.show(response, f"Network filter '{response.nwfilter.name}' defined "
                       f"({response.nwfilter.uuid})")


def cmd_undefine(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("UndefineNWFilter", pb.UndefineNWFilterRequest(name=args.nwfilter))
    out.show(response, f"Network filter '{args.nwfilter}' undefined")


def cmd_binding_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateNWFilterBinding", pb.CreateNWFilterBindingRequest(
        xml=read_input(args.file), validate=args.validate))
    out.show(response, f"Network filter binding on '{response.binding.name}' created "
                       f"(filter '{response.binding.filter}')")


def cmd_binding_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetNWFilterBindingXML",
                           pb.GetNWFilterBindingXMLRequest(name=args.port_dev))
    out.show(response, response.xml.rstrip("\n"))


def cmd_binding_delete(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DeleteNWFilterBinding",
                           pb.DeleteNWFilterBindingRequest(name=args.port_dev))
    out.show(response, f"Network filter binding on '{args.port_dev}' deleted")


def register(command: CommandFactory) -> None:
    xml_in = argparse.FileType("r")
    command("nwfilter-list", cmd_list, "list network filters")
    command("nwfilter-dumpxml", cmd_dumpxml, "print a network filter's XML", "nwfilter")
    sub = command("nwfilter-define", cmd_define, "define or change a network filter from XML")
    sub.add_argument("file", type=xml_in, help="filter XML file, or - for stdin")
    sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    command("nwfilter-undefine", cmd_undefine, "delete a network filter", "nwfilter")
    command("nwfilter-binding-list", cmd_binding_list, "list network filter bindings")
    sub = command("nwfilter-binding-create", cmd_binding_create,
                  "apply a filter to a port from <filterbinding> XML")
    sub.add_argument("file", type=xml_in, help="binding XML file, or - for stdin")
    sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    for name, handler, summary in (
            ("nwfilter-binding-dumpxml", cmd_binding_dumpxml, "print a binding's XML"),
            ("nwfilter-binding-delete", cmd_binding_delete,
             "remove a binding and its firewall rules")):
        command(name, handler, summary).add_argument(
            "port_dev", metavar="PORT_DEV", help="the bound port device, e.g. vnet0")
