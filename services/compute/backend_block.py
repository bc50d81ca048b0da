"""Disks and interfaces of a domain: sizes, statistics, peeks, resizing, I/O throttling
and block jobs (copy, commit, pull, rebase).

What a caller names is checked before libvirt sees it: a disk or device name is
required and holds no NUL character (libvirt-python refuses one with a plain
ValueError, which would be INTERNAL), a peek reads at most 64 KiB, a bandwidth fits
libvirt's signed range, and a destination file of a copy is an absolute path in
normal form that does not exist yet (unless the caller says it does). A copy whose
start fails leaves no new file behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import libvirt

from services.common import documents
from services.common.errors import ServiceError, invalid, require
from services.compute.backend import ComputeBackend, must_run
from services.compute.backend_tuning import call_in_range, checked_changes, one_scope

log = logging.getLogger(__name__)

#: the most bytes one peek reads (libvirt's own bound of a peek's buffer in virsh and
#: its remote protocol before 4 MiB; large reads are a stream's job)
PEEK_MAX = 65536
#: libvirt takes bandwidths in bytes per second as unsigned long but refuses more
#: than LLONG_MAX
BANDWIDTH_MAX = 2**63 - 1
#: the longest disk, device or path name taken (PATH_MAX)
NAME_MAX = 4096
_FORMAT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def checked_name(value: str, field: str) -> str:
    """A disk, device or layer name as libvirt may be handed it."""
    require(value, field)
    return optional_name(value, field)


def optional_name(value: str, field: str) -> str:
    if "\0" in value:
        raise invalid(f"{field} holds a NUL character")
    if len(value) > NAME_MAX:
        raise invalid(f"{field} is longer than {NAME_MAX} characters")
    return value


def _peek_size(size: int) -> int:
    if not 0 < size <= PEEK_MAX:
        raise invalid(f"size: a peek reads 1 to {PEEK_MAX} bytes, not {size}",
                       "PEEK_TOO_LARGE" if size else "MISSING_FIELD")
    return size


def _bandwidth(value: int) -> int:
    if value > BANDWIDTH_MAX:
        raise invalid(f"bandwidth_bytes: at most {BANDWIDTH_MAX} bytes per second")
    return value


def destination_path(text: str, reuse_external: bool, field: str = "path") -> Path:
    """A file a job writes: absolute and in normal form; new unless ``reuse_external``
    (then it must exist), in a directory that exists."""
    checked_name(text, field)
    if not os.path.isabs(text) or os.path.normpath(text) != text:
        raise invalid(f"{field} {text!r} is not an absolute path in normal form",
                       "INVALID_PATH")
    path = Path(text)
    if reuse_external:
        if not path.exists():
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"there is no file {path} to reuse",
                               "NO_FILE")
    elif path.exists() or path.is_symlink():
        raise ServiceError(grpc.StatusCode.ALREADY_EXISTS,
                           f"{path} already exists (reuse_external to write into it)",
                           "FILE_EXISTS")
    elif not path.parent.is_dir():
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"directory {path.parent} does not exist", "NO_DIRECTORY")
    return path


def destination_xml(path: Path, file_format: str) -> str:
    """virsh blockcopy's <disk> document for --dest and --format."""
    disk = ET.Element("disk", type="file")
    ET.SubElement(disk, "source", file=str(path))
    if file_format:
        if not _FORMAT.fullmatch(file_format):
            raise invalid(f"format {file_format!r} is not a format name (raw, qcow2, ...)")
        ET.SubElement(disk, "driver", type=file_format)
    return ET.tostring(disk, encoding="unicode")


@contextlib.contextmanager
def _no_new_file(path: Path | None) -> Iterator[None]:
    """Remove ``path``, which did not exist before, should the block fail."""
    try:
        yield
    except BaseException:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.info("removed the destination %s of a failed block job", path)
        raise


class BlockBackend:
    """The libvirt side of the block and device RPCs; domains through
    ``ComputeBackend.lookup``."""

    def __init__(self, compute: ComputeBackend) -> None:
        self.compute = compute

    # -- sizes, statistics and peeks ------------------------------------------------

    def block_info(self, name: str, disk: str) -> tuple[int, int, int]:
        """Capacity, allocation and physical size in bytes."""
        checked_name(disk, "disk")
        capacity, allocation, physical = self.compute.lookup(name).blockInfo(disk, 0)
        return int(capacity), int(allocation), int(physical)

    def block_stats(self, name: str, disk: str) -> dict[str, Any]:
        optional_name(disk, "disk")
        dom = self.compute.lookup(name)
        must_run(dom)
        return dict(dom.blockStatsFlags(disk, 0))

    def interface_stats(self, name: str, device: str) -> tuple[int, ...]:
        """rx bytes, packets, errs, drop, then tx the same."""
        checked_name(device, "device")
        return tuple(int(value) for value in self.compute.lookup(name).interfaceStats(device))

    def memory_stats(self, name: str) -> dict[str, int]:
        return {str(key): int(value)
                for key, value in self.compute.lookup(name).memoryStats().items()}

    def block_peek(self, name: str, disk: str, offset: int, size: int) -> bytes:
        checked_name(disk, "disk")
        _peek_size(size)
        if offset > BANDWIDTH_MAX:
            raise invalid(f"offset: at most {BANDWIDTH_MAX}")
        return bytes(self.compute.lookup(name).blockPeek(disk, offset, size, 0))

    def memory_peek(self, name: str, address: int, size: int, physical: bool) -> bytes:
        _peek_size(size)
        flags = libvirt.VIR_MEMORY_PHYSICAL if physical else libvirt.VIR_MEMORY_VIRTUAL
        return bytes(self.compute.lookup(name).memoryPeek(address, size, flags))

    def resize(self, name: str, disk: str, size: int, shrink: bool) -> None:
        checked_name(disk, "disk")
        if not size:
            raise invalid("size_bytes: a disk has a size", "MISSING_FIELD")
        dom = self.compute.lookup(name)
        must_run(dom)
        capacity = int(dom.blockInfo(disk, 0)[0])
        if size < capacity and not shrink:
            raise invalid(f"disk {disk} has {capacity} bytes: {size} would cut the guest's "
                           "data off (shrink to allow it)", "SHRINK_NOT_ASKED")
        call_in_range(dom.blockResize, disk, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    # -- I/O throttling ---------------------------------------------------------------

    def io_tune(self, name: str, disk: str, flags: int) -> dict[str, Any]:
        checked_name(disk, "disk")
        return dict(self.compute.lookup(name).blockIoTune(disk, one_scope(flags)))

    def set_io_tune(self, name: str, disk: str, changes: Mapping[str, Any], flags: int) -> None:
        """Checked against what the disk has in the same scope (live when both)."""
        checked_name(disk, "disk")
        dom = self.compute.lookup(name)
        both = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        read = flags & ~libvirt.VIR_DOMAIN_AFFECT_CONFIG if flags & both == both else flags
        checked = checked_changes(changes, dom.blockIoTune(disk, read))
        call_in_range(dom.setBlockIoTune, disk, checked, flags)

    # -- block jobs ---------------------------------------------------------------------

    def _job_domain(self, name: str, disk: str) -> libvirt.virDomain:
        checked_name(disk, "disk")
        dom = self.compute.lookup(name)
        must_run(dom)
        return dom

    def copy(self, name: str, disk: str, xml: str, path: str, file_format: str,
             bandwidth: int, flags: int) -> None:
        """Start a copy to the <disk> document ``xml`` or to file ``path``."""
        checked_name(disk, "disk")
        reuse = bool(flags & libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT)
        new_file: Path | None = None
        if xml:
            documents.check(xml, "destination_xml", root="disk", fragment=True)
        elif path:
            target = destination_path(path, reuse)
            xml = destination_xml(target, file_format)
            new_file = None if reuse else target
        else:
            raise invalid("say where to copy: destination_xml or destination_file",
                           "MISSING_FIELD")
        params = {libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH: _bandwidth(bandwidth)} \
            if bandwidth else {}
        dom = self._job_domain(name, disk)
        with _no_new_file(new_file):
            call_in_range(dom.blockCopy, disk, xml, params, flags)

    def commit(self, name: str, disk: str, base: str, top: str, bandwidth: int,
               flags: int) -> None:
        optional_name(base, "base")
        optional_name(top, "top")
        dom = self._job_domain(name, disk)
        call_in_range(dom.blockCommit, disk, base or None, top or None, _bandwidth(bandwidth),
                   flags | libvirt.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES)

    def pull(self, name: str, disk: str, bandwidth: int) -> None:
        dom = self._job_domain(name, disk)
        call_in_range(dom.blockPull, disk, _bandwidth(bandwidth),
                   libvirt.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES)

    def rebase(self, name: str, disk: str, base: str, bandwidth: int, flags: int) -> None:
        """With VIR_DOMAIN_BLOCK_REBASE_COPY, ``base`` is a file the copy writes."""
        optional_name(base, "base")
        new_file: Path | None = None
        if flags & libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY:
            reuse = bool(flags & libvirt.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT)
            target = destination_path(base, reuse, "base")
            new_file = None if reuse else target
        dom = self._job_domain(name, disk)
        with _no_new_file(new_file):
            call_in_range(dom.blockRebase, disk, base or None, _bandwidth(bandwidth),
                       flags | libvirt.VIR_DOMAIN_BLOCK_REBASE_BANDWIDTH_BYTES)

    def abort_job(self, name: str, disk: str, flags: int) -> None:
        dom = self._job_domain(name, disk)
        dom.blockJobAbort(disk, flags)

    def set_job_speed(self, name: str, disk: str, bandwidth: int) -> None:
        dom = self._job_domain(name, disk)
        call_in_range(dom.blockJobSetSpeed, disk, _bandwidth(bandwidth),
                   libvirt.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES)

    def job_info(self, name: str, disk: str) -> dict[str, int]:
        """The job's type, cur, end and bandwidth (bytes per second); empty: no job."""
        dom = self._job_domain(name, disk)
        info = dom.blockJobInfo(disk, libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES)
        return {str(key): int(value) for key, value in (info or {}).items()}

    def set_threshold(self, name: str, disk: str, threshold: int) -> None:
        dom = self._job_domain(name, disk)
        call_in_range(dom.setBlockThreshold, disk, threshold, 0)
