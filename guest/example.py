"""The example guest's domain XML, rendered for this host.

``make guest`` builds the kernel and initramfs into ``<state_dir>/guest``; this
fills ``guest/domain.xml.in`` with their paths, a serial log file and the
virtualization type.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
from pathlib import Path

TEMPLATE = Path(__file__).with_name("domain.xml.in")
#: the example guest's line once it has booted
BOOTED = "virtmesh-guest: booted"
_KVM_GET_API_VERSION = 0xAE00


def kvm_usable() -> bool:
    """True when /dev/kvm opens and answers, i.e. KVM guests can start."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def default_virt_type() -> str:
    return "kvm" if kvm_usable() else "qemu"


def render(name: str, state_dir: Path, virt_type: str | None = None) -> str:
    guest_dir = state_dir.absolute() / "guest"
    for part in ("vmlinuz", "initrd.img"):
        if not (guest_dir / part).exists():
            raise FileNotFoundError(f"{guest_dir / part} is missing: run `make guest`")
    replacements = {
        "@NAME@": name,
        "@VIRT_TYPE@": virt_type or default_virt_type(),
        "@KERNEL@": str(guest_dir / "vmlinuz"),
        "@INITRD@": str(guest_dir / "initrd.img"),
        "@SERIAL_LOG@": str(guest_dir / f"{name}.console.log"),
    }
    xml = TEMPLATE.read_text()
    for placeholder, value in replacements.items():
        xml = xml.replace(placeholder, value)
    return xml


def poweroff_initrd(state_dir: Path, directory: Path, message: str = BOOTED) -> Path:
    """The example initramfs with an /init that prints ``message`` and powers off as
    soon as it has booted: a second archive appended to the first replaces its /init
    (the kernel unpacks them in order). For runs whose guest must end by itself."""
    extra = directory / "extra"
    extra.mkdir(exist_ok=True)
    (extra / "init").write_text("#!/bin/sh\nexport PATH=/sbin:/usr/sbin:/bin:/usr/bin\n"
                                "mount -t devtmpfs devtmpfs /dev 2>/dev/null\n"
                                "exec </dev/console >/dev/console 2>&1\n"
                                f"echo '{message}'\npoweroff -f\n")
    (extra / "init").chmod(0o755)
    archive = subprocess.run("echo init | cpio --quiet -o -H newc -R 0:0 | gzip -9n",
                             shell=True, cwd=extra, capture_output=True, check=True).stdout
    initrd = directory / "poweroff-initrd.img"
    initrd.write_bytes((state_dir / "guest" / "initrd.img").read_bytes() + archive)
    return initrd


def main() -> None:
    parser = argparse.ArgumentParser(description="print the example guest's domain XML")
    parser.add_argument("name", nargs="?", default="demo")
    parser.add_argument("--state-dir", type=Path, default=Path(".virtmesh"))
    parser.add_argument("--virt-type", choices=("kvm", "qemu"),
                        help="default: kvm when /dev/kvm works, else qemu (TCG)")
    args = parser.parse_args()
    print(render(args.name, args.state_dir, args.virt_type), end="")


if __name__ == "__main__":
    main()
