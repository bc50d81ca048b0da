"""Node device commands (virsh's nodedev-*) for the nodedev service."""

from __future__ import annotations

import argparse
from typing import Any

from virtmesh.nodedev.v1 import nodedev_service_pb2 as pb
from virtmesh_client.cli_commands import (
    VALIDATE,
    Argument,
    CommandFactory,
    Commands,
    Kind,
    either,
    enum_choices,
)
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import Output, enum_name, event_line, fields, yes
from virtmesh_client.client import Client

#: libvirt's capability names ("pci", "usb_device", ...) -> NodeDeviceCapability
CAPABILITIES = enum_choices(pb.NodeDeviceCapability, "NODE_DEVICE_CAPABILITY_")
DEVICE = Kind("Node device '{}'", (Argument("device", "DEVICE", "device name"),),
              response_field="node_device", plural="devices")


def _flag(device: Any, field: str) -> str:
    """yes/no, or "-" where the driver cannot tell."""
    return yes(getattr(device, field)) if device.HasField(field) else "-"


def _row(d: Any) -> tuple[object, ...]:
    return (d.name, d.parent or "-", ",".join(d.capabilities), d.driver or "-",
            _flag(d, "active"))


def _list(client: Client, args: argparse.Namespace) -> Any:
    request = pb.ListNodeDevicesRequest(
        capabilities=[CAPABILITIES[cap] for cap in args.cap or ()],
        active=either(args, "active", "inactive"),
        parent=args.parent or "")
    return pb.ListNodeDevicesResponse(
        node_devices=client.all_pages("ListNodeDevices", request, "node_devices"))


cmd_list = Query(_list, ("NAME", "PARENT", "CAPABILITIES", "DRIVER", "ACTIVE"), _row,
                 "node_devices")


def _device_fields(d: Any) -> str:
    return fields((("Name", d.name), ("Parent", d.parent or "-"),
                   ("Capabilities", ", ".join(d.capabilities)), ("Driver", d.driver or "-"),
                   ("Path", d.path or "-"), ("Active", _flag(d, "active")),
                   ("Persistent", _flag(d, "persistent")), ("Autostart", _flag(d, "autostart"))))


def cmd_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    device = client.call("GetNodeDevice", pb.GetNodeDeviceRequest(name=args.device)).node_device
    out.show(device, _device_fields(device))


def cmd_detach(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DetachNodeDevice", pb.DetachNodeDeviceRequest(
        name=args.device, driver=args.driver or ""))
    out.show(response, f"Node device '{args.device}' detached")


def _event_text(event: Any) -> str:
    kind = event.WhichOneof("event") or "unknown"
    detail = (enum_name(pb.NodeDeviceLifecycleEventType, event.lifecycle.type,
                        "NODE_DEVICE_LIFECYCLE_EVENT_TYPE_") if kind == "lifecycle" else "")
    return event_line(event, kind, detail)


def register(command: CommandFactory) -> None:
    devices = Commands(command, DEVICE)
    sub = command("nodedev-list", cmd_list, "list host devices")
    sub.add_argument("--cap", action="append", choices=sorted(CAPABILITIES), metavar="CAP",
                     help="only devices with this capability (repeatable): "
                     + ", ".join(sorted(CAPABILITIES)))
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--active", action="store_true", help="only active devices")
    which.add_argument("--inactive", action="store_true", help="only defined, inactive ones")
    sub.add_argument("--parent", metavar="DEVICE", help="only the children of this device")
    devices.add("nodedev-info", cmd_info, "show a host device's summary")
    devices.dumpxml("nodedev-dumpxml", "GetNodeDeviceXML", pb.GetNodeDeviceXMLRequest,
                    "print a host device's XML")
    devices.from_xml("nodedev-create", "CreateNodeDevice", pb.CreateNodeDeviceRequest,
                     "created", "create a transient device (vHBA, mdev) from XML",
                     "device XML file, or - for stdin", VALIDATE)
    devices.from_xml("nodedev-define", "DefineNodeDevice", pb.DefineNodeDeviceRequest,
                     "defined", "define a persistent mediated device from XML",
                     "device XML file, or - for stdin", VALIDATE)
    devices.simple("nodedev-destroy", "DestroyNodeDevice", pb.DestroyNodeDeviceRequest,
                   "destroyed", "destroy a created device")
    devices.simple("nodedev-undefine", "UndefineNodeDevice", pb.UndefineNodeDeviceRequest,
                   "undefined", "remove a device's definition")
    devices.simple("nodedev-start", "StartNodeDevice", pb.StartNodeDeviceRequest, "started",
                   "start a defined device")
    devices.autostart("nodedev-autostart", "SetNodeDeviceAutostart",
                      pb.SetNodeDeviceAutostartRequest, "start a defined device with the host")
    sub = devices.add("nodedev-detach", cmd_detach,
                      "detach a PCI device from its host driver for guest assignment")
    sub.add_argument("--driver", metavar="NAME", help="stub driver, e.g. vfio (default: "
                     "libvirt's choice)")
    devices.simple("nodedev-reattach", "ReattachNodeDevice", pb.ReattachNodeDeviceRequest,
                   "re-attached", "give a detached PCI device back to its host driver")
    devices.simple("nodedev-reset", "ResetNodeDevice", pb.ResetNodeDeviceRequest, "reset",
                   "reset a PCI device")
    devices.events("nodedev-event", "WatchNodeDeviceEvents", pb.WatchNodeDeviceEventsRequest,
                   "node device", _event_text, "print node device events as they happen")
