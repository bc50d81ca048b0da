"""Guest agent commands, by virsh's names: domifaddr, domfsfreeze, domfsthaw,
domfstrim, domfsinfo, guestinfo, domhostname, guestvcpus, domtime, set-user-password,
get-user-sshkeys, set-user-sshkeys and guest-agent-timeout.

set-user-password reads the password from a prompt (on a terminal) or the first
line of stdin, never from the command line, where other users see it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_commands import CommandFactory, enum_choices
from virtmesh_client.cli_fleet import Query, UsageError
from virtmesh_client.cli_output import Output, fields, parse_bytes, read_input
from virtmesh_client.client import Client

ADDRESS_SOURCES = enum_choices(pb.InterfaceAddressSource, "INTERFACE_ADDRESS_SOURCE_")
HOSTNAME_SOURCES = enum_choices(pb.HostnameSource, "HOSTNAME_SOURCE_")
GUEST_INFO_TYPES = enum_choices(pb.GuestInfoType, "GUEST_INFO_TYPE_")
TIMEOUTS = {"block": -2, "default": -1, "nowait": 0}


def _addresses(interface: pb.GuestInterface) -> str:
    return ", ".join(f"{a.address}/{a.prefix}" for a in interface.addresses) or "-"


cmd_domifaddr = Query(
    lambda client, args: client.call("GetInterfaceAddresses", pb.GetInterfaceAddressesRequest(
        name=args.domain, source=ADDRESS_SOURCES.get(args.source, 0))),
    ("NAME", "HWADDR", "ADDRESSES"),
    lambda i: (i.name, i.hwaddr or "-", _addresses(i)), key="interfaces")

cmd_domfsinfo = Query(
    lambda client, args: client.call("GetFilesystemInfo",
                                     pb.GetFilesystemInfoRequest(name=args.domain)),
    ("MOUNTPOINT", "DEVICE", "TYPE", "DISK_TARGETS"),
    lambda f: (f.mountpoint, f.device, f.type, ",".join(f.disk_targets)), key="filesystems")

cmd_guestvcpus = Query(
    lambda client, args: client.call("GetGuestVcpus", pb.GetGuestVcpusRequest(name=args.domain)),
    ("vcpus", "online", "offlinable"), lambda v: (v.vcpus, v.online, v.offlinable))


def cmd_domhostname(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetGuestHostname", pb.GetGuestHostnameRequest(
        name=args.domain, source=HOSTNAME_SOURCES.get(args.source, 0)))
    out.show(response, response.hostname)


def cmd_domfsfreeze(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("FreezeFilesystems", pb.FreezeFilesystemsRequest(
        name=args.domain, mountpoints=args.mountpoint))
    out.show(response, f"Froze {response.count} filesystem(s)")


def cmd_domfsthaw(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("ThawFilesystems", pb.ThawFilesystemsRequest(
        name=args.domain, mountpoints=args.mountpoint))
    out.show(response, f"Thawed {response.count} filesystem(s)")


def cmd_domfstrim(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("TrimFilesystems", pb.TrimFilesystemsRequest(
        name=args.domain, mountpoint=args.mountpoint, minimum_bytes=args.minimum))
    out.show(response, "Trimmed")


def cmd_guestinfo(client: Client, args: argparse.Namespace, out: Output) -> None:
    types = [value for name, value in GUEST_INFO_TYPES.items() if getattr(args, name)]
    response = client.call("GetGuestInfo", pb.GetGuestInfoRequest(name=args.domain,
                                                                  types=types))
    out.show(response, fields(sorted(response.raw.items())) if response.raw else "")


def _time_text(stamp: Timestamp) -> str:
    return datetime.fromtimestamp(stamp.seconds, UTC).isoformat()


def cmd_domtime(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.now or args.sync or args.time is not None:
        when = int(time.time()) if args.now else args.time
        response = client.call("SetGuestTime", pb.SetGuestTimeRequest(
            name=args.domain, sync=args.sync,
            time=Timestamp(seconds=when) if when is not None else None))
        out.show(response, "Time set")
        return
    got = client.call("GetGuestTime", pb.GetGuestTimeRequest(name=args.domain))
    out.show(got, f"Time: {got.time.seconds} ({_time_text(got.time)})")


def _password() -> str:
    """From a prompt on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise UsageError("no password on stdin")
    return password


def cmd_set_user_password(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetUserPassword", pb.SetUserPasswordRequest(
        name=args.domain, user=args.user, password=_password(), encrypted=args.encrypted))
    out.show(response, f"Password set for user {args.user}")


def cmd_get_user_sshkeys(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetAuthorizedSSHKeys", pb.GetAuthorizedSSHKeysRequest(
        name=args.domain, user=args.user))
    out.show(response, "\n".join(response.keys))


def cmd_set_user_sshkeys(client: Client, args: argparse.Namespace, out: Output) -> None:
    keys = [line for line in read_input(args.file).splitlines() if line.strip()] \
        if args.file else []
    change = (pb.SSH_KEYS_CHANGE_APPEND if args.append else
              pb.SSH_KEYS_CHANGE_REMOVE if args.remove else pb.SSH_KEYS_CHANGE_UNSPECIFIED)
    response = client.call("SetAuthorizedSSHKeys", pb.SetAuthorizedSSHKeysRequest(
        name=args.domain, user=args.user, keys=keys, change=change))
    out.show(response, f"SSH keys of {args.user} changed")


def cmd_guest_agent_timeout(client: Client, args: argparse.Namespace, out: Output) -> None:
    seconds = args.seconds
    if seconds > 0:
        request = pb.SetAgentResponseTimeoutRequest(
            name=args.domain, mode=pb.AGENT_TIMEOUT_MODE_SECONDS, seconds=seconds)
    else:
        mode = {-2: pb.AGENT_TIMEOUT_MODE_BLOCK, -1: pb.AGENT_TIMEOUT_MODE_UNSPECIFIED,
                0: pb.AGENT_TIMEOUT_MODE_NOWAIT}.get(seconds)
        if mode is None:
            raise UsageError("SECONDS: at least 1, or -2 (block), -1 (default), 0 (nowait)")
        request = pb.SetAgentResponseTimeoutRequest(name=args.domain, mode=mode)
    out.show(client.call("SetAgentResponseTimeout", request), "Agent timeout set")


def register(command: CommandFactory) -> None:
    def domain_command(name: str, handler: object, summary: str) -> argparse.ArgumentParser:
        sub = command(name, handler, summary)
        sub.add_argument("domain", metavar="DOMAIN", help="domain name or UUID")
        return sub

    sub = domain_command("domifaddr", cmd_domifaddr, "show a guest's interface addresses")
    sub.add_argument("--source", choices=list(ADDRESS_SOURCES), default="lease",
                     help="where the addresses come from (default: lease)")
    for name, handler, verb in (("domfsfreeze", cmd_domfsfreeze, "freeze"),
                                ("domfsthaw", cmd_domfsthaw, "thaw")):
        sub = domain_command(name, handler, f"{verb} a guest's file systems (guest agent)")
        sub.add_argument("--mountpoint", action="append", default=[], metavar="M",
                         help="only this mountpoint (repeatable; default: all)")
    sub = domain_command("domfstrim", cmd_domfstrim, "discard a guest's unused blocks")
    sub.add_argument("--mountpoint", default="", metavar="M", help="only this mountpoint")
    sub.add_argument("--minimum", type=parse_bytes, default=0, metavar="BYTES",
                     help="skip free ranges shorter than this (a unit may follow: 4K)")
    domain_command("domfsinfo", cmd_domfsinfo, "list a guest's mounted file systems")
    sub = domain_command("guestinfo", cmd_guestinfo, "what the guest agent tells of the guest")
    for name in GUEST_INFO_TYPES:
        sub.add_argument(f"--{name}", action="store_true", help=f"only {name} (combinable)")
    sub = domain_command("domhostname", cmd_domhostname, "print a guest's own hostname")
    sub.add_argument("--source", choices=list(HOSTNAME_SOURCES),
                     help="agent or lease (default: the driver's choice)")
    domain_command("guestvcpus", cmd_guestvcpus, "show the vCPUs the guest sees")
    sub = domain_command("domtime", cmd_domtime, "show or set a guest's clock")
    group = sub.add_mutually_exclusive_group()
    group.add_argument("--now", action="store_true", help="set it to the host's time")
    group.add_argument("--sync", action="store_true", help="set it from its hardware clock")
    group.add_argument("--time", type=int, metavar="T", help="set it to T (seconds since 1970)")
    sub = domain_command("set-user-password", cmd_set_user_password,
                         "set a guest user's password (read from a prompt or stdin)")
    sub.add_argument("user", metavar="USER")
    sub.add_argument("--encrypted", action="store_true",
                     help="the password is already encrypted (crypt(3))")
    sub = domain_command("get-user-sshkeys", cmd_get_user_sshkeys,
                         "list a guest user's authorized SSH keys")
    sub.add_argument("user", metavar="USER")
    sub = domain_command("set-user-sshkeys", cmd_set_user_sshkeys,
                         "replace, add or remove a guest user's authorized SSH keys")
    sub.add_argument("user", metavar="USER")
    sub.add_argument("--file", type=argparse.FileType("r"), metavar="FILE",
                     help="the keys, one a line (- for stdin; none: remove them all)")
    group = sub.add_mutually_exclusive_group()
    group.add_argument("--append", action="store_true", help="add to the keys there")
    group.add_argument("--remove", action="store_true", help="remove these keys")
    sub = domain_command("guest-agent-timeout", cmd_guest_agent_timeout,
                         "set how long libvirt waits for the guest agent")
    # virsh's --timeout: here the global --timeout is each call's deadline
    sub.add_argument("seconds", type=int, nargs="?", default=-1, metavar="SECONDS",
                     help="seconds, or -2 block, -1 default, 0 nowait (virsh's values)")
