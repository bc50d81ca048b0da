"""Network filter commands (virsh's nwfilter-*) for the nwfilter service."""

from __future__ import annotations

import argparse
from typing import Any

from virtmesh.nwfilter.v1 import nwfilter_service_pb2 as pb
from virtmesh_client.cli_commands import (
    VALIDATE,
    XML_FILE,
    Argument,
    CommandFactory,
    Commands,
    Kind,
    add_flags,
)
from virtmesh_client.cli_edit import add_edit
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import Output, read_input
from virtmesh_client.client import Client

FILTER = Kind("Network filter '{}'", (Argument("nwfilter", "NWFILTER", "nwfilter name"),),
              response_field="nwfilter")
#: a binding is named by the port device it filters
BINDING = Kind("Network filter binding on '{}'", (
    Argument("port_dev", "PORT_DEV", "the bound port device, e.g. vnet0"),))


def _filter_row(f: Any) -> tuple[object, ...]:
    return (f.name, f.uuid, f.chain, f.priority, f.rule_count,
            ",".join(f.filter_refs) or "-")


def _binding_row(b: Any) -> tuple[object, ...]:
    return (b.name, b.filter, b.owner_name or "-", b.mac or "-")


cmd_list = Query(
    lambda client, args: pb.ListNWFiltersResponse(nwfilters=client.all_pages(
        "ListNWFilters", pb.ListNWFiltersRequest(), "nwfilters")),
    ("NAME", "UUID", "CHAIN", "PRIORITY", "RULE_COUNT", "FILTER_REFS"), _filter_row,
    "nwfilters")

cmd_binding_list = Query(
    lambda client, args: pb.ListNWFilterBindingsResponse(bindings=client.all_pages(
        "ListNWFilterBindings", pb.ListNWFilterBindingsRequest(), "bindings")),
    ("NAME", "FILTER", "OWNER_NAME", "MAC"), _binding_row, "bindings")


def cmd_binding_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateNWFilterBinding", pb.CreateNWFilterBindingRequest(
        xml=read_input(args.file), validate=args.validate))
    out.show(response, f"Network filter binding on '{response.binding.name}' created "
                       f"(filter '{response.binding.filter}')")


def register(command: CommandFactory) -> None:
    filters, bindings = Commands(command, FILTER), Commands(command, BINDING)
    command("nwfilter-list", cmd_list, "list network filters")
    filters.dumpxml("nwfilter-dumpxml", "GetNWFilterXML", pb.GetNWFilterXMLRequest,
                    "print a network filter's XML")
    filters.from_xml("nwfilter-define", "DefineNWFilter", pb.DefineNWFilterRequest, "defined",
                     "define or change a network filter from XML",
                     "filter XML file, or - for stdin", VALIDATE, uuid=True)
    add_edit(filters, "nwfilter-edit", ("GetNWFilterXML", pb.GetNWFilterXMLRequest),
             ("DefineNWFilter", pb.DefineNWFilterRequest),
             "edit a network filter's XML in $EDITOR")
    filters.simple("nwfilter-undefine", "UndefineNWFilter", pb.UndefineNWFilterRequest,
                   "undefined", "delete a network filter")
    command("nwfilter-binding-list", cmd_binding_list, "list network filter bindings")
    sub = command("nwfilter-binding-create", cmd_binding_create,
                  "apply a filter to a port from <filterbinding> XML")
    sub.add_argument("file", type=XML_FILE, help="binding XML file, or - for stdin")
    add_flags(sub, VALIDATE)
    bindings.dumpxml("nwfilter-binding-dumpxml", "GetNWFilterBindingXML",
                     pb.GetNWFilterBindingXMLRequest, "print a binding's XML")
    bindings.simple("nwfilter-binding-delete", "DeleteNWFilterBinding",
                    pb.DeleteNWFilterBindingRequest, "deleted",
                    "remove a binding and its firewall rules")
