"""Saving, restoring, dumping and jobs: virsh's save, restore, managedsave, dump,
domjobinfo and domjobabort.

save, managedsave and dump last as long as libvirt's job: they wait for it (the
30-second default of ``--timeout`` does not apply to them; a ``--timeout`` given
does, and aborts the job when it passes). On a terminal a progress bar follows the
job (GetDomainJobInfo on a second call). Ctrl-C cancels the call and the service
aborts the job: the guest runs on and no partial file is left. FILE is a path on the
node, inside the compute service's save_dir.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_commands import XML_FILE, CommandFactory, Commands, enum_choices
from virtmesh_client.cli_compute import DOMAIN
from virtmesh_client.cli_output import Output, byte_size, enum_name, fields, read_input
from virtmesh_client.client import DEFAULT_TIMEOUT, Client, ClientError, rpc_errors

#: --format: raw is an ELF file with --memory-only
FORMATS = {"elf": pb.CORE_DUMP_FORMAT_RAW,
           **enum_choices(pb.CoreDumpFormat, "CORE_DUMP_FORMAT_", "-")}
#: seconds between two looks at the job's progress
POLL = 0.25
BAR = 30


def _deadline(args: argparse.Namespace) -> float | None:
    """A job's deadline: only a --timeout given (0: none), never the default's."""
    return None if args.timeout in (DEFAULT_TIMEOUT, 0) else args.timeout


def bar(percent: float) -> str:
    """``[#####.....]  42%``"""
    done = round(BAR * percent / 100)
    return f"[{'#' * done}{'.' * (BAR - done)}] {percent:3.0f}%"


def progress_line(job: Any) -> str:
    """``[#####.....]  42%  120.0 MiB of 512.0 MiB`` for a job with totals."""
    total = job.data_total_bytes or job.memory_total_bytes
    processed = job.data_processed_bytes or job.memory_processed_bytes
    amounts = f"  {byte_size(processed)} of {byte_size(total)}" if total else ""
    return bar(job.percent) + amounts


def _follow(client: Client, name: str, finished: threading.Event) -> None:
    """Redraw the progress bar on stderr until the call has finished."""
    shown = False
    while not finished.wait(POLL):
        try:
            job = client.call("GetDomainJobInfo", pb.GetDomainJobInfoRequest(name=name)).job
        except ClientError:
            continue  # the job may be over already; the call itself says how it went
        if job.type in (pb.JOB_TYPE_BOUNDED, pb.JOB_TYPE_UNBOUNDED):
            print(f"\r{progress_line(job)}", end="", file=sys.stderr, flush=True)
            shown = True
    if shown:
        print(f"\r{' ' * (BAR + 40)}\r", end="", file=sys.stderr, flush=True)


def long_call(client: Client, args: argparse.Namespace, method: str, request: Any,
              name: str = "") -> Any:
    """Make a call that lasts a job; on a terminal follow domain ``name``'s job. Leaving
    early (Ctrl-C, an error) cancels the call, which aborts the job."""
    call = client.method(method, type(request)).future(request, timeout=_deadline(args))
    finished = threading.Event()
    call.add_done_callback(lambda _call: finished.set())
    try:
        if name and sys.stderr.isatty() and not args.json:
            _follow(client, name, finished)
        with rpc_errors():
            return call.result()
    finally:
        call.cancel()


def _resume_state(args: argparse.Namespace) -> Any:
    return (pb.RESUME_STATE_RUNNING if args.running else
            pb.RESUME_STATE_PAUSED if args.paused else pb.RESUME_STATE_UNSPECIFIED)


def _xml(args: argparse.Namespace) -> str:
    return read_input(args.xml) if args.xml else ""


def cmd_save(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = long_call(client, args, "SaveDomain", pb.SaveDomainRequest(
        name=args.name, path=args.file, xml=_xml(args), resume_state=_resume_state(args),
        bypass_cache=args.bypass_cache), args.name)
    out.show(response, f"Domain '{args.name}' saved to {args.file}")


def cmd_restore(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = long_call(client, args, "RestoreDomain", pb.RestoreDomainRequest(
        path=args.file, xml=_xml(args), resume_state=_resume_state(args),
        bypass_cache=args.bypass_cache))
    out.show(response, f"Domain '{response.domain.name}' restored from {args.file}")


def cmd_managedsave(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = long_call(client, args, "ManagedSaveDomain", pb.ManagedSaveDomainRequest(
        name=args.name, resume_state=_resume_state(args), bypass_cache=args.bypass_cache),
        args.name)
    out.show(response, f"Domain '{args.name}' state saved by libvirt")


def cmd_dump(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = long_call(client, args, "CoreDumpDomain", pb.CoreDumpDomainRequest(
        name=args.name, path=args.file, format=FORMATS[args.format or "elf"],
        memory_only=args.memory_only, crash=args.crash, reset=args.reset, live=args.live,
        bypass_cache=args.bypass_cache), args.name)
    out.show(response, f"Domain '{args.name}' dumped to {args.file}")


def job_fields(job: Any) -> str:
    rows: list[tuple[str, object]] = [
        ("Job type", enum_name(pb.JobType, job.type, "JOB_TYPE_")),
        ("Operation", enum_name(pb.JobOperation, job.operation, "JOB_OPERATION_"))]
    if job.type != pb.JOB_TYPE_NONE:
        rows += [("Time elapsed", f"{job.time_elapsed_ms} ms"),
                 *((("Time remaining", f"{job.time_remaining_ms} ms"),)
                   if job.time_remaining_ms else ()),
                 ("Data processed", byte_size(job.data_processed_bytes)),
                 ("Data remaining", byte_size(job.data_remaining_bytes)),
                 ("Data total", byte_size(job.data_total_bytes)),
                 ("Memory processed", byte_size(job.memory_processed_bytes)),
                 ("Memory remaining", byte_size(job.memory_remaining_bytes)),
                 ("Memory total", byte_size(job.memory_total_bytes)),
                 ("Memory bandwidth", f"{byte_size(job.memory_bps)}/s"),
                 ("Progress", f"{job.percent:.0f}%")]
    if job.error_message:
        rows.append(("Error", job.error_message))
    return fields(rows)


def cmd_domjobinfo(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainJobInfo", pb.GetDomainJobInfoRequest(
        name=args.name, completed=args.completed, keep_completed=args.keep_completed))
    out.show(response, job_fields(response.job))


def _add_save_flags(sub: argparse.ArgumentParser) -> None:
    state = sub.add_mutually_exclusive_group()
    state.add_argument("--running", action="store_true", help="restore it running")
    state.add_argument("--paused", action="store_true", help="restore it paused")
    sub.add_argument("--bypass-cache", action="store_true",
                     help="around the host's page cache (slower; other guests keep theirs)")


def register(command: CommandFactory) -> None:
    domains = Commands(command, DOMAIN)
    node_file = "file on the node, inside the compute service's save_dir"
    xml_help = "domain XML to use instead (only ABI-compatible changes)"
    sub = domains.add("save", cmd_save, "save a running domain's state to a file; it stops")
    sub.add_argument("file", metavar="FILE", help=f"the new {node_file}")
    sub.add_argument("--xml", type=XML_FILE, metavar="FILE", help=xml_help)
    _add_save_flags(sub)
    sub = command("restore", cmd_restore, "start a domain from a file save wrote")
    sub.add_argument("file", metavar="FILE", help=f"the save image, a {node_file}")
    sub.add_argument("--xml", type=XML_FILE, metavar="FILE", help=xml_help)
    _add_save_flags(sub)
    sub = domains.add("managedsave", cmd_managedsave,
                      "save a running domain where libvirt keeps it; its next start restores it")
    _add_save_flags(sub)
    domains.simple("managedsave-remove", "RemoveManagedSave", pb.RemoveManagedSaveRequest,
                   "has no managed save image any more",
                   "remove a domain's managed save image: its next start boots afresh")
    domains.dumpxml("managedsave-dumpxml", "GetManagedSaveXML", pb.GetManagedSaveXMLRequest,
                    "print the domain XML of a managed save image",
                    ("--secure", "include passwords"))
    sub = domains.add("dump", cmd_dump, "write a running domain's memory to a file")
    sub.add_argument("file", metavar="FILE", help=f"the new {node_file}")
    sub.add_argument("--memory-only", action="store_true",
                     help="only the guest's memory, for crash(8) or gdb")
    sub.add_argument("--format", choices=sorted(FORMATS),
                     help="with --memory-only: elf (raw, the default) or a kdump format")
    after = sub.add_mutually_exclusive_group()
    after.add_argument("--crash", action="store_true", help="stop the domain after the dump")
    after.add_argument("--reset", action="store_true", help="reset the domain after the dump")
    sub.add_argument("--live", action="store_true", help="do not pause the guest meanwhile")
    sub.add_argument("--bypass-cache", action="store_true", help="around the host's page cache")
    sub = domains.add("domjobinfo", cmd_domjobinfo, "show a domain's current job")
    sub.add_argument("--completed", action="store_true", help="the last job that ended")
    sub.add_argument("--keep-completed", action="store_true",
                     help="with --completed: leave it for the next caller too")
    domains.simple("domjobabort", "AbortDomainJob", pb.AbortDomainJobRequest,
                   "has its job aborted", "abort a domain's current job (save, dump, migration)",
                   ("--postcopy", "abort a migration in its post-copy phase"))
