"""A QEMU capability cache that outlives embedded roots.

Before its first guest, libvirt's QEMU driver probes every QEMU binary it may
use (about 4 s each here) and keeps the result under
``<root>/cache/qemu/capabilities/<sha256 of the binary's path>.xml``. An
embedded root (``qemu:///embed?root=DIR``) starts with an empty cache, so each
new root pays for the probes again. This module keeps those files in a
directory shared by roots: ``seed(root)`` copies the known entries into a new
root before libvirt opens it, and ``collect(root)`` brings back what libvirt
probed there.

Nothing here decides whether an entry is still valid: libvirt does that itself
when it loads a file (the binary's path and ctime, the modules directory, its
own version and ctime, the host kernel, CPU signature and microcode, the KVM
version). A stale entry is re-probed by libvirt and never used; the fresh
result replaces it at the next ``collect``.

Where the cache lives, and who may write it:

- the node-wide cache, ``/var/cache/virtmesh/qemu-capabilities``: read only
  (seeded from, never written); the administrator fills it, e.g. by copying
  a warm root's ``cache/qemu/capabilities`` there;
- the user's cache: ``$VIRTMESH_CAPS_CACHE`` if set, else
  ``$XDG_CACHE_HOME/virtmesh/qemu-capabilities`` (``~/.cache/...``); created
  with mode 0700, written only by that user (a capability file tells libvirt
  what QEMU can do, so only someone who may run QEMU as this user may write
  it). It wins over the node-wide copy of an entry. ``none`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: where an embedded root keeps libvirt's capability files
ROOT_SUBDIR = Path("cache") / "qemu" / "capabilities"
NODE_CACHE = Path("/var/cache/virtmesh/qemu-capabilities")
ENV = "VIRTMESH_CAPS_CACHE"
_ENTRY = re.compile(r"^[0-9a-f]{64}\.xml$")
_MAX_BYTES = 8 * 1024 * 1024


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "virtmesh" / "qemu-capabilities"


@dataclass(frozen=True)
class SharedCache:
    """The shared cache: ``writable`` (None: do not collect) and read-only seeds."""

    writable: Path | None
    read_only: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def from_setting(cls, setting: str | None = None) -> SharedCache:
        """``setting`` (a flag's value; None or empty: ``$VIRTMESH_CAPS_CACHE``, then
        the user's cache) is a directory, or ``none`` for no shared cache at all."""
        value = setting or os.environ.get(ENV) or ""
        if value == "none":
            return cls(None, ())
        writable = Path(value).absolute() if value else user_cache_dir()
        node = (NODE_CACHE,) if NODE_CACHE.is_dir() and writable != NODE_CACHE else ()
        return cls(writable, node)

    @property
    def enabled(self) -> bool:
        return self.writable is not None or bool(self.read_only)

    def describe(self) -> str:
        if not self.enabled:
            return "none"
        parts = [f"{self.writable} (read-write)"] if self.writable else []
        parts += [f"{path} (read-only)" for path in self.read_only]
        return ", ".join(parts)

    def _sources(self) -> list[Path]:
        """Lowest precedence first: the user's own entries win."""
        return [*self.read_only, *([self.writable] if self.writable else [])]

    def seed(self, root: Path) -> list[str]:
        """Copy the shared entries into ``root``'s cache where it has none; the names
        of the entries copied. Call before libvirt opens the root."""
        target = root / ROOT_SUBDIR
        entries: dict[str, Path] = {}
        for source in self._sources():
            for path in _entries(source):
                entries[path.name] = path
        seeded = []
        for name, path in sorted(entries.items()):
            if (target / name).exists():
                continue
            data = _read(path)
            if data is None:
                continue
            target.mkdir(parents=True, exist_ok=True)
            _write_atomically(target / name, data, 0o600)
            seeded.append(name)
        if seeded:
            log.info("capability cache: seeded %d entr%s into %s from %s", len(seeded),
                     "y" if len(seeded) == 1 else "ies", target, self.describe())
        return seeded

    def collect(self, root: Path) -> list[str]:
        """Copy ``root``'s entries that the writable cache lacks or holds otherwise
        (libvirt re-probed them) into it; the names of the entries written."""
        if self.writable is None:
            return []
        written = []
        for path in _entries(root / ROOT_SUBDIR):
            data = _read(path)
            if data is None:
                continue
            shared = self.writable / path.name
            if _read(shared) == data:
                continue
            try:
                _make_private_dir(self.writable)
                _write_atomically(shared, data, 0o644)
            except OSError as error:
                log.warning("capability cache: cannot write %s: %s", shared, error)
                continue
            written.append(path.name)
        if written:
            log.info("capability cache: stored %d new or re-probed entr%s in %s",
                     len(written), "y" if len(written) == 1 else "ies", self.writable)
        return written


def emulator_of(data: bytes) -> str | None:
    """The QEMU binary an entry describes (its ``<emulator>``)."""
    match = re.search(rb"<emulator>([^<]*)</emulator>", data)
    return match.group(1).decode(errors="replace") if match else None


def _entries(directory: Path) -> list[Path]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [directory / name for name in sorted(names)
            if _ENTRY.match(name) and (directory / name).is_file()
            and not (directory / name).is_symlink()]


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_BYTES + 1)
    except OSError:
        return None
    return data if len(data) <= _MAX_BYTES else None


def _make_private_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Readers (other roots seeding) never see half a file; the last writer wins."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
