"""A thread that calls an embedded libvirt driver carries the process's identity
(services/common/libvirt_identity.py): without one, libvirt 9.0 cannot elevate it
before reading a secret for QEMU, and every guest with an encrypted disk fails to
start (tests/test_secrets_e2e.py shows the guest side)."""

from __future__ import annotations

import ctypes
import threading

import libvirt  # noqa: F401  (loads libvirt.so.0)

from services.common.libvirt_identity import adopt_system_identity

_lib = ctypes.CDLL("libvirt.so.0")
_lib.virIdentityGetCurrent.restype = ctypes.c_void_p
_lib.virIdentityGetCurrent.argtypes = []


def current_identity_on_a_new_thread(adopt: bool) -> bool:
    seen: list[bool] = []

    def run() -> None:
        if adopt:
            adopt_system_identity()
            adopt_system_identity()  # once per thread; a second call changes nothing
        seen.append(bool(_lib.virIdentityGetCurrent()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


def test_a_thread_has_no_identity_until_it_adopts_the_process_one() -> None:
    assert not current_identity_on_a_new_thread(adopt=False)
    assert current_identity_on_a_new_thread(adopt=True)
