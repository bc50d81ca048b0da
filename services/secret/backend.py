"""The secret service's libvirt calls: lookups, and what the embedded driver cannot do.

Secret values pass through here as bytes and must never be logged or put in an
error message.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import grpc
import libvirt

from services.common import documents, event_callbacks, registry
from services.common.backend import Backend, is_uuid, list_flags
from services.common.errors import ServiceError, require
from services.common.libvirt_connection import LibvirtConnection

log = logging.getLogger(__name__)

#: Defines and undefines a secret with an embedded secret driver under argv[1].
_UNDEFINE_PROBE = """
import sys, libvirt
libvirt.registerErrorHandler(lambda *_: None, None)
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open("secret:///embed?root=" + sys.argv[1])
conn.secretDefineXML("<secret/>").undefine()
"""



def embedded_undefine_crashes() -> bool:
    """Whether this libvirt's embedded secret driver kills its process on undefine.

    libvirt 9.0's secret driver calls its shutdown-inhibit callback unconditionally
    on undefine (and on defining an ephemeral secret); embedded mode sets none, so
    the call jumps to NULL. Tried once in a throwaway process: its crash is harmless.
    """
    with tempfile.TemporaryDirectory(prefix="virtmesh-secret-probe-") as root:
        result = subprocess.run([sys.executable, "-c", _UNDEFINE_PROBE, root],
                                capture_output=True, text=True, timeout=60, check=False)
    if result.returncode == 0:
        return False
    log.warning("the embedded libvirt secret driver cannot undefine secrets or hold "
                "ephemeral ones here (probe exit status %d%s); UndefineSecret and ephemeral "
                "secrets are refused", result.returncode,
                f": {result.stderr.strip().splitlines()[-1]}" if result.stderr.strip() else "")
    return True


def _refuse_embedded(what: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{what} would crash this service: libvirt {_libvirt_version()}'s embedded secret "
        "driver calls a shutdown-inhibit callback that embedded mode does not set; run the "
        "secret service against a libvirt daemon (--uri secret:///system) for this",
        "EMBEDDED_DRIVER_UNSUPPORTED")


def _libvirt_version() -> str:
    version = libvirt.getVersion()
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


def import_embedded_root(conn: libvirt.virConnect, root: Path) -> int:
    """Move the secrets of an embedded driver's root (what the service kept before it
    used the host's daemon by default) into ``conn``'s driver; returns how many.

    The root is renamed ``<root>.imported`` once every secret in it is defined there
    (with its value); a secret that cannot be stays, and so does the directory.
    """
    directory = root / "etc" / "secrets"
    files = sorted(directory.glob("*.xml")) if directory.is_dir() else []
    moved, failed = 0, 0
    for path in files:
        try:
            try:
                conn.secretLookupByUUIDString(path.stem)
                log.info("secret %s of %s is already defined here", path.stem, root)
            except libvirt.libvirtError:
                secret = conn.secretDefineXML(path.read_text())
                value = path.with_suffix(".base64")
                if value.exists():
                    secret.setValue(base64.b64decode(value.read_bytes()))
                moved += 1
        except (libvirt.libvirtError, OSError, ValueError) as error:
            failed += 1
            log.error("cannot move secret %s of %s to %s: %s", path.stem, root,
                      conn.getURI(), error)
    if files and not failed:
        try:
            root.rename(root.with_name(root.name + ".imported"))
        except OSError as error:
            log.error("moved the secrets of %s, but cannot rename it: %s", root, error)
            return moved
        log.warning("moved %d secret(s) of the embedded driver's root %s to %s (the secret "
                    "service's default since compute's QEMU finds secrets there); the old "
                    "root is now %s.imported", moved, root, conn.getURI(), root)
    return moved


class SecretBackend(Backend):
    def __init__(self, connection: LibvirtConnection, state_dir: Path | None = None) -> None:
        super().__init__(connection)
        self.undefine_crashes = (registry.is_embedded(connection.uri)
                                 and embedded_undefine_crashes())
        if state_dir is not None and not registry.is_embedded(connection.uri) \
                and not connection.uri.startswith("test:"):
            root = state_dir / "secret"

            def import_previous(conn: libvirt.virConnect) -> None:
                import_embedded_root(conn, root)

            connection.on_connect(import_previous)

    def lookup(self, name: str) -> libvirt.virSecret:
        """A secret by its UUID string."""
        if not is_uuid(require(name, "name")):
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"name must be the secret's UUID (got {name!r})", "INVALID_UUID")
        return self.conn.secretLookupByUUIDString(name)

    def lookup_usage(self, usage_type: int, usage_id: str) -> libvirt.virSecret:
        """A secret by libvirt's usage type and the usage's id (a volume path, ...)."""
        return self.conn.secretLookupByUsage(usage_type, require(usage_id, "usage.id"))

    def list_secrets(self, ephemeral: bool | None, private: bool | None) -> list[libvirt.virSecret]:
        return self.conn.listAllSecrets(list_flags(
            (ephemeral, libvirt.VIR_CONNECT_LIST_SECRETS_EPHEMERAL,
             libvirt.VIR_CONNECT_LIST_SECRETS_NO_EPHEMERAL),
            (private, libvirt.VIR_CONNECT_LIST_SECRETS_PRIVATE,
             libvirt.VIR_CONNECT_LIST_SECRETS_NO_PRIVATE)))

    def register_events(self, conn: libvirt.virConnect,
                        emit: Callable[..., None]) -> None:
        """Emit (secret, "lifecycle", event, detail) and (secret, "value_changed")."""
        event_callbacks.register(conn.secretEventRegisterAny, {
            libvirt.VIR_SECRET_EVENT_ID_LIFECYCLE: "lifecycle",
            libvirt.VIR_SECRET_EVENT_ID_VALUE_CHANGED: "value_changed",
        }, emit)

    def xml(self, name: str) -> str:
        return self.lookup(name).XMLDesc()

    def define(self, xml: str) -> libvirt.virSecret:
        def refuse_ephemeral(document: documents.Document) -> None:
            # documents.check reads the attributes exactly as libvirt will (no DTD to
            # default or hide one): a guard that parsed otherwise was a crash
            if self.undefine_crashes and document.attributes.get("ephemeral") == "yes":
                raise _refuse_embedded("an ephemeral secret")

        return documents.submit(self.conn.secretDefineXML, xml,
                                libvirt.VIR_SECRET_DEFINE_VALIDATE, root="secret",
                                inspect=refuse_ephemeral)

    def set_value(self, name: str, value: bytes) -> None:
        secret = self.lookup(name)
        if not value:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "value is required (libvirt keeps an empty value as none)",
                               "MISSING_FIELD")
        secret.setValue(value)

    def value(self, name: str) -> bytes:
        secret = self.lookup(name)
        # Checked here because an embedded driver has no caller identity to refuse by.
        if ET.fromstring(secret.XMLDesc()).get("private") == "yes":
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED,
                               f"secret {secret.UUIDString()} is private: libvirt never "
                               "reveals its value", "SECRET_PRIVATE")
        return bytes(secret.value())

    def undefine(self, name: str) -> None:
        secret = self.lookup(name)
        if self.undefine_crashes:
            raise _refuse_embedded("undefining a secret")
        secret.undefine()
