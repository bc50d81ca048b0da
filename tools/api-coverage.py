#!/usr/bin/env python3
"""Write docs/api-coverage.md: every public libvirt function, the RPC that reaches
it, or why none does.

Usage:
  tools/api-coverage.py            # writes docs/api-coverage.md
  tools/api-coverage.py --check    # fails when docs/api-coverage.md is not current

Which RPC reaches what is what the RPCs declare (the ``virtmesh.acl.v1.
libvirt_functions`` method option); tests/test_api_coverage.py checks that the
code each RPC runs really calls what it declares. The functions come from the
API descriptions libvirt-dev installs (libvirt-api.xml, libvirt-qemu-api.xml), so
the document follows the installed libvirt. A function no RPC declares needs a
reason from the tables below, or it counts as a gap.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "protos" / "gen" / "python")]

API_DIR = Path("/usr/share/libvirt/api")
API_FILES = ("libvirt-api.xml", "libvirt-qemu-api.xml")
DOCUMENT = ROOT / "docs" / "api-coverage.md"

#: the driver services in the order the document lists them
SERVICES = ("compute", "storage", "network", "nwfilter", "secret", "nodedev", "iface")
#: libvirt's API file of each service's objects (libvirt-host is split below)
SERVICE_OF_FILE = {
    "libvirt-domain": "compute", "libvirt-domain-snapshot": "compute",
    "libvirt-domain-checkpoint": "compute", "libvirt-qemu": "compute",
    "libvirt-storage": "storage", "libvirt-network": "network",
    "libvirt-nwfilter": "nwfilter", "libvirt-secret": "secret",
    "libvirt-nodedev": "nodedev", "libvirt-interface": "iface",
}
#: functions of libvirt-host that are about the connection, not the host: no
#: driver's (the rest of libvirt-host, the virNode* host facts and hypervisor
#: queries, is the QEMU driver's)
CONNECTION = {
    "virConnectOpen", "virConnectOpenAuth", "virConnectOpenReadOnly", "virConnectClose",
    "virConnectRef", "virConnectIsAlive", "virConnectSetKeepAlive",
    "virConnectRegisterCloseCallback", "virConnectUnregisterCloseCallback",
    "virConnectIsEncrypted", "virConnectIsSecure", "virConnectSetIdentity",
    "virInitialize", "virGetVersion",
}

_CONNECTION_REASON = ("connection management: each service holds one libvirt connection "
                      "(services/common/libvirt_connection.py: open, keepalive, close "
                      "callback, reconnect); callers reach the gateway, not libvirt")
#: Why functions that belong to no service are nobody's RPC, by name pattern.
LIBRARY_REASONS = (
    (r"^virConnect", _CONNECTION_REASON),
    (r"^(virInitialize|virGetVersion)$", "library setup: libvirt-python does it on import; "
     "GetVersion (compute) reports the library's version"),
    (r"^virEvent", "event loop: the skeleton runs libvirt's default event loop on one "
     "thread (services/common/libvirt_connection.py)"),
    (r"^virStream", "streams: the streaming RPCs (volume upload and download, consoles, "
     "screenshots) use them inside; a caller sees a gRPC stream"),
    (r"^virTypedParams", "typed parameters: libvirt-python turns them into dicts, and "
     "convert into typed messages"),
    (r"", "errors: libvirt-python raises libvirtError, and one table maps its code to "
     "a gRPC status (services/common/errors.py)"),
)

_HANDLE = "handle management"
#: Why a function of a service's area is reached by no RPC, by name pattern (first
#: match wins). Such a function does no work a caller could ask for.
REASON_PATTERNS = (
    (r"(Ref|Free)$", f"{_HANDLE}: reference counting and freeing, which libvirt-python "
     "does"),
    (r"(GetConnect|SnapshotGetDomain|CheckpointGetDomain|PortGetNetwork)$",
     f"{_HANDLE}: the connection or parent object a handle came from, which the service "
     "already holds"),
    (r"LookupBy\w+$", f"{_HANDLE}: how a request's name, UUID, path or key becomes an "
     "object (services/common/backend.py)"),
    (r"Get(Name|UUID|UUIDString)$", f"{_HANDLE}: the identity each summary carries"),
    (r"^virConnect(Domain|Network|StoragePool|NodeDevice|Secret)EventDeregisterAny$"
     r"|^virConnectDomainQemuMonitorEventDeregister$",
     "connection management: the skeleton deregisters a connection's callbacks when it "
     "drops it (services/common/libvirt_connection.py)"),
)
#: Queries whose answer another call we make gives too, with that call.
ANSWERED_BY = {
    "virStoragePoolIsActive": "virStoragePoolGetInfo",
    "virNodeDeviceNumOfCaps": "virNodeDeviceListCaps",
}
#: Older spellings of a call, with the newer one that does all they do.
COVERED_BY = {
    "virConnectListStoragePools": "virConnectListAllStoragePools",
    "virConnectListDefinedStoragePools": "virConnectListAllStoragePools",
    "virConnectNumOfStoragePools": "virConnectListAllStoragePools",
    "virConnectNumOfDefinedStoragePools": "virConnectListAllStoragePools",
    "virStoragePoolListVolumes": "virStoragePoolListAllVolumes",
    "virStoragePoolNumOfVolumes": "virStoragePoolListAllVolumes",
    "virStorageVolWipe": "virStorageVolWipePattern",
    "virConnectListNetworks": "virConnectListAllNetworks",
    "virConnectListDefinedNetworks": "virConnectListAllNetworks",
    "virConnectNumOfNetworks": "virConnectListAllNetworks",
    "virConnectNumOfDefinedNetworks": "virConnectListAllNetworks",
    "virNetworkCreateXML": "virNetworkCreateXMLFlags",
    "virNetworkDefineXML": "virNetworkDefineXMLFlags",
    "virConnectListNWFilters": "virConnectListAllNWFilters",
    "virConnectNumOfNWFilters": "virConnectListAllNWFilters",
    "virNWFilterDefineXML": "virNWFilterDefineXMLFlags",
    "virConnectListSecrets": "virConnectListAllSecrets",
    "virConnectNumOfSecrets": "virConnectListAllSecrets",
    "virNodeListDevices": "virConnectListAllNodeDevices",
    "virNodeNumOfDevices": "virConnectListAllNodeDevices",
    "virNodeDeviceDettach": "virNodeDeviceDetachFlags",
    "virConnectListInterfaces": "virConnectListAllInterfaces",
    "virConnectListDefinedInterfaces": "virConnectListAllInterfaces",
    "virConnectNumOfInterfaces": "virConnectListAllInterfaces",
    "virConnectNumOfDefinedInterfaces": "virConnectListAllInterfaces",
    "virConnectListDomains": "virConnectListAllDomains",
    "virConnectListDefinedDomains": "virConnectListAllDomains",
    "virConnectNumOfDomains": "virConnectListAllDomains",
    "virConnectNumOfDefinedDomains": "virConnectListAllDomains",
    "virConnectDomainEventRegister": "virConnectDomainEventRegisterAny",
    "virConnectDomainEventDeregister": "virConnectDomainEventDeregisterAny",
    "virDomainCreate": "virDomainCreateWithFlags",
    "virDomainCreateLinux": "virDomainCreateXML",
    "virDomainDefineXML": "virDomainDefineXMLFlags",
    "virDomainUndefine": "virDomainUndefineFlags",
    "virDomainShutdown": "virDomainShutdownFlags",
    "virDomainSetVcpus": "virDomainSetVcpusFlags",
    "virDomainSetMemory": "virDomainSetMemoryFlags",
    "virDomainSetMaxMemory": "virDomainSetMemoryFlags",
    "virDomainAttachDevice": "virDomainAttachDeviceFlags",
    "virDomainDetachDevice": "virDomainDetachDeviceFlags",
    "virDomainSave": "virDomainSaveFlags",
    "virDomainRestore": "virDomainRestoreFlags",
    "virDomainCoreDump": "virDomainCoreDumpWithFormat",
    "virDomainGetJobInfo": "virDomainGetJobStats",
    "virDomainPinVcpu": "virDomainPinVcpuFlags",
    "virDomainGetSecurityLabel": "virDomainGetSecurityLabelList",
    "virDomainBlockStats": "virDomainBlockStatsFlags",
    "virDomainSnapshotNum": "virDomainListAllSnapshots",
    "virDomainSnapshotListNames": "virDomainListAllSnapshots",
    "virDomainSnapshotNumChildren": "virDomainSnapshotListAllChildren",
    "virDomainSnapshotListChildrenNames": "virDomainSnapshotListAllChildren",
    "virDomainMigrate": "virDomainMigrate3",
    "virDomainMigrate2": "virDomainMigrate3",
    "virDomainMigrateToURI": "virDomainMigrateToURI3",
    "virDomainMigrateToURI2": "virDomainMigrateToURI3",
    "virDomainOpenGraphics": "virDomainOpenGraphicsFD",
}
#: Newer spellings that, in libvirt 9.0, take no argument the older call lacks.
SAME_IN_THIS_LIBVIRT = {
    "virDomainSaveParams": ("virDomainSaveFlags", "file, dxml"),
    "virDomainRestoreParams": ("virDomainRestoreFlags", "file, dxml"),
}
_FILES_REASON = ("file descriptors: the caller hands libvirt open descriptors of its own "
                 "process, which a gRPC caller (on another host, through the gateway) "
                 "cannot; {rpc} does the rest of what it does")
#: Calls whose point is passing the caller's file descriptors, with the RPC doing the rest.
PASSES_FILES = {
    "virDomainCreateWithFiles": "StartDomain",
    "virDomainCreateXMLWithFiles": "CreateDomain",
    "virDomainFDAssociate": "StartDomain",
    "virDomainQemuMonitorCommandWithFiles": "QemuMonitorCommand",
}
#: Functions that the service's libvirt driver does not implement, and why.
NOT_APPLICABLE = {
    "virDomainQemuAttach": "not applicable: libvirt 5.5 removed attaching to a QEMU "
                           "started outside libvirt",
}


@dataclasses.dataclass
class Function:
    name: str
    file: str
    rpcs: list[str] = dataclasses.field(default_factory=list)
    reason: str = ""


def api_functions(api_dir: Path = API_DIR) -> dict[str, str]:
    """Every public libvirt function: name -> its API file (libvirt-domain, ...)."""
    found: dict[str, str] = {}
    for name in API_FILES:
        root = ET.parse(api_dir / name).getroot()
        for function in root.iter("function"):
            found[function.get("name", "")] = function.get("file", "")
    return found


def service_of(name: str, file: str) -> str | None:
    """The service whose area the function is in; None: no driver's (the library)."""
    if file == "libvirt-host":
        return None if name in CONNECTION else "compute"
    return SERVICE_OF_FILE.get(file)


def reason_for(name: str, functions: dict[str, str]) -> str:
    """Why an unreached function of a service's area is left out ("" if no reason)."""
    if name in NOT_APPLICABLE:
        return NOT_APPLICABLE[name]
    if name in COVERED_BY:
        return f"older spelling: {COVERED_BY[name]} does all it does"
    if name in SAME_IN_THIS_LIBVIRT:
        older, params = SAME_IN_THIS_LIBVIRT[name]
        return (f"same call: libvirt 9.0 knows only its parameters {params}, which are "
                f"{older}'s arguments, and {older} is reached")
    if name in PASSES_FILES:
        return _FILES_REASON.format(rpc=PASSES_FILES[name])
    if name in ANSWERED_BY:
        return f"answered by {ANSWERED_BY[name]}, which the same RPCs call"
    for pattern, reason in REASON_PATTERNS:
        if re.search(pattern, name):
            return reason
    return ""


def library_reason(name: str) -> str:
    return next(reason for pattern, reason in LIBRARY_REASONS if re.search(pattern, name))


def declared() -> dict[str, dict[str, list[str]]]:
    """service -> RPC name -> the libvirt functions it declares."""
    from services.common.registry import specs
    from virtmesh.acl.v1 import acl_pb2

    result: dict[str, dict[str, list[str]]] = {}
    for spec in specs():
        for service in spec.proto.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                result.setdefault(spec.name, {})[method.name] = list(
                    options.Extensions[acl_pb2.libvirt_functions])
    return result


def table(functions: dict[str, str],
          rpcs: dict[str, dict[str, list[str]]]) -> dict[str | None, list[Function]]:
    """service (None: the library) -> its functions, each with RPCs or a reason."""
    reached: dict[str, list[str]] = {}
    for service_rpcs in rpcs.values():
        for rpc, names in service_rpcs.items():
            for name in names:
                reached.setdefault(name, []).append(rpc)
    rows: dict[str | None, list[Function]] = {}
    for name, file in sorted(functions.items()):
        service = service_of(name, file)
        row = Function(name, file, sorted(reached.get(name, [])))
        if service is None:
            row.reason = library_reason(name)
        elif not row.rpcs:
            row.reason = reason_for(name, functions)
        rows.setdefault(service, []).append(row)
    return rows


def counts(rows: list[Function]) -> tuple[int, int, int]:
    """(reached, left out with a reason, gaps)."""
    reached = sum(1 for row in rows if row.rpcs)
    excused = sum(1 for row in rows if not row.rpcs and row.reason)
    return reached, excused, len(rows) - reached - excused


def percent(reached: int, gaps: int) -> str:
    return f"{100 * reached / (reached + gaps):.0f} %" if reached + gaps else "—"


def libvirt_version() -> str:
    """The installed libvirt's version (libvirt-dev's is the library's)."""
    import libvirt

    version = libvirt.getVersion()
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


def render(rows: dict[str | None, list[Function]], version: str) -> str:
    lines = [
        "# libvirt API coverage",
        "",
        "<!-- Written by tools/api-coverage.py (`make api-coverage`); do not edit. "
        "`make lint` fails when it is not current. -->",
        "",
        f"Every public function of libvirt {version}'s API (libvirt-api.xml and "
        "libvirt-qemu-api.xml, from libvirt-dev), by the service whose objects it is "
        "about: the RPCs that reach it, as they declare with the method option "
        "`virtmesh.acl.v1.libvirt_functions`, or why none does. "
        "`tests/test_api_coverage.py` checks that the code each RPC runs really calls "
        "what it declares.",
        "",
        "A function left out for a reason does no work a caller could ask for (handle "
        "management, an older spelling of a call we make, a query another call answers) "
        "or is not the driver's: coverage is reached / (reached + not yet reached).",
        "",
        "| service | functions | reached | left out, with a reason | not yet reached "
        "| coverage |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for service in SERVICES:
        reached, excused, gaps = counts(rows.get(service, []))
        lines.append(f"| [{service}](#{service}) | {reached + excused + gaps} | {reached} "
                     f"| {excused} | {gaps} | {percent(reached, gaps)} |")
    for service in SERVICES:
        lines += ["", f"## {service}", "", "| function | reached by | or why not |",
                  "|---|---|---|"]
        for row in rows.get(service, []):
            reason = row.reason or "**not yet reached**"
            lines.append(f"| `{row.name}` | {', '.join(row.rpcs)} | "
                         f"{'' if row.rpcs else reason} |")
    lines += ["", "## The library and the connection", "",
              "Functions about no driver's objects: no service's RPC reaches them.", "",
              "| function | why |", "|---|---|"]
    lines += [f"| `{row.name}` | {row.reason} |" for row in rows.get(None, [])]
    return "\n".join(lines) + "\n"


def python_methods() -> dict[str, set[str]]:
    """libvirt C function -> the libvirt-python methods that call it.

    libvirt-python's generated (and hand-written override) methods call the C
    function of the same name on ``libvirtmod``: ``virDomain.saveFlags`` calls
    ``libvirtmod.virDomainSaveFlags``. Reading that from libvirt-python's own
    source follows its naming rules, exceptions included."""
    import libvirt
    import libvirt_qemu

    methods: dict[str, set[str]] = {}
    for module in (libvirt, libvirt_qemu):
        assert module.__file__
        tree = ast.parse(Path(module.__file__).read_text())
        for function in _functions(tree):
            for node in ast.walk(function):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                        and node.value.id.startswith("libvirtmod")):
                    methods.setdefault(node.attr, set()).add(function.name)
    return methods


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef]:
    """Module functions and class methods (libvirt-python nests no deeper)."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield node
        elif isinstance(node, ast.ClassDef):
            yield from (item for item in node.body if isinstance(item, ast.FunctionDef))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if the document is not current instead of writing it")
    args = parser.parse_args()
    text = render(table(api_functions(), declared()), libvirt_version())
    if args.check:
        if not DOCUMENT.exists() or DOCUMENT.read_text() != text:
            print(f"{DOCUMENT.relative_to(ROOT)} is not current: run make api-coverage "
                  "and commit it", file=sys.stderr)
            return 1
        print(f"{DOCUMENT.relative_to(ROOT)} is current")
        return 0
    DOCUMENT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
