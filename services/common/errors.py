"""One table from libvirt error codes to gRPC status codes, and the status we send.

Servicers never catch errors: the error interceptor turns a ``libvirt.libvirtError``
or a ``ServiceError`` into a gRPC status here, with a ``google.rpc.ErrorInfo``
naming the libvirt error code so that clients can tell ``VIR_ERR_NO_DOMAIN`` from
``VIR_ERR_NO_DOMAIN_SNAPSHOT`` without parsing messages.
"""

from __future__ import annotations

import grpc
import libvirt

from services.common.shared import ServiceError, error_status

ERROR_DOMAIN = "libvirt.org"

_C = grpc.StatusCode

_GROUPS: dict[grpc.StatusCode, tuple[str, ...]] = {
    _C.NOT_FOUND: (
        "NO_DOMAIN", "NO_NETWORK", "NO_STORAGE_POOL", "NO_STORAGE_VOL", "NO_NODE_DEVICE",
        "NO_INTERFACE", "NO_NWFILTER", "NO_NWFILTER_BINDING", "NO_SECRET",
        "NO_DOMAIN_SNAPSHOT", "NO_DOMAIN_CHECKPOINT", "NO_DOMAIN_BACKUP", "NO_NETWORK_PORT",
        "NO_DOMAIN_METADATA", "NO_SERVER", "NO_CLIENT", "DEVICE_MISSING", "NO_HOSTNAME",
        "NO_SECURITY_MODEL",
    ),
    _C.ALREADY_EXISTS: (
        "DOM_EXIST", "NETWORK_EXIST", "STORAGE_VOL_EXIST", "NETWORK_PORT_EXIST",
        "STORAGE_POOL_BUILT",
    ),
    _C.FAILED_PRECONDITION: (
        "OPERATION_INVALID", "SNAPSHOT_REVERT_RISKY", "MIGRATE_UNSAFE", "BLOCK_COPY_ACTIVE",
        "CPU_INCOMPATIBLE", "AGENT_UNSYNCED", "CHECKPOINT_INCONSISTENT", "MULTIPLE_DOMAINS",
        "MULTIPLE_INTERFACES",
    ),
    _C.INVALID_ARGUMENT: (
        "XML_ERROR", "XML_DETAIL", "XML_INVALID_SCHEMA", "INVALID_ARG", "INVALID_MAC",
        "NO_NAME", "NO_OS", "NO_KERNEL", "NO_ROOT", "NO_SOURCE", "NO_TARGET", "NO_DEVICE",
        "OS_TYPE", "CONF_SYNTAX", "PARSE_FAILED", "INVALID_DOMAIN", "INVALID_NETWORK",
        "INVALID_STORAGE_POOL", "INVALID_STORAGE_VOL", "INVALID_NODE_DEVICE",
        "INVALID_INTERFACE", "INVALID_NWFILTER", "INVALID_SECRET", "INVALID_DOMAIN_SNAPSHOT",
        "INVALID_STREAM", "INVALID_NWFILTER_BINDING", "INVALID_DOMAIN_CHECKPOINT",
        "INVALID_NETWORK_PORT", "OVERFLOW",
    ),
    _C.UNIMPLEMENTED: (
        "NO_SUPPORT", "CONFIG_UNSUPPORTED", "ARGUMENT_UNSUPPORTED", "OPERATION_UNSUPPORTED",
    ),
    _C.PERMISSION_DENIED: (
        "AUTH_FAILED", "AUTH_CANCELLED", "AUTH_UNAVAILABLE", "ACCESS_DENIED",
        "OPERATION_DENIED",
    ),
    _C.DEADLINE_EXCEEDED: ("OPERATION_TIMEOUT", "AGENT_UNRESPONSIVE"),
    _C.UNAVAILABLE: (
        "RPC", "NO_CONNECT", "INVALID_CONN", "UNKNOWN_HOST", "GNUTLS_ERROR", "SSH", "LIBSSH",
        "DBUS_SERVICE",
    ),
    _C.ABORTED: ("OPERATION_ABORTED", "RESOURCE_BUSY"),
    _C.RESOURCE_EXHAUSTED: ("NO_MEMORY", "DRIVER_FULL"),
}

#: libvirt error code (int) -> gRPC status code; codes not listed map to INTERNAL.
LIBVIRT_TO_GRPC: dict[int, grpc.StatusCode] = {
    getattr(libvirt, f"VIR_ERR_{name}"): code
    for code, names in _GROUPS.items()
    for name in names
    if hasattr(libvirt, f"VIR_ERR_{name}")
}

_LIBVIRT_CODE_NAMES: dict[int, str] = {
    value: name
    for name, value in vars(libvirt).items()
    if name.startswith("VIR_ERR_") and isinstance(value, int)
    and name not in ("VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR")
}


class DocumentRejected(Exception):  # noqa: N818 - a refusal, not a failure of ours
    """libvirt refused the caller's document with a generic code (INTERNAL_ERROR, as
    its XML parsers do): INVALID_ARGUMENT, with libvirt's own message and code."""

    def __init__(self, error: libvirt.libvirtError) -> None:
        super().__init__(str(error))
        self.error = error


def require(value: str, field: str) -> str:
    """``value``, or INVALID_ARGUMENT naming the empty required ``field``."""
    if not value:
        raise ServiceError(_C.INVALID_ARGUMENT, f"{field} is required", "MISSING_FIELD")
    return value


def invalid(message: str, reason: str = "VIR_ERR_INVALID_ARG") -> ServiceError:
    """INVALID_ARGUMENT for a request refused before libvirt sees it; ``reason`` is
    libvirt's code when libvirt would refuse it alike."""
    return ServiceError(_C.INVALID_ARGUMENT, message, reason)


#: libvirt reports some conditions only through a generic code; the message
#: tells them apart. (libvirt code, message fragment) -> gRPC code.
_REFINEMENTS: tuple[tuple[int, str, grpc.StatusCode], ...] = (
    # libvirt's RPC client, asked to send on a connection its daemon has closed
    (libvirt.VIR_ERR_INTERNAL_ERROR, "client socket is closed", _C.UNAVAILABLE),
    # virChrdevOpen without force while another session holds a console or channel
    (libvirt.VIR_ERR_OPERATION_FAILED, "Active console session exists", _C.FAILED_PRECONDITION),
    # a console or channel the domain does not have
    (libvirt.VIR_ERR_INTERNAL_ERROR, "cannot find character device", _C.NOT_FOUND),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "cannot find channel", _C.NOT_FOUND),
    # a console opened while its guest is going away: "Unable to open stream for
    # '/dev/pts/0': Permission denied" (QEMU has closed the pty)
    (libvirt.VIR_ERR_SYSTEM_ERROR, "Unable to open stream for", _C.FAILED_PRECONDITION),
    # virDomainObjListAdd: "domain 'x' already exists with uuid ..."
    (libvirt.VIR_ERR_OPERATION_FAILED, "already exists", _C.ALREADY_EXISTS),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "already exists", _C.ALREADY_EXISTS),
    # a define reusing another object's UUID: "network 'a' is already defined with uuid ..."
    (libvirt.VIR_ERR_OPERATION_FAILED, "is already defined with uuid", _C.ALREADY_EXISTS),
    # XML that names no capability, or an unknown format: the request is wrong
    (libvirt.VIR_ERR_INTERNAL_ERROR, "no device capabilities for", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "unknown volume format type", _C.INVALID_ARGUMENT),
    # a flag this driver does not know (the test driver): "unsupported flags (0x1) in ..."
    (libvirt.VIR_ERR_INVALID_ARG, "unsupported flags", _C.UNIMPLEMENTED),
    # node device XML naming no parent, an unknown one, or one that cannot host it
    (libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "missing parent device", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "invalid parent device", _C.NOT_FOUND),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "Could not find parent device", _C.NOT_FOUND),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "not capable of vport operations", _C.INVALID_ARGUMENT),
    # storage: a second pool on the same target path or source device
    (libvirt.VIR_ERR_OPERATION_FAILED, "Storage source conflict", _C.ALREADY_EXISTS),
    # storage: "volume target path '/p/x' already exists" (a file libvirt has not seen)
    (libvirt.VIR_ERR_OPERATION_INVALID, "already exists", _C.ALREADY_EXISTS),
    # storage: deleting a dir pool whose directory still holds files
    (libvirt.VIR_ERR_SYSTEM_ERROR, "Directory not empty", _C.FAILED_PRECONDITION),
    # a path the caller's document names is not there: "cannot open directory '/p': No
    # such file or directory" (a dir pool started before its directory was built)
    (libvirt.VIR_ERR_SYSTEM_ERROR, "No such file or directory", _C.FAILED_PRECONDITION),
    # the kernel refusing a value of the caller's document (EINVAL, ERANGE): "Cannot set
    # interface MTU on 'b': Invalid argument", "error creating bridge interface
    # <17 characters>: Numerical result out of range"
    (libvirt.VIR_ERR_SYSTEM_ERROR, ": Invalid argument", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_SYSTEM_ERROR, ": Numerical result out of range", _C.INVALID_ARGUMENT),
    # a name longer than a file name may be: "Failed to create file '/etc/libvirt/nwfilter/
    # aaa...a.xml.new': File name too long" (libvirt removes the object again)
    (libvirt.VIR_ERR_SYSTEM_ERROR, ": File name too long", _C.INVALID_ARGUMENT),
    # QEMU refusing a configuration at start: "qemu unexpectedly closed the monitor: ...
    # Max. supported number of ISA serial ports is 4." (or, earlier in its start,
    # "process exited while connecting to monitor: ...")
    (libvirt.VIR_ERR_INTERNAL_ERROR, "qemu unexpectedly closed the monitor",
     _C.FAILED_PRECONDITION),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "process exited while connecting to monitor",
     _C.FAILED_PRECONDITION),
    # network: "bridge name 'virbr9' already in use."; a subnet a host interface has
    # (start): "Network is already in use by interface eth0"
    (libvirt.VIR_ERR_INTERNAL_ERROR, "' already in use", _C.ALREADY_EXISTS),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "already in use by interface", _C.FAILED_PRECONDITION),
    # network update: "there is an existing dhcp host entry ...", "there is already a DNS
    # TXT record ...", "couldn't locate a matching dhcp host entry ...", "couldn't find a
    # portgroup entry ...", "... no <ip> element found at index 5 ..."
    (libvirt.VIR_ERR_OPERATION_INVALID, "there is an existing", _C.ALREADY_EXISTS),
    (libvirt.VIR_ERR_OPERATION_INVALID, "there is already", _C.ALREADY_EXISTS),
    (libvirt.VIR_ERR_OPERATION_INVALID, "couldn't locate", _C.NOT_FOUND),
    (libvirt.VIR_ERR_OPERATION_INVALID, "couldn't find a", _C.NOT_FOUND),
    (libvirt.VIR_ERR_OPERATION_INVALID, "element found at index", _C.INVALID_ARGUMENT),
    # network port XML without a required element: "network port has no uuid"
    (libvirt.VIR_ERR_INTERNAL_ERROR, "network port has no", _C.INVALID_ARGUMENT),
    # secret: "a secret with UUID u [is] already defined for use with x" (usage taken, or
    # the UUID has another usage); redefining a private secret as public
    (libvirt.VIR_ERR_INTERNAL_ERROR, "already defined for use with", _C.ALREADY_EXISTS),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "cannot change private flag", _C.FAILED_PRECONDITION),
    # secret XML: "volume usage specified, but volume path is missing", "malformed uuid
    # element", "unknown secret usage type x"
    (libvirt.VIR_ERR_INTERNAL_ERROR, "usage specified, but", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "malformed uuid element", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "unknown secret usage type", _C.INVALID_ARGUMENT),
    # a libvirt daemon refusing a private secret's value
    (libvirt.VIR_ERR_INVALID_SECRET, "secret is private", _C.PERMISSION_DENIED),
    # nwfilter XML: "filter has no name", "dstportstart has illegal value 99999", "unknown
    # rule direction attribute value"; binding XML: "filter binding has no MAC address",
    # "Unable to parse MAC 'zz'"; a binding of an undefined filter: "referenced filter
    # 'x' is missing"
    (libvirt.VIR_ERR_INTERNAL_ERROR, "filter has no name", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "has illegal value", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "unknown rule ", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "filter binding has no", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "Unable to parse MAC", _C.INVALID_ARGUMENT),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "referenced filter", _C.FAILED_PRECONDITION),
    # a device update or detach naming a device the domain lacks: QEMU's "disk 'hdd' not
    # found", "no device found with alias ua-x"
    (libvirt.VIR_ERR_INTERNAL_ERROR, "' not found", _C.NOT_FOUND),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "no device found with alias", _C.NOT_FOUND),
)


def grpc_code_for(libvirt_code: int, message: str = "",
                  libvirt_domain: int = 0) -> grpc.StatusCode:
    if libvirt_domain == libvirt.VIR_FROM_RPC and libvirt_code == libvirt.VIR_ERR_SYSTEM_ERROR:
        # the client side of libvirt's RPC lost its daemon mid-call: "Cannot recv data:
        # Connection reset by peer", "Cannot write data: Broken pipe" (a daemon's own
        # errors keep their own domain)
        return _C.UNAVAILABLE
    for code, fragment, refined in _REFINEMENTS:
        if libvirt_code == code and fragment in message:
            return refined
    return LIBVIRT_TO_GRPC.get(libvirt_code, _C.INTERNAL)


def libvirt_code_name(libvirt_code: int) -> str:
    return _LIBVIRT_CODE_NAMES.get(libvirt_code, f"VIR_ERR_{libvirt_code}")


def to_status(error: Exception) -> grpc.Status:
    """The gRPC status a caller gets for ``error``."""
    if isinstance(error, ServiceError):
        return error_status(error.code, error.message, error.reason)
    if isinstance(error, DocumentRejected):
        return _libvirt_status(error.error, _C.INVALID_ARGUMENT)
    if isinstance(error, libvirt.libvirtError):
        return _libvirt_status(error)
    return error_status(_C.INTERNAL, f"internal error: {type(error).__name__}: {error}",
                        "INTERNAL")


def _libvirt_status(error: libvirt.libvirtError,
                    code_override: grpc.StatusCode | None = None) -> grpc.Status:
    """``error`` as a status with libvirt's code in ErrorInfo; the gRPC code from the
    table unless ``code_override`` says better."""
    code = error.get_error_code() or libvirt.VIR_ERR_INTERNAL_ERROR
    message = str(error) or error.get_error_message() or "libvirt error"
    domain = error.get_error_domain() or 0
    metadata = {"libvirt_code": str(code), "libvirt_domain": str(domain)}
    return error_status(code_override or grpc_code_for(code, message, domain), message,
                        libvirt_code_name(code), ERROR_DOMAIN, metadata)
