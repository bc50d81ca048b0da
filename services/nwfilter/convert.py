"""libvirt network filters and bindings -> nwfilter protobuf messages."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from virtmesh.nwfilter.v1 import nwfilter_service_pb2 as pb


def nwfilter_name(nwf: libvirt.virNWFilter) -> str:
    return nwf.name()


def binding_port(bound: libvirt.virNWFilterBinding) -> str:
    """A binding is named by the port device it filters."""
    return bound.portDev()


def nwfilter(nwf: libvirt.virNWFilter) -> pb.NWFilter:
    root = ET.fromstring(nwf.XMLDesc())
    return pb.NWFilter(
        name=nwf.name(), uuid=nwf.UUIDString(), chain=root.get("chain", "root"),
        priority=int(root.get("priority", "0")), rule_count=len(root.findall("rule")),
        filter_refs=[ref.get("filter", "") for ref in root.findall("filterref")])


def binding(bound: libvirt.virNWFilterBinding) -> pb.NWFilterBinding:
    root = ET.fromstring(bound.XMLDesc())
    parameters: dict[str, list[str]] = {}
    for parameter in root.findall("filterref/parameter"):
        parameters.setdefault(parameter.get("name", ""), []).append(parameter.get("value", ""))
    mac = root.find("mac")
    return pb.NWFilterBinding(
        name=bound.portDev(), filter=bound.filterName(),
        owner_name=root.findtext("owner/name") or "", owner_uuid=root.findtext("owner/uuid") or "",
        mac=mac.get("address", "") if mac is not None else "",
        parameters={name: ",".join(values) for name, values in parameters.items()})
