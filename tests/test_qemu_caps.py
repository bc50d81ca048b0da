"""The QEMU capability cache shared by embedded roots (services/common/qemu_caps.py).

libvirt's own debug log of its capability cache says what it did with each
entry: loaded a seeded one, found it outdated and probed again, or had none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common.qemu_caps import ROOT_SUBDIR, SharedCache, emulator_of
from tests.conftest import ROOT

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(120)]

PROBE = """
import sys
from pathlib import Path
import libvirt
from services.common.libvirt_connection import start_event_loop
from services.common.qemu_caps import SharedCache
from services.common.config import Config
from services.compute.backend import prepare_embedded_root
start_event_loop()
root, emulator, cache = Path(sys.argv[1]), sys.argv[2], SharedCache(Path(sys.argv[3]))
prepare_embedded_root(Config(service="compute", state_dir=root, uri=f"qemu:///embed?root={root}"))
cache.seed(root)
conn = libvirt.open(f"qemu:///embed?root={root}")
conn.getDomainCapabilities(emulator, "x86_64", None, "qemu", 0)
conn.close()
cache.collect(root)
"""


def probe(tmp_path: Path, emulator: Path, cache: Path, run: str) -> str:
    """Domain capabilities of ``emulator`` on a new embedded root seeded from
    ``cache``; libvirt's own debug log of its capability cache."""
    log = tmp_path / f"{run}.log"
    environ = {**os.environ, "LIBVIRT_LOG_OUTPUTS": f"1:file:{log}",
               "LIBVIRT_LOG_FILTERS": "1:util.filecache 1:qemu.qemu_capabilities 4:*"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / run), str(emulator),
                           str(cache)], capture_output=True, text=True, cwd=ROOT, env=environ,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return "\n".join(line for line in log.read_text().splitlines() if str(emulator) in line)


def entry_of(cache: Path, emulator: Path) -> Path:
    found = [p for p in cache.glob("*.xml") if emulator_of(p.read_bytes()) == str(emulator)]
    assert len(found) == 1, f"{cache} has {len(found)} entries for {emulator}"
    return found[0]


def test_a_new_root_starts_from_the_shared_cache_and_a_changed_qemu_is_probed_again(
        tmp_path: Path) -> None:
    # A QEMU of the test's own, whose ctime is ours to change: a wrapper (a copy of the
    # binary would look for its modules beside itself).
    emulator = tmp_path / "qemu-system-x86_64"
    real = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    emulator.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    emulator.chmod(0o755)
    cache = tmp_path / "shared"

    first = probe(tmp_path, emulator, cache, "first")
    assert "No cached data" in first and "Loaded cached data" not in first, first
    entry = entry_of(cache, emulator)
    probed = entry.read_bytes()

    second = probe(tmp_path, emulator, cache, "second")
    assert "Loaded cached data" in second and "Outdated" not in second, second
    assert (tmp_path / "second" / ROOT_SUBDIR / entry.name).read_bytes() == probed
    assert entry.read_bytes() == probed  # nothing new to collect

    time.sleep(1.1)  # libvirt keeps the binary's ctime in seconds
    emulator.chmod(0o755 if emulator.stat().st_mode & 0o777 != 0o755 else 0o775)
    third = probe(tmp_path, emulator, cache, "third")
    assert "Outdated capabilities" in third, third
    assert "Loaded cached data" not in third.split("Outdated capabilities")[1], third
    refreshed = entry.read_bytes()
    assert refreshed != probed, "the re-probed entry did not replace the stale one"
    ctime = int(emulator.stat().st_ctime)
    assert f"<qemuctime>{ctime}</qemuctime>".encode() in refreshed


def _entry(directory: Path, name: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)


def test_seed_prefers_the_users_entries_and_never_overwrites_the_roots(tmp_path: Path) -> None:
    node, user, root = tmp_path / "node", tmp_path / "user", tmp_path / "root"
    a, b, c = ("a" * 64 + ".xml", "b" * 64 + ".xml", "c" * 64 + ".xml")
    _entry(node, a, "node-a")
    _entry(node, b, "node-b")
    _entry(user, b, "user-b")
    _entry(root / ROOT_SUBDIR, c, "root-c")
    _entry(user, c, "user-c")
    _entry(user, "not-an-entry.xml", "x")
    cache = SharedCache(user, (node,))
    assert cache.seed(root) == [a, b]
    held = {p.name: p.read_text() for p in (root / ROOT_SUBDIR).iterdir()}
    assert held == {a: "node-a", b: "user-b", c: "root-c"}
    # collect writes only the user's cache, and only what differs
    assert cache.collect(root) == [a, c]
    assert (node / a).read_text() == "node-a" and (user / c).read_text() == "root-c"
    assert cache.collect(root) == []


def test_no_shared_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTMESH_CAPS_CACHE", "none")
    cache = SharedCache.from_setting()
    assert not cache.enabled
    _entry(tmp_path / ROOT_SUBDIR, "d" * 64 + ".xml", "x")
    assert cache.seed(tmp_path / "other") == [] and cache.collect(tmp_path) == []
    monkeypatch.setenv("VIRTMESH_CAPS_CACHE", str(tmp_path / "mine"))
    assert SharedCache.from_setting().writable == tmp_path / "mine"
    assert SharedCache.from_setting(str(tmp_path / "flag")).writable == tmp_path / "flag"
