#!/usr/bin/env python3
"""Write the Linux key names virsh send-key takes, from the kernel's header.

Usage:
  tools/linux-key-names.py /usr/include/linux/input-event-codes.h \
      > services/compute/linux_key_names.txt

One ``NAME CODE`` a line for every ``#define KEY_*`` and ``BTN_*`` with a number
or an alias of one (KEY_MIN_INTERESTING and the *_MAX/*_CNT bounds left out):
the names of libvirt's linux code set (virsh send-key KEY_ENTER). The compute
service reads the file, so containers need no kernel headers.
"""

import re
import sys

DEFINE = re.compile(r"^#define\s+((?:KEY|BTN)_[A-Z0-9_]+)\s+(\S+)")
LEFT_OUT = re.compile(r"_(MAX|CNT)$|^KEY_MIN_INTERESTING$")


def names(header: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in header.splitlines():
        match = DEFINE.match(line)
        if not match or LEFT_OUT.search(match.group(1)):
            continue
        name, value = match.groups()
        if value in found:
            found[name] = found[value]
        else:
            try:
                found[name] = int(value, 0)
            except ValueError:
                continue
    return found


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as header:
        table = names(header.read())
    for name, code in sorted(table.items(), key=lambda item: (item[1], item[0])):
        print(name, code)


if __name__ == "__main__":
    main()
