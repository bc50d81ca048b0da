"""Does KVM boot a kernel here? Decided by booting one, not by /dev/kvm's existence.

On nested or PVM-based KVM, /dev/kvm opens and answers but a stock kernel does
not boot under it (the guest sits paused with "emulation failure"). So: boot
the example guest under KVM with virtmesh-run for a few seconds and see whether
it reaches "virtmesh-guest: booted" on its console; fall back to TCG ("qemu")
when it does not. The verdict is kept per host in the user's cache
(``~/.cache/virtmesh/kvm-verdict.json``), keyed on what decides it: the host
kernel, the QEMU binary (path, size, ctime), libvirt's version and the guest
kernel (its digest). When one of them changes, the probe runs again.

    python -m guest.kvm_probe [--state-dir .virtmesh] [--again]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guest import example
from services.common.qemu_caps import user_cache_dir

BOOTED = "virtmesh-guest: booted"
#: seconds KVM gets to boot the example guest (it takes about one where KVM works)
PROBE_SECONDS = 10.0


@dataclass(frozen=True)
class Verdict:
    virt_type: str  # "kvm" or "qemu"
    why: str
    cached: bool = False


def verdict_file() -> Path:
    return user_cache_dir().parent / "kvm-verdict.json"


def _stamp(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{path}:{info.st_size}:{info.st_ctime_ns}"


def host_key(state_dir: Path) -> dict[str, str]:
    """What the verdict depends on; a change in any of it means probing again."""
    qemu = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    try:
        libvirt_version = subprocess.run(["virsh", "--version"], capture_output=True,
                                         text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        libvirt_version = "unknown"
    return {"host_kernel": " ".join(os.uname()[2:4]), "qemu": _stamp(qemu),
            "libvirt": libvirt_version,
            "guest_kernel": _digest(state_dir / "guest" / "vmlinuz")}


def _digest(path: Path) -> str:
    """The guest kernel by content: every state directory has its own copy."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def boots(state_dir: Path, virt_type: str, seconds: float) -> tuple[bool, str]:
    """Boot the example guest under ``virt_type`` with virtmesh-run for at most
    ``seconds``; whether it printed the boot line, and what was seen."""
    directory = Path(tempfile.mkdtemp(prefix="kvm-probe-"))
    xml = directory / "probe.xml"
    xml.write_text(example.render("kvm-probe", state_dir, virt_type))
    argv = [sys.executable, "-m", "virtmesh_run", str(xml), "--json",
            "--timeout", str(seconds), "--grace-period", "0"]
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    lines = 0
    try:
        for raw in process.stdout:
            event = json.loads(raw)
            if event["event"] == "console":
                lines += 1
                if BOOTED in event["line"]:
                    return True, (f"the example kernel booted under {virt_type} in "
                                  f"{time.monotonic() - started:.1f} s")
            elif event["event"] == "stopped":
                break
        stderr = process.stderr.read().strip() if process.stderr else ""
        if process.wait() == 2:
            return False, f"cannot start a {virt_type} guest: {stderr.splitlines()[-1:]}"
        return False, (f"the example kernel did not boot under {virt_type} in {seconds:g} s "
                       f"({lines} console line(s))")
    finally:
        if process.poll() is None:
            process.terminate()  # it destroys the guest and removes its root
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(directory, ignore_errors=True)


def decide(state_dir: Path, again: bool = False,
           probe: Callable[[Path, str, float], tuple[bool, str]] = boots,
           cache: Path | None = None) -> Verdict:
    """kvm when /dev/kvm works and the example kernel boots under it, else qemu."""
    if not example.kvm_usable():
        return Verdict("qemu", "no usable /dev/kvm")
    if not (state_dir / "guest" / "vmlinuz").exists():
        return Verdict("kvm", "/dev/kvm works; no example kernel to try it with")
    cache = cache or verdict_file()
    key = host_key(state_dir)
    if not again:
        with contextlib.suppress(OSError, ValueError, KeyError):
            known = json.loads(cache.read_text())
            if known["key"] == key:
                return Verdict(known["virt_type"], known["why"], cached=True)
    ok, why = probe(state_dir, "kvm", PROBE_SECONDS)
    verdict = Verdict("kvm" if ok else "qemu", why)
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_name(f".{cache.name}.{os.getpid()}")
        temporary.write_text(json.dumps({"key": key, "virt_type": verdict.virt_type,
                                         "why": why, "probed": time.time()}, indent=1))
        os.replace(temporary, cache)
    return verdict


def describe(verdict: Verdict) -> str:
    name = "KVM" if verdict.virt_type == "kvm" else "TCG (qemu)"
    return f"{name}: {verdict.why}{' (cached verdict)' if verdict.cached else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description="decide kvm or qemu by booting a kernel")
    parser.add_argument("--state-dir", type=Path, default=Path(".virtmesh"))
    parser.add_argument("--again", action="store_true", help="ignore the cached verdict")
    args = parser.parse_args()
    verdict = decide(args.state_dir, args.again)
    print(f"{verdict.virt_type}\t{describe(verdict)}")


if __name__ == "__main__":
    main()
