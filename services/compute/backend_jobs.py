"""Saving, restoring, dumping and jobs: libvirt's long calls, which a caller can abort.

Three guards stand around each call. The save directory: a path names a file inside
it or the call is refused before libvirt sees it. ``DomainCalls``: a few calls per
domain may wait in libvirt at once, so a guest whose QEMU stopped answering (SIGSTOP,
a hung monitor) holds that many of the service's threads, not all of them. And the
call's end (services/common/call_end.py): a caller who cancels, or whose deadline
passes, has libvirt's job aborted, the guest left as it was and no partial file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import libvirt

from services.common.call_end import CallWatch
from services.common.errors import ServiceError, require
from services.common.libvirt_identity import adopt_system_identity
from services.compute.backend import ComputeBackend, must_run
from services.compute.domain_calls import DOMAIN_CALLS, DomainCalls

log = logging.getLogger(__name__)
T = TypeVar("T")

def _invalid_path(text: str, why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"path {text!r} {why}", "INVALID_PATH")


class SaveDir:
    """The directory whose files save images and core dumps are: what a caller may
    name on the node, and nothing else."""

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root.resolve()

    def path(self, text: str) -> Path:
        """``text`` as a file inside the directory (symbolic links resolved)."""
        require(text, "path")
        if "\0" in text:
            raise _invalid_path(text, "holds a NUL character")
        if not os.path.isabs(text):
            raise _invalid_path(text, f"is not absolute (save images live in {self.root})")
        if os.path.normpath(text) != text:
            raise _invalid_path(text, "is not in normal form (no '.', '..', '//' or "
                                "trailing '/')")
        path = Path(os.path.realpath(text))
        if path == self.root or not path.is_relative_to(self.root):
            raise _invalid_path(text, f"is not a file inside the save directory {self.root}")
        return path

    def new_file(self, text: str) -> Path:
        """A file to write: it must not exist yet (nothing of the caller's is ever
        overwritten or half-written) and its directory must."""
        path = self.path(text)
        if path.exists():
            raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"{path} already exists",
                               "FILE_EXISTS")
        if not path.parent.is_dir():
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"directory {path.parent} does not exist", "NO_DIRECTORY")
        return path

    def existing_file(self, text: str) -> Path:
        path = self.path(text)
        if not path.is_file():
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"there is no file {path}",
                               "NO_FILE")
        return path


@contextlib.contextmanager
def _no_file_left(path: Path) -> Iterator[None]:
    """Remove the new file the block writes should the block fail: libvirt's QEMU
    driver removes its own, other drivers may not (the test driver's failed dump)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            log.info("removed the partial file %s", path)
        raise


def _bypass(bypass_cache: bool) -> int:
    return libvirt.VIR_DOMAIN_SAVE_BYPASS_CACHE if bypass_cache else 0


def _abort_job(dom: libvirt.virDomain) -> Callable[[], None]:
    def abort() -> None:
        adopt_system_identity()  # a thread of its own, into an embedded driver
        dom.abortJob()
    return abort


class JobsBackend:
    """The libvirt side of the save, restore, dump and job RPCs."""

    def __init__(self, backend: ComputeBackend, save_dir: Path,
                 domain_calls: int = DOMAIN_CALLS) -> None:
        self.backend = backend
        self.save_dir = SaveDir(save_dir)
        self.calls = DomainCalls(domain_calls)

    @contextlib.contextmanager
    def _domain(self, name: str) -> Iterator[libvirt.virDomain]:
        """Domain ``name``, while this call holds one of its places in libvirt."""
        dom = self.backend.lookup(name)
        with self.calls.held(dom.UUIDString(), dom.name()):
            yield dom

    def _document(self, call: Callable[..., T], xml: str, *args: object) -> T:
        """``call(xml or None, *args)``; a caller's domain XML is checked first, as
        DefineDomain checks it."""
        if not xml:
            return call(None, *args)
        return self.backend._submit("domain", call, xml, *args, root="domain")

    def _plain(self, name: str, watch: CallWatch, doing: str,
               call: Callable[[libvirt.virDomain], T]) -> T:
        """A call libvirt cannot abort, on domain ``name``."""
        with self._domain(name) as dom, watch.guard(doing):
            return call(dom)

    # -- save and restore ------------------------------------------------------

    def save(self, name: str, path: str, xml: str, resume: int, bypass_cache: bool,
             watch: CallWatch) -> None:
        """``resume``: VIR_DOMAIN_SAVE_RUNNING, _PAUSED or 0."""
        target = self.save_dir.new_file(path)
        flags = resume | _bypass(bypass_cache)
        with self._domain(name) as dom:
            must_run(dom)
            with _no_file_left(target), watch.guard(f"saving domain '{dom.name()}'",
                                                    _abort_job(dom)):
                self._document(lambda dxml, *args: dom.saveFlags(str(target), dxml, *args),
                               xml, flags)

    def restore(self, path: str, xml: str, resume: int, bypass_cache: bool,
                watch: CallWatch) -> libvirt.virDomain:
        """The restored domain. Should the call end first, the domain being restored is
        destroyed (libvirt cannot abort a start): it was not running before."""
        image = self.save_dir.existing_file(path)
        conn = self.backend.conn
        saved = ET.fromstring(conn.saveImageGetXMLDesc(str(image), 0))
        uuid, name = saved.findtext("uuid") or "", saved.findtext("name") or ""
        with contextlib.suppress(libvirt.libvirtError):
            if conn.lookupByUUIDString(uuid).isActive():
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"domain '{name}' of the save image is running",
                                   "VIR_ERR_OPERATION_INVALID")

        def destroy() -> None:
            adopt_system_identity()
            conn.lookupByUUIDString(uuid).destroy()

        with self.calls.held(uuid, name), watch.guard(f"restoring domain '{name}'", destroy):
            self._document(lambda dxml, *args: conn.restoreFlags(str(image), dxml, *args),
                           xml, resume | _bypass(bypass_cache))
        return conn.lookupByUUIDString(uuid)

    def save_image_xml(self, path: str, secure: bool) -> str:
        return str(self.backend.conn.saveImageGetXMLDesc(
            str(self.save_dir.existing_file(path)),
            libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE if secure else 0))

    def define_save_image_xml(self, path: str, xml: str, flags: int) -> None:
        image = str(self.save_dir.existing_file(path))
        conn = self.backend.conn
        if not xml:  # the state only: the stored document as it is
            conn.saveImageDefineXML(image, conn.saveImageGetXMLDesc(
                image, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE), flags)
            return
        self._document(lambda dxml, *args: conn.saveImageDefineXML(image, dxml, *args),
                       xml, flags)

    # -- managed save ----------------------------------------------------------

    def managed_save(self, name: str, resume: int, bypass_cache: bool,
                     watch: CallWatch) -> None:
        with self._domain(name) as dom:
            must_run(dom)
            with watch.guard(f"saving domain '{dom.name()}'", _abort_job(dom)):
                dom.managedSave(resume | _bypass(bypass_cache))

    def remove_managed_save(self, name: str, watch: CallWatch) -> None:
        def remove(dom: libvirt.virDomain) -> None:
            if not dom.hasManagedSaveImage(0):
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"domain '{dom.name()}' has no managed save image",
                                   "NO_MANAGED_SAVE")
            dom.managedSaveRemove(0)
        self._plain(name, watch, "removing a managed save image", remove)

    def managed_save_xml(self, name: str, secure: bool, watch: CallWatch) -> str:
        flags = libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE if secure else 0
        return str(self._plain(name, watch, "reading a managed save image",
                               lambda dom: dom.managedSaveGetXMLDesc(flags)))

    def define_managed_save_xml(self, name: str, xml: str, flags: int,
                                watch: CallWatch) -> None:
        def define(dom: libvirt.virDomain) -> None:
            document = xml or dom.managedSaveGetXMLDesc(libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)
            self._document(dom.managedSaveDefineXML, document, flags)
        self._plain(name, watch, "changing a managed save image", define)

    # -- core dumps and jobs ---------------------------------------------------

    def core_dump(self, name: str, path: str, dump_format: int, memory_only: bool,
                  crash: bool, reset: bool, live: bool, bypass_cache: bool,
                  watch: CallWatch) -> None:
        if crash and reset:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "crash and reset exclude each other", "CONFLICTING_FLAGS")
        if dump_format != libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW and not memory_only:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "a format other than raw needs memory_only", "CONFLICTING_FLAGS")
        target = self.save_dir.new_file(path)
        flags = ((libvirt.VIR_DUMP_MEMORY_ONLY if memory_only else 0)
                 | (libvirt.VIR_DUMP_CRASH if crash else 0)
                 | (libvirt.VIR_DUMP_RESET if reset else 0)
                 | (libvirt.VIR_DUMP_LIVE if live else 0)
                 | (libvirt.VIR_DUMP_BYPASS_CACHE if bypass_cache else 0))
        with self._domain(name) as dom:
            must_run(dom)
            with _no_file_left(target), watch.guard(f"dumping domain '{dom.name()}'",
                                                    _abort_job(dom)):
                dom.coreDumpWithFormat(str(target), dump_format, flags)

    def job_stats(self, name: str, completed: bool, keep_completed: bool,
                  watch: CallWatch) -> dict[str, Any]:
        if keep_completed and not completed:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "keep_completed goes with completed", "CONFLICTING_FLAGS")
        flags = ((libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0)
                 | (libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED if keep_completed else 0))
        return dict(self._plain(name, watch, "reading job statistics",
                                lambda dom: dom.jobStats(flags)))

    def abort_job(self, name: str, postcopy: bool, watch: CallWatch) -> None:
        """libvirt's flags call; without ``postcopy``, the older one where a driver
        lacks it (a remote daemon before libvirt 8.5)."""
        flags = libvirt.VIR_DOMAIN_ABORT_JOB_POSTCOPY if postcopy else 0

        def abort(dom: libvirt.virDomain) -> None:
            try:
                dom.abortJobFlags(flags)
            except libvirt.libvirtError as error:
                if flags or error.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                dom.abortJob()
        self._plain(name, watch, "aborting a job", abort)
