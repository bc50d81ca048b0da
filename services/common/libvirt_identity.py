"""The caller identity an embedded libvirt driver expects on the calling thread.

In a libvirt daemon every API call runs on a worker thread whose *current
identity* is the client's (virIdentitySetCurrent, set by the RPC dispatcher).
Drivers rely on it: before the QEMU driver fetches a secret (a LUKS passphrase,
a Ceph or iSCSI key) from the secret driver, ``virSecretGetSecretString``
elevates the current identity (``virIdentityElevateCurrent``) so that the
secret daemon releases even a private secret's value to the hypervisor and to
nobody else. An embedded driver runs on *our* threads, which have no identity,
and libvirt 9.0 then fails that step ("No current identity to elevate", which
reaches the caller as "An error occurred, but the cause is unknown"): no guest
of an embedded QEMU can use a secret.

So, before a thread of ours calls into an embedded driver, it takes the identity
the process itself has (``virIdentityGetSystem``: its uid, gid, pid and the host's
system token from ``/run/libvirt/common/system.token``), as libvirt's own
``virt-qemu-run`` shim and daemons' workers have one. These are libvirt's
private symbols (exported by libvirt.so.0 for its driver modules, not part of
its stable API); where they are missing nothing is set and the failure stays
libvirt's. The identity is the process's own: it grants nothing the process
does not already have (root reads the same token file as the host's daemon).
"""

from __future__ import annotations

import ctypes
import logging
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_local = threading.local()
_state: dict[str, object] = {}


def _system_identity() -> tuple[ctypes._CFuncPtr, int] | None:  # type: ignore[name-defined]
    """libvirt's virIdentitySetCurrent and one reference to the system identity."""
    with _lock:
        if "result" not in _state:
            _state["result"] = _load()
        return _state["result"]  # type: ignore[return-value]


def _load() -> tuple[ctypes._CFuncPtr, int] | None:  # type: ignore[name-defined]
    try:
        lib = ctypes.CDLL("libvirt.so.0")  # the one libvirt-python already loaded
        get_system, set_current = lib.virIdentityGetSystem, lib.virIdentitySetCurrent
    except (OSError, AttributeError) as error:
        log.warning("cannot give libvirt a caller identity (%s): guests of an embedded "
                    "driver cannot use secrets", error)
        return None
    get_system.restype, get_system.argtypes = ctypes.c_void_p, []
    set_current.restype, set_current.argtypes = ctypes.c_int, [ctypes.c_void_p]
    identity = get_system()
    if not identity:
        log.warning("libvirt has no system identity for this process: guests of an "
                    "embedded driver cannot use secrets")
        return None
    return set_current, identity


def adopt_system_identity() -> None:
    """Make the process's own identity this thread's current libvirt identity, once
    per thread (libvirt keeps it thread-local and takes its own reference)."""
    if getattr(_local, "adopted", False):
        return
    loaded = _system_identity()
    if loaded is not None:
        set_current, identity = loaded
        if set_current(identity) < 0:
            log.warning("libvirt refused this thread's identity")
    _local.adopted = True
