"""``edit``, ``net-edit``, ``pool-edit``...: an object's XML in the user's editor,
defined again when it changed, the way virsh's *edit commands work.

The XML goes to a private temporary file and ``$VISUAL``, ``$EDITOR`` or ``vi``
opens it. An unchanged file defines nothing. When the service refuses the edited
XML, an interactive user is asked whether to edit it again; otherwise the command
fails and says where the edited file was kept, so no edit is ever lost.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from virtmesh_client.cli_commands import Commands
from virtmesh_client.cli_fleet import UsageError
from virtmesh_client.cli_output import Output
from virtmesh_client.client import Client, ClientError


def editor_command() -> list[str]:
    """The user's editor as virsh finds it: ``$VISUAL``, then ``$EDITOR``, then vi."""
    words = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    if not words:
        raise UsageError("$VISUAL or $EDITOR is set but names no command")
    return words


def run_editor(path: Path) -> None:
    try:
        finished = subprocess.run([*editor_command(), str(path)], check=False)
    except FileNotFoundError as error:
        raise UsageError(f"editor not found: {error.filename}; set $VISUAL or "
                         "$EDITOR") from None
    if finished.returncode:
        raise UsageError(f"the editor exited with status {finished.returncode}; "
                         "nothing was defined")


def edit_again(error: ClientError) -> bool:
    """Asks an interactive user whether to fix a refused edit; False without a terminal."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(f"virtmesh: {error}", file=sys.stderr)
    print("Edit again? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def add_edit(commands: Commands, name: str, dump: tuple[str, Any], define: tuple[str, Any],
             summary: str, **dump_fields: Any) -> argparse.ArgumentParser:
    """Registers ``name``: ``dump`` (method, request type, with ``dump_fields``) reads
    the XML, ``define`` (method, request type taking ``xml``) stores the edited one."""
    kind = commands.kind

    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        dump_method, dump_request = dump
        define_method, define_request = define
        try:
            original = client.call(dump_method, kind.request(dump_request, args,
                                                             **dump_fields))
        except ClientError as error:  # as virsh: a driver without the flag (test's pools)
            if error.code != "UNIMPLEMENTED" or not dump_fields:
                raise
            original = client.call(dump_method, kind.request(dump_request, args))
        label = kind.label(kind.name(args))
        descriptor, file_name = tempfile.mkstemp(prefix="virtmesh-edit-", suffix=".xml")
        path = Path(file_name)
        with os.fdopen(descriptor, "w") as file:
            file.write(original.xml)
        defined = False
        try:
            while True:
                run_editor(path)
                edited = path.read_text()
                if edited == original.xml:
                    out.show(original, f"{label} XML configuration not changed")
                    return
                try:
                    response = client.call(define_method, define_request(xml=edited))
                except ClientError as error:
                    if edit_again(error):
                        continue
                    raise
                defined = True
                out.show(response, f"{label} XML configuration edited")
                return
        finally:  # an edit that was not defined stays for the user
            if defined or path.read_text() == original.xml:
                path.unlink()
            else:
                print(f"virtmesh: your edit is kept in {path}", file=sys.stderr)

    return commands.add(name, handler, summary)
