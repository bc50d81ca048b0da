"""The example guest's domain XML, rendered for this host.

``make guest`` builds the kernel and initramfs into ``<state_dir>/guest``; this
fills ``guest/domain.xml.in`` with their paths, a serial log file and the
virtualization type.
"""

from __future__ import annotations

import argparse
import fcntl
import os
from pathlib import Path

TEMPLATE = Path(__file__).with_name("domain.xml.in")
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
