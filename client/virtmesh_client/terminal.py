"""This terminal joined to a guest's console, as virsh console does it: raw mode on
a terminal, every key to the guest, and Ctrl-] to leave. Used by ``virtmesh
console``/``channel`` and by ``virtmesh-run --console``."""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from collections.abc import Callable, Iterator

#: Ctrl-], as virsh console
ESCAPE = b"\x1d"


@contextlib.contextmanager
def raw(fd: int) -> Iterator[bool]:
    """``fd`` in raw mode while inside, restored whatever happens, if it is a
    terminal; says whether it is."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def forward(fd: int, send: Callable[[bytes], object], interactive: bool) -> bool:
    """What is read from ``fd`` to ``send``, until its end or (``interactive``)
    Ctrl-]; True if Ctrl-] ended it. A read error is taken for the end."""
    try:
        while data := os.read(fd, 4096):
            if interactive and ESCAPE in data:
                if data.index(ESCAPE):
                    send(data[:data.index(ESCAPE)])
                return True
            send(data)
    except OSError:
        pass  # closed under us: end as at its end
    return False
