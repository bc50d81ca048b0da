"""Lifecycle extras of a domain: virsh's dompmsuspend, dompmwakeup, domrename,
inject-nmi, send-process-signal, set-lifecycle-action, vcpucount, dommessages and
domdirtyrate-calc, and domdirtyrate (the last measurement).

Signals are named as virsh takes them (``SIGTERM``, ``term``) or numbered (15; the
real-time ones from 32 up as libvirt numbers them). ``domdirtyrate-calc --wait``
waits for the measurement and prints the rate (GetDomainStats' dirtyrate group);
on a terminal it counts the seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_commands import CommandFactory, Commands, enum_choices
from virtmesh_client.cli_compute import DOMAIN
from virtmesh_client.cli_output import Output, fields
from virtmesh_client.client import Client, ClientError

PM_TARGETS = enum_choices(pb.PmSuspendTarget, "PM_SUSPEND_TARGET_")
LIFECYCLE_TYPES = enum_choices(pb.LifecycleType, "LIFECYCLE_TYPE_")
#: virsh's action names (libvirt's rename-restart is our RESTART_RENAME)
LIFECYCLE_ACTIONS = {**enum_choices(pb.LifecycleAction, "LIFECYCLE_ACTION_", "-"),
                     "rename-restart": pb.LIFECYCLE_ACTION_RESTART_RENAME}
del LIFECYCLE_ACTIONS["restart-rename"]
DIRTY_RATE_MODES = enum_choices(pb.DirtyRateMode, "DIRTY_RATE_MODE_", "-")
#: libvirt's dirty rate measurement states (DirtyRateStats.calc_status)
MEASURED = 2
#: seconds between two looks at a dirty rate measurement
POLL = 0.5


def process_signal(text: str) -> int:
    """A ProcessSignal from ``SIGTERM``, ``term`` or libvirt's number (15)."""
    if text.isdigit():
        number = int(text)
        if number + 1 not in pb.ProcessSignal.values():
            raise argparse.ArgumentTypeError(f"signal {number} is not one libvirt knows "
                                             "(0 to 64)")
        return number + 1  # the proto's values are libvirt's plus one
    name = text.upper().removeprefix("SIG")
    try:
        return pb.ProcessSignal.Value(f"PROCESS_SIGNAL_{name}")
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a signal such as SIGTERM, "
                                         "term or 15") from None


def _choice(table_: dict[str, Any], what: str) -> Any:
    def parse(text: str) -> Any:
        if text.lower() not in table_:
            raise argparse.ArgumentTypeError(f"{what} '{text}' is not one of "
                                             f"{', '.join(table_)}")
        return table_[text.lower()]
    return parse


def _scope(args: argparse.Namespace) -> Any:
    return pb.Scope(live=args.live, config=args.config)


def cmd_dompmsuspend(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("PmSuspendDomain", pb.PmSuspendDomainRequest(
        name=args.name, target=args.target, duration_seconds=args.duration))
    out.show(response, f"Domain '{args.name}' successfully suspended")


def cmd_domrename(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("RenameDomain", pb.RenameDomainRequest(name=args.name,
                                                                  new_name=args.new_name))
    out.show(response, f"Domain '{args.name}' successfully renamed to "
                       f"'{response.domain.name}'")


def cmd_send_process_signal(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SendDomainProcessSignal", pb.SendDomainProcessSignalRequest(
        name=args.name, pid=args.pid, signal=args.signal))
    signal = pb.ProcessSignal.Name(args.signal).removeprefix("PROCESS_SIGNAL_")
    out.show(response, f"Signal SIG{signal} sent to process {args.pid} of domain "
                       f"'{args.name}'")


def cmd_set_lifecycle_action(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetDomainLifecycleAction", pb.SetDomainLifecycleActionRequest(
        name=args.name, type=LIFECYCLE_TYPES[args.type_text],
        action=LIFECYCLE_ACTIONS[args.action_text], scope=_scope(args)))
    out.show(response, f"Domain '{args.name}': on_{args.type_text} set to "
                       f"{args.action_text}")


def cmd_dommessages(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainMessages", pb.GetDomainMessagesRequest(
        name=args.name, tainting=args.tainting, deprecation=args.deprecation))
    out.show(response, "\n".join(response.messages) or "no messages")


def _vcpu_count(client: Client, name: str, live: bool, config: bool, maximum: bool,
                guest: bool = False) -> int:
    return int(client.call("GetDomainVcpuCount", pb.GetDomainVcpuCountRequest(
        name=name, scope=pb.Scope(live=live, config=config), maximum=maximum,
        guest=guest)).count)


def cmd_vcpucount(client: Client, args: argparse.Namespace, out: Output) -> None:
    """virsh's table of maximum/current x config/live (the live rows only for a running
    domain); one number when the flags pick one cell, or with --guest."""
    if args.guest:
        count = _vcpu_count(client, args.name, False, False, False, guest=True)
        out.show(pb.GetDomainVcpuCountResponse(count=count), str(count))
        return
    kinds = [k for k, on in (("maximum", args.maximum), ("current", args.active)) if on] \
        or ["maximum", "current"]
    scopes = [s for s, on in (("config", args.config), ("live", args.live)) if on] \
        or ["config", "live"]
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        for scope in scopes:
            try:
                count = _vcpu_count(client, args.name, scope == "live", scope == "config",
                                    kind == "maximum")
            except ClientError as error:
                # an inactive domain has no live counts: virsh leaves those rows out
                if error.code != "FAILED_PRECONDITION" or len(scopes) == 1:
                    raise
                continue
            rows.append({"kind": kind, "scope": scope, "count": count})
    if args.json:
        print(json.dumps({"counts": rows}, indent=2))
    elif len(kinds) == len(scopes) == 1:
        print(rows[0]["count"])
    else:
        print("\n".join(f"{r['kind']:<12} {r['scope']:<12} {r['count']:>3}" for r in rows))


def cmd_domdirtyrate(client: Client, args: argparse.Namespace, out: Output) -> None:
    rate = _dirty_rate(client, args.name)
    out.show(rate, _rate_text(args.name, rate))


def _rate_text(name: str, rate: Any) -> str:
    status = {0: "not measured", 1: "measuring", MEASURED: "measured"}.get(
        rate.calc_status, str(rate.calc_status))
    lines = [("Status", status)]
    if rate.calc_status == MEASURED:
        lines += [("Period", f"{rate.calc_period} s"),
                  ("Dirty rate", f"{rate.megabytes_per_second} MiB/s")]
    return f"Domain '{name}'\n" + fields(lines)


def _dirty_rate(client: Client, name: str) -> Any:
    return client.call("GetDomainStats", pb.GetDomainStatsRequest(
        names=[name], groups=[pb.STAT_GROUP_DIRTYRATE])).stats[0].dirtyrate


def cmd_domdirtyrate_calc(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("StartDomainDirtyRateCalc", pb.StartDomainDirtyRateCalcRequest(
        name=args.name, calc_seconds=args.seconds, mode=args.mode))
    if not args.wait:
        out.show(response, f"Started the dirty rate measurement of domain '{args.name}' "
                           f"({args.seconds} s); `virtmesh domdirtyrate {args.name}` shows "
                           "the result")
        return
    started = time.monotonic()
    deadline = started + args.seconds + 30
    shown = False
    while (rate := _dirty_rate(client, args.name)).calc_status != MEASURED:
        if time.monotonic() > deadline:
            raise ClientError("DEADLINE_EXCEEDED", f"the measurement of domain '{args.name}' "
                              "has not ended", "DIRTY_RATE_PENDING")
        if sys.stderr.isatty() and not args.json:
            print(f"\rmeasuring: {time.monotonic() - started:4.1f} of {args.seconds} s",
                  end="", file=sys.stderr, flush=True)
            shown = True
        time.sleep(POLL)
    if shown:
        print(f"\r{' ' * 40}\r", end="", file=sys.stderr, flush=True)
    out.show(rate, _rate_text(args.name, rate))


def _add_scope(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--live", action="store_true", help="the running domain")
    sub.add_argument("--config", action="store_true", help="the persistent config")


def register(command: CommandFactory) -> None:
    domains = Commands(command, DOMAIN)
    sub = domains.add("dompmsuspend", cmd_dompmsuspend,
                      "ask the guest (through its agent) to suspend itself")
    sub.add_argument("target", type=_choice(PM_TARGETS, "target"), metavar="TARGET",
                     help=f"{', '.join(PM_TARGETS)}")
    sub.add_argument("--duration", type=int, default=0, metavar="SECONDS",
                     help="how long it sleeps (0: until woken)")
    domains.simple("dompmwakeup", "PmWakeupDomain", pb.PmWakeupDomainRequest,
                   "successfully woken up", "wake a guest suspended to RAM")
    sub = domains.add("domrename", cmd_domrename, "rename an inactive domain")
    sub.add_argument("new_name", metavar="NEW_NAME")
    domains.simple("inject-nmi", "InjectDomainNmi", pb.InjectDomainNmiRequest,
                   "was sent an NMI", "inject a non-maskable interrupt into the guest")
    sub = domains.add("send-process-signal", cmd_send_process_signal,
                      "send a signal to a process of the domain")
    sub.add_argument("pid", type=int, metavar="PID")
    sub.add_argument("signal", type=process_signal, metavar="SIGNAL",
                     help="such as SIGTERM, term or 15")
    sub = domains.add("set-lifecycle-action", cmd_set_lifecycle_action,
                      "what happens when the guest powers off, reboots or crashes")
    sub.add_argument("type_text", metavar="TYPE", choices=list(LIFECYCLE_TYPES),
                     help=", ".join(LIFECYCLE_TYPES))
    sub.add_argument("action_text", metavar="ACTION", choices=list(LIFECYCLE_ACTIONS),
                     help=", ".join(LIFECYCLE_ACTIONS))
    _add_scope(sub)
    sub = domains.add("vcpucount", cmd_vcpucount, "show a domain's vCPU counts")
    sub.add_argument("--maximum", action="store_true", help="the maximum counts")
    sub.add_argument("--active", action="store_true", help="the current counts")
    _add_scope(sub)
    sub.add_argument("--guest", action="store_true",
                     help="the count the guest agent reports")
    sub = domains.add("dommessages", cmd_dommessages,
                      "show why a domain is tainted and what of it is deprecated")
    sub.add_argument("--tainting", action="store_true", help="tainting messages only")
    sub.add_argument("--deprecation", action="store_true",
                     help="deprecation messages only")
    sub = domains.add("domdirtyrate-calc", cmd_domdirtyrate_calc,
                      "measure how fast the guest dirties its memory")
    sub.add_argument("--seconds", type=int, default=1, help="1 to 60 (default 1)")
    sub.add_argument("--mode", type=_choice(DIRTY_RATE_MODES, "mode"),
                     default=pb.DIRTY_RATE_MODE_UNSPECIFIED,
                     help=", ".join(DIRTY_RATE_MODES))
    sub.add_argument("--wait", action="store_true",
                     help="wait for the result and print it")
    domains.add("domdirtyrate", cmd_domdirtyrate,
                "show a domain's last dirty rate measurement")
