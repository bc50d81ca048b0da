"""Secret commands (virsh's secret-*) for the secret service.

Values are read from a file or stdin, never from the command line, where other
users could see them in the process list.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from typing import Any

from virtmesh.secret.v1 import secret_service_pb2 as pb
from virtmesh_client.cli_commands import (
    VALIDATE,
    Argument,
    CommandFactory,
    Commands,
    Kind,
    enum_choices,
)
from virtmesh_client.cli_fleet import Query, UsageError
from virtmesh_client.cli_output import Output, enum_name, event_line, fields, yes
from virtmesh_client.client import Client

USAGES = enum_choices(pb.UsageType, "USAGE_TYPE_")
#: a secret's name is its UUID
SECRET = Kind("Secret {}", (Argument("secret", "UUID", "the secret's UUID"),),
              response_field="secret", plural="secrets")


def _usage(usage: Any) -> str:
    kind = enum_name(pb.UsageType, usage.type, "USAGE_TYPE_")
    return f"{kind} {usage.id}" if usage.id else kind


def _row(s: Any) -> tuple[object, ...]:
    return (s.name, _usage(s.usage), yes(s.ephemeral), yes(s.private), s.description or "-")


def _list(client: Client, args: argparse.Namespace) -> Any:
    flag = {"yes": True, "no": False, None: None}
    request = pb.ListSecretsRequest(usage_types=[USAGES[u] for u in args.usage or ()],
                                    ephemeral=flag[args.ephemeral], private=flag[args.private])
    return pb.ListSecretsResponse(secrets=client.all_pages("ListSecrets", request, "secrets"))


cmd_list = Query(_list, ("NAME", "USAGE", "EPHEMERAL", "PRIVATE", "DESCRIPTION"), _row,
                 "secrets")


def cmd_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    if bool(args.secret) == bool(args.usage):
        raise UsageError("secret-info needs a UUID or --usage TYPE ID, not both")
    if args.usage and args.usage[0] not in USAGES:
        raise UsageError(f"unknown usage type '{args.usage[0]}' (one of "
                         f"{', '.join(sorted(USAGES))})")
    request = (pb.GetSecretRequest(name=args.secret) if args.secret else pb.GetSecretRequest(
        usage=pb.Usage(type=USAGES[args.usage[0]], id=args.usage[1])))
    secret = client.call("GetSecret", request).secret
    out.show(secret, fields((("UUID", secret.name), ("Usage", _usage(secret.usage)),
                             ("Ephemeral", yes(secret.ephemeral)),
                             ("Private", yes(secret.private)),
                             ("Description", secret.description or "-"))))


def _value(args: argparse.Namespace) -> bytes:
    if args.file:
        with open(args.file, "rb") as file:
            raw = file.read()
    else:
        raw = sys.stdin.buffer.read()
    if not args.base64:
        return raw
    try:
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except binascii.Error:
        raise UsageError("the value is not valid base64 (leave out --base64 for raw "
                         "bytes)") from None


def cmd_set_value(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetSecretValue", pb.SetSecretValueRequest(
        name=args.secret, value=_value(args)))
    out.show(response, f"Secret {args.secret} value set")


def cmd_get_value(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetSecretValue", pb.GetSecretValueRequest(name=args.secret))
    if args.plain and not out.json:
        sys.stdout.buffer.write(response.value)
        sys.stdout.flush()
        return
    out.show(response, base64.b64encode(response.value).decode())


def _event_text(event: Any) -> str:
    kind = event.WhichOneof("event") or "unknown"
    detail = (enum_name(pb.LifecycleEventType, event.lifecycle.type, "LIFECYCLE_EVENT_TYPE_")
              if kind == "lifecycle" else "")
    return event_line(event, _usage(event.usage), kind.replace("_", "-"), detail)


def register(command: CommandFactory) -> None:
    secrets = Commands(command, SECRET)
    sub = command("secret-list", cmd_list, "list secrets")
    sub.add_argument("--usage", action="append", choices=sorted(USAGES),
                     help="only secrets with this usage type (repeatable)")
    sub.add_argument("--ephemeral", choices=("yes", "no"),
                     help="only ephemeral (yes) or only persistent (no) secrets")
    sub.add_argument("--private", choices=("yes", "no"),
                     help="only private (yes) or only non-private (no) secrets")
    sub = command("secret-info", cmd_info, "show a secret's summary, by UUID or usage")
    sub.add_argument("secret", metavar="UUID", nargs="?", help="the secret's UUID")
    sub.add_argument("--usage", nargs=2, metavar=("TYPE", "ID"),
                     help=f"find it by usage instead; TYPE: {', '.join(USAGES)}")
    secrets.from_xml("secret-define", "DefineSecret", pb.DefineSecretRequest, "defined",
                     "define or change a secret from XML", "secret XML file, or - for stdin",
                     VALIDATE)
    secrets.dumpxml("secret-dumpxml", "GetSecretXML", pb.GetSecretXMLRequest,
                    "print a secret's XML")
    sub = secrets.add("secret-set-value", cmd_set_value,
                      "set a secret's value from a file or stdin (never the command line)")
    sub.add_argument("--file", metavar="PATH", help="read the value from PATH (default stdin)")
    sub.add_argument("--base64", action="store_true", help="the input is base64, not raw bytes")
    sub = secrets.add("secret-get-value", cmd_get_value, "print a secret's value, base64-encoded")
    sub.add_argument("--plain", action="store_true", help="write the raw bytes instead")
    secrets.simple("secret-undefine", "UndefineSecret", pb.UndefineSecretRequest, "undefined",
                   "delete a secret and its value")
    secrets.events("secret-event", "WatchSecretEvents", pb.WatchSecretEventsRequest, "secret",
                   _event_text, "print secret events as they happen")
