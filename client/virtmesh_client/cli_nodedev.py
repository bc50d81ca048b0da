"""Node device commands (virsh's nodedev-*) for the nodedev service."""

from __future__ import annotations

import argparse
from datetime import UTC
from typing import Any

from virtmesh.nodedev.v1 import nodedev_service_pb2 as pb
from virtmesh_client.cli_commands import CommandFactory, follow, watch
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import Output, enum_name, fields, read_input, yes
from virtmesh_client.client import Client

#: libvirt's capability names ("pci", "usb_device", ...) -> NodeDeviceCapability
CAPABILITIES = {name.removeprefix("NODE_DEVICE_CAPABILITY_").lower(): value
                for name, value in pb.NodeDeviceCapability.items() if value}


def _flag(device: Any, field: str) -> str:
    """yes/no, or "-" where the driver cannot tell."""
    return yes(getattr(device, field)) if device.HasField(field) else "-"


def _row(d: Any) -> tuple[object, ...]:
    return (d.name, d.parent or "-", ",".join(d.capabilities), d.driver or "-",
            _flag(d, "active"))


def _list(client: Client, args: argparse.Namespace) -> Any:
    active = True if args.active else False if args.inactive else None
    request = pb.ListNodeDevicesRequest(
        capabilities=[CAPABILITIES[cap] for cap in args.cap or ()], active=active,
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


def cmd_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetNodeDeviceXML", pb.GetNodeDeviceXMLRequest(name=args.device))
    out.show(response, response.xml.rstrip("\n"))


def cmd_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateNodeDevice", pb.CreateNodeDeviceRequest(
        xml=read_input(args.file), validate=args.validate))
    out.show(response, f"Node device '{response.node_device.name}' created")


def cmd_define(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DefineNodeDevice", pb.DefineNodeDeviceRequest(
        xml=read_input(args.file), validate=args.validate))
    out.show(response, f"Node device '{response.node_device.name}' defined")


def _simple(method: str, request: type, done: str) -> Any:
    """A command that sends just the device name and reports success."""
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        out.show(client.call(method, request(name=args.device)),
                 f"Node device '{args.device}' {done}")
    return handler


def cmd_autostart(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetNodeDeviceAutostart", pb.SetNodeDeviceAutostartRequest(
        name=args.device, autostart=not args.disable))
    done = "unmarked as autostarted" if args.disable else "marked as autostarted"
    out.show(response, f"Node device '{args.device}' {done}")


def cmd_detach(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DetachNodeDevice", pb.DetachNodeDeviceRequest(
        name=args.device, driver=args.driver or ""))
    out.show(response, f"Node device '{args.device}' detached")


def _event_text(event: Any) -> str:
    kind = event.WhichOneof("event") or "unknown"
    detail = (enum_name(pb.NodeDeviceLifecycleEventType, event.lifecycle.type,
                    "NODE_DEVICE_LIFECYCLE_EVENT_TYPE_") if kind == "lifecycle" else "")
    when = event.time.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds")
    return f"{when}  {event.name}  {kind}  {detail}".rstrip()


def cmd_event(client: Client, args: argparse.Namespace, out: Output) -> None:
    follow(watch(client, "WatchNodeDeviceEvents", pb.WatchNodeDeviceEventsRequest(
        names=args.devices)), "node device", _event_text, out, args.count)


def register(command: CommandFactory) -> None:
    xml_in = argparse.FileType("r")
    sub = command("nodedev-list", cmd_list, "list host devices")
    sub.add_argument("--cap", action="append", choices=sorted(CAPABILITIES), metavar="CAP",
                     help="only devices with this capability (repeatable): "
                     + ", ".join(sorted(CAPABILITIES)))
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--active", action="store_true", help="only active devices")
    which.add_argument("--inactive", action="store_true", help="only defined, inactive ones")
    sub.add_argument("--parent", metavar="DEVICE", help="only the children of this device")
    command("nodedev-info", cmd_info, "show a host device's summary", "device")
    command("nodedev-dumpxml", cmd_dumpxml, "print a host device's XML", "device")
    for name, handler, summary in (
            ("nodedev-create", cmd_create, "create a transient device (vHBA, mdev) from XML"),
            ("nodedev-define", cmd_define, "define a persistent mediated device from XML")):
        sub = command(name, handler, summary)
        sub.add_argument("file", type=xml_in, help="device XML file, or - for stdin")
        sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    command("nodedev-destroy", _simple("DestroyNodeDevice", pb.DestroyNodeDeviceRequest,
                                       "destroyed"), "destroy a created device", "device")
    command("nodedev-undefine", _simple("UndefineNodeDevice", pb.UndefineNodeDeviceRequest,
                                        "undefined"), "remove a device's definition", "device")
    command("nodedev-start", _simple("StartNodeDevice", pb.StartNodeDeviceRequest, "started"),
            "start a defined device", "device")
    sub = command("nodedev-autostart", cmd_autostart, "start a defined device with the host",
                  "device")
    sub.add_argument("--disable", action="store_true", help="do not autostart it")
    sub = command("nodedev-detach", cmd_detach,
                  "detach a PCI device from its host driver for guest assignment", "device")
    sub.add_argument("--driver", metavar="NAME", help="stub driver, e.g. vfio (default: "
                     "libvirt's choice)")
    command("nodedev-reattach", _simple("ReattachNodeDevice", pb.ReattachNodeDeviceRequest,
                                        "re-attached"),
            "give a detached PCI device back to its host driver", "device")
    command("nodedev-reset", _simple("ResetNodeDevice", pb.ResetNodeDeviceRequest, "reset"),
            "reset a PCI device", "device")
    sub = command("nodedev-event", cmd_event, "print node device events as they happen")
    sub.add_argument("devices", nargs="*", metavar="DEVICE", help="only these devices")
    sub.add_argument("--count", type=int, metavar="N", help="stop after N events")
