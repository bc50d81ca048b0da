"""libvirt's XML parser in a throwaway child process, before our own libvirt sees it.

An embedded driver parses in our process, so a document that crashes libvirt's
parser crashes the service. ``ParseSandbox.parse`` hands the document first to a
child that holds libvirt's test driver on an empty node and defines it there with
libvirt's schema validation, then undefines it. Most of the parsing (domain_conf.c
and the other *_conf.c files, the RelaxNG validation) is shared by every driver, so
a document that crashes it crashes the child instead: the caller gets
INVALID_ARGUMENT, a new child starts for the next call, and the real driver never
sees the document. The child's address space is bounded, so a document that makes
libvirt allocate without bound (a vCPU count of 2^32) fails there, fast.

What the child answers is not the real driver's answer (the test driver differs in
what it supports), so only a schema refusal is passed on; anything else, success
included, lets the call go on to the real driver.

Run as ``python -m services.common.sandbox``, the module is the child: one request a
line on stdin (JSON: kind, xml), one answer a line on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import select
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import grpc
import libvirt

from services.common import deadline
from services.common.errors import ServiceError

log = logging.getLogger(__name__)

#: what a document may cost the child before it counts as hostile
TIMEOUT = 10.0
MEMORY_LIMIT = 2 * 1024 ** 3
#: a device is parsed inside the smallest domain the schema accepts
_DEVICE_HOST = ("<domain type='test'><name>virtmesh-sandbox</name><memory>1024</memory>"
                "<os><type>hvm</type></os><devices>{}</devices></domain>")
KINDS = ("domain", "device", "snapshot", "checkpoint", "network", "pool", "volume")
#: a checkpoint is taken of a running domain with a disk (the test driver's rule)
_DISK_HOST = ("<domain type='test'><name>virtmesh-sandbox</name><memory>1024</memory>"
              "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
              "<driver name='qemu' type='qcow2'/>"
              "<source file='/nonexistent/virtmesh-sandbox.qcow2'/><target dev='vda'/>"
              "</disk></devices></domain>")
#: the pool a volume document is created in
_VOLUME_HOST = ("<pool type='dir'><name>virtmesh-sandbox</name>"
                "<target><path>/nonexistent/virtmesh-sandbox</path></target></pool>")


class ParseSandbox:
    """One child at a time, started on first use and again after it died."""

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._closed = False

    def _start(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, "-m", "services.common.sandbox"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        self._child = child
        return child

    def parse(self, kind: str, xml: str) -> None:
        """Refuse ``xml`` (of ``kind``, one of KINDS) if libvirt's parser crashes on it,
        takes too long, or finds it against libvirt's schema."""
        assert kind in KINDS, kind
        with self._lock:
            if self._closed:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the service is stopping",
                                   "SHUTTING_DOWN")
            answer = self._ask(kind, xml)
        if answer.get("code") == libvirt.VIR_ERR_XML_INVALID_SCHEMA:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(answer.get("message")),
                               "VIR_ERR_XML_INVALID_SCHEMA")

    def _ask(self, kind: str, xml: str) -> dict[str, Any]:
        child = self._child
        if child is None or child.poll() is not None:
            child = self._start()
        assert child.stdin is not None and child.stdout is not None
        wait = min(self.timeout, deadline.remaining())
        try:
            child.stdin.write(json.dumps({"kind": kind, "xml": xml}).encode() + b"\n")
            child.stdin.flush()
            ready, _, _ = select.select([child.stdout], [], [], max(wait, 0))
            line = child.stdout.readline() if ready else b""
        except OSError:  # the child died while we wrote
            line = b""
        if line:
            return json.loads(line)  # type: ignore[no-any-return]
        self._kill(child)
        if not ready and wait < self.timeout:
            deadline.check("libvirt's parser had read the document")
        if not ready:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"libvirt's parser took more than {self.timeout:g} s over "
                               "this document; it was not passed on", "DOCUMENT_TOO_COMPLEX")
        log.warning("libvirt's parser crashed in the sandbox on a %s document (exit status "
                    "%s); the document was refused", kind, child.returncode)
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"libvirt's parser crashed on this {kind} document (in a "
                           "sandbox: nothing else was affected); it was not passed on",
                           "LIBVIRT_PARSER_CRASHED")

    def _kill(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        self._child = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._child is not None:
                self._kill(self._child)


def _define(conn: libvirt.virConnect, kind: str, xml: str) -> None:
    """Parse ``xml`` the way the define call of its kind does, and leave nothing."""
    if kind == "device":
        kind, xml = "domain", _DEVICE_HOST.format(xml)
    if kind == "domain":
        conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE).undefine()
    elif kind == "snapshot":
        host = conn.defineXMLFlags(_DEVICE_HOST.format(""), 0)
        try:
            host.snapshotCreateXML(xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_VALIDATE
                                   | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
        finally:
            host.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    elif kind == "checkpoint":
        host = conn.createXML(_DISK_HOST, 0)
        try:
            host.checkpointCreateXML(xml, 0)
        finally:
            host.destroy()
    elif kind == "network":
        conn.networkDefineXMLFlags(xml, libvirt.VIR_NETWORK_DEFINE_VALIDATE).undefine()
    elif kind == "pool":
        conn.storagePoolDefineXML(xml, libvirt.VIR_STORAGE_POOL_DEFINE_VALIDATE).undefine()
    elif kind == "volume":
        pool = conn.storagePoolCreateXML(_VOLUME_HOST, 0)
        try:
            pool.createXML(xml, libvirt.VIR_STORAGE_VOL_CREATE_VALIDATE).delete()
        finally:
            pool.destroy()


def _serve() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libvirt.registerErrorHandler(lambda *_: None, None)
    with tempfile.TemporaryDirectory(prefix="virtmesh-sandbox-") as scratch:
        node = Path(scratch) / "node.xml"
        node.write_text("<node/>")
        conn = libvirt.open(f"test://{node}")
        for line in sys.stdin.buffer:
            request = json.loads(line)
            try:
                _define(conn, request["kind"], request["xml"])
                answer: dict[str, Any] = {"code": 0}
            except libvirt.libvirtError as error:
                answer = {"code": error.get_error_code(), "message": str(error)}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    _serve()
