"""The fault suite: real processes, killed by PID, on loopback and UNIX sockets only.

1. compute SIGKILLed during DefineDomain, StartDomain and DestroyDomain (embedded
   QEMU, the example guest under TCG): no half-defined domain, running guests keep
   their QEMU process, and the state reported matches the QEMU processes there are.
2. the gateway SIGKILLed mid-call: UNAVAILABLE for the caller, the operation done
   or not begun, and a restarted gateway serves.
3. libvirtd SIGKILLed and restarted under storage, network, nwfilter, nodedev and
   iface: UNAVAILABLE meanwhile (never NOT_FOUND, never an empty list), event
   watchers told, and every service back by itself.
4. a restart of each service changes no object's XML and no list, byte for byte.
5. SIGTERM drains: NOT_SERVING first, calls in flight finish, new calls UNAVAILABLE.
6. a client SIGKILLed in the middle of downloads and event watches is forgotten:
   the service's fd and thread counts return to their baseline.

The libvirtd here is private: it runs in mount and network namespaces of its own
(its /etc/libvirt, /run/libvirt, /var/lib/libvirt and /var/cache/libvirt are bind
mounts of a temporary directory), with only the storage, network, nwfilter,
nodedev and interface drivers, so killing it leaves the host's libvirtd, which
other tests use, alone. Its socket is a file in that temporary directory, which the
services (in the host's namespaces) reach with ``<driver>:///system?socket=PATH``.
Its whole state is thrown away at the end of the module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guest import example
from services.common import registry
from services.supervisor import wait_serving
from tests.conftest import (
    ROOT,
    Process,
    gateway_process,
    reason_of,
    running_mesh,
    service_process,
    service_stub,
)
from virtmesh.compute.v1 import compute_service_pb2 as compute_pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as compute_rpc
from virtmesh.iface.v1 import iface_service_pb2 as iface_pb
from virtmesh.iface.v1 import iface_service_pb2_grpc as iface_rpc
from virtmesh.network.v1 import network_service_pb2 as net_pb
from virtmesh.network.v1 import network_service_pb2_grpc as net_rpc
from virtmesh.nodedev.v1 import nodedev_service_pb2 as dev_pb
from virtmesh.nodedev.v1 import nodedev_service_pb2_grpc as dev_rpc
from virtmesh.nwfilter.v1 import nwfilter_service_pb2 as filter_pb
from virtmesh.nwfilter.v1 import nwfilter_service_pb2_grpc as filter_rpc
from virtmesh.secret.v1 import secret_service_pb2 as secret_pb
from virtmesh.secret.v1 import secret_service_pb2_grpc as secret_rpc
from virtmesh.storage.v1 import storage_service_pb2 as storage_pb
from virtmesh.storage.v1 import storage_service_pb2_grpc as storage_rpc

LIBVIRTD = Path("/usr/sbin/libvirtd")
DRIVER_DIR = Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver")
#: the drivers the private libvirtd loads: those of the services that need a daemon
DAEMON_DRIVERS = ("storage", "network", "nwfilter", "nodedev", "interface")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
#: what a service's libvirt connection does here: retry fast, so tests stay short
FAST_RECONNECT = ("--reconnect-min-delay", "0.2", "--reconnect-max-delay", "1")

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and libvirtd need root"),
    pytest.mark.skipif(not LIBVIRTD.exists() or not shutil.which("unshare")
                       or not shutil.which("nsenter"),
                       reason="needs libvirtd, unshare and nsenter"),
]


# -- helpers -----------------------------------------------------------------------


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def short_dir(prefix: str) -> Path:
    """UNIX socket paths (and QEMU's monitor sockets under an embedded root) must stay
    under 108 bytes: pytest's tmp_path is too long for them."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def pid_of(process: Process) -> int:
    assert process.popen is not None
    return process.popen.pid


def sigkill(process: Process) -> None:
    """kill -9 the process (by its PID) and reap it."""
    assert process.popen is not None
    os.kill(process.popen.pid, signal.SIGKILL)
    process.popen.wait(10)


def health(target: str, timeout: float = 2) -> int | None:
    """The service's overall health on a fresh channel; None if nothing answers."""
    with grpc.insecure_channel(target) as channel:
        try:
            return int(health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout).status)
        except grpc.RpcError:
            return None


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status code ``call`` ends with (OK if it returns)."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def sock(state: Path, service: str) -> str:
    return f"unix:{state / 'run' / f'{service}.sock'}"


# -- the private libvirtd ----------------------------------------------------------


class PrivateLibvirtd:
    """libvirtd in mount and network namespaces of its own; see the module docstring.

    A holder process (``sleep``) keeps the namespaces, so libvirtd can be killed and
    started again in the same ones, with the same state directories, as systemd would
    restart the host's."""

    #: (directory under the root, where it is mounted in the namespace)
    MOUNTS = (("etc", "/etc/libvirt"), ("run", "/run/libvirt"), ("lib", "/var/lib/libvirt"),
              ("cache", "/var/cache/libvirt"))

    def __init__(self, root: Path) -> None:
        self.root = root
        self.holder: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log = root / "libvirtd.log"
        self.conf = root / "libvirtd.conf"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    def uri(self, driver: str) -> str:
        return f"{driver}:///system?socket={self.socket}"

    def open(self) -> None:
        for directory, _ in self.MOUNTS:
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        if Path("/etc/libvirt/nwfilter").is_dir():  # the stock filters, as on a host
            shutil.copytree("/etc/libvirt/nwfilter", self.root / "etc" / "nwfilter",
                            dirs_exist_ok=True)
        drivers = self.root / "drivers"
        drivers.mkdir(exist_ok=True)
        for driver in DAEMON_DRIVERS:
            module = DRIVER_DIR / f"libvirt_driver_{driver}.so"
            assert module.exists(), f"{module} is missing"
            with contextlib.suppress(FileExistsError):
                (drivers / module.name).symlink_to(module)
        self.conf.write_text(f'unix_sock_dir = "{self.root / "run"}"\n'
                             'unix_sock_rw_perms = "0700"\n'
                             'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
                             'log_outputs = "3:stderr"\n')
        mounts = " && ".join(f"mount --bind {self.root / directory} {target}"
                             for directory, target in self.MOUNTS)
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c",
             f"{mounts} && ip link set lo up && echo ready && exec sleep infinity"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.holder.stdout is not None
        ready = self.holder.stdout.readline()
        assert ready == b"ready\n", f"namespace setup failed: {self.holder.stderr.read()!r}" \
            if self.holder.stderr else ""

    def start(self, timeout: float = 30) -> None:
        assert self.holder is not None
        with open(self.log, "ab") as log:
            # nsenter enters the namespaces and execs libvirtd: the PID is libvirtd's
            self.daemon = subprocess.Popen(
                ["nsenter", "-t", str(self.holder.pid), "--mount", "--net", str(LIBVIRTD),
                 "-f", str(self.conf), "--pid-file", str(self.root / "run" / "libvirtd.pid")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "LIBVIRT_DRIVER_DIR": str(self.root / "drivers")})
        wait_for(self.answers, timeout, "the private libvirtd")

    def answers(self) -> bool:
        assert self.daemon is not None
        assert self.daemon.poll() is None, f"libvirtd exited: {self.log.read_text()[-2000:]}"
        if not self.socket.exists():
            return False
        try:
            conn = libvirt.open(self.uri("storage"))
        except libvirt.libvirtError:
            return False
        conn.close()
        return True

    def kill(self) -> None:
        """kill -9, by PID."""
        assert self.daemon is not None
        os.kill(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait(10)

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.holder is not None:
            # whatever libvirtd left running in our namespace (dnsmasq), then the holder
            namespace = os.readlink(f"/proc/{self.holder.pid}/ns/net")
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == self.holder.pid:
                    continue
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/net") == namespace:
                        os.kill(int(entry), signal.SIGKILL)
            self.holder.kill()
            self.holder.wait()


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    libvirt.registerErrorHandler(lambda _ctx, _error: None, None)
    root = short_dir("vfd-")
    daemon = PrivateLibvirtd(root)
    try:
        daemon.open()
        daemon.start()
        yield daemon
    finally:
        daemon.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def state() -> Iterator[Path]:
    path = short_dir("vfs-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def daemon_services(state: Path, daemon: PrivateLibvirtd, names: tuple[str, ...],
                    *args: str) -> Iterator[dict[str, Process]]:
    """The named services as processes on the private libvirtd, SERVING."""
    uris = {"iface": "interface"}
    processes = {name: service_process(state, name, "--uri", daemon.uri(uris.get(name, name)),
                                       *FAST_RECONNECT, *args).start()
                 for name in names}
    try:
        for name in names:
            wait_serving(sock(state, name), "", 60)
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def pool_xml(name: str, path: Path) -> str:
    return (f"<pool type='dir'><name>{name}</name>"
            f"<target><path>{path}</path></target></pool>")


def network_xml(name: str) -> str:
    return (f"<network><name>{name}</name><bridge name='vf{name[-6:]}'/>"
            "<ip address='10.231.0.1' netmask='255.255.255.0'/></network>")


def filter_xml(name: str) -> str:
    return (f"<filter name='{name}' chain='ipv4'><rule action='accept' direction='out'>"
            "<ip protocol='tcp' dstportstart='22'/></rule></filter>")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# -- 3. libvirtd killed and restarted ------------------------------------------------


@dataclasses.dataclass
class Probe:
    """One service's read calls about one object known to exist: its list must hold it,
    its lookup must find it; and its event stream, where it has one."""

    service: str
    stub: Any
    names: Callable[[], list[str]]
    get: Callable[[], str]
    watch: Callable[[], Any] | None
    thing: str


def probes(state: Path, thing: dict[str, str]) -> Iterator[Probe]:
    def channel(service: str) -> grpc.Channel:
        return grpc.insecure_channel(sock(state, service))

    storage = storage_rpc.StorageServiceStub(channel("storage"))
    yield Probe("storage", storage,
                lambda: [p.name for p in storage.ListStoragePools(
                    storage_pb.ListStoragePoolsRequest(page_size=1000), timeout=5).storage_pools],
                lambda: storage.GetStoragePool(storage_pb.GetStoragePoolRequest(
                    name=thing["storage"]), timeout=5).storage_pool.name,
                lambda: storage.WatchStoragePoolEvents(
                    storage_pb.WatchStoragePoolEventsRequest(), timeout=60), thing["storage"])
    network = net_rpc.NetworkServiceStub(channel("network"))
    yield Probe("network", network,
                lambda: [n.name for n in network.ListNetworks(
                    net_pb.ListNetworksRequest(page_size=1000), timeout=5).networks],
                lambda: network.GetNetwork(net_pb.GetNetworkRequest(
                    name=thing["network"]), timeout=5).network.name,
                lambda: network.WatchNetworkEvents(net_pb.WatchNetworkEventsRequest(),
                                                   timeout=60), thing["network"])
    nwfilter = filter_rpc.NWFilterServiceStub(channel("nwfilter"))
    yield Probe("nwfilter", nwfilter,
                lambda: [f.name for f in nwfilter.ListNWFilters(
                    filter_pb.ListNWFiltersRequest(page_size=1000), timeout=5).nwfilters],
                lambda: nwfilter.GetNWFilter(filter_pb.GetNWFilterRequest(
                    name=thing["nwfilter"]), timeout=5).nwfilter.name, None, thing["nwfilter"])
    nodedev = dev_rpc.NodeDeviceServiceStub(channel("nodedev"))
    yield Probe("nodedev", nodedev,
                lambda: [d.name for d in nodedev.ListNodeDevices(
                    dev_pb.ListNodeDevicesRequest(page_size=1000), timeout=5).node_devices],
                lambda: nodedev.GetNodeDevice(dev_pb.GetNodeDeviceRequest(
                    name="computer"), timeout=5).node_device.name,
                lambda: nodedev.WatchNodeDeviceEvents(dev_pb.WatchNodeDeviceEventsRequest(),
                                                      timeout=60), "computer")
    iface = iface_rpc.InterfaceServiceStub(channel("iface"))
    yield Probe("iface", iface,
                lambda: [i.name for i in iface.ListInterfaces(
                    iface_pb.ListInterfacesRequest(page_size=1000), timeout=5).interfaces],
                lambda: iface.GetInterface(iface_pb.GetInterfaceRequest(name="lo"),
                                           timeout=5).interface.name, None, "lo")


def health_is(target: str, wanted: int) -> Callable[[], bool]:
    return lambda: health(target) == wanted


def watch(probe: Probe) -> Any:
    assert probe.watch is not None
    return probe.watch()


class Hammer:
    """Calls a probe's list and lookup in a loop, recording what each call returned:
    the object (found, or listed), or the status code of the failure."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.outcomes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        probe = self.probe
        while not self._stop.is_set():
            for what, call in (("list", probe.names), ("get", probe.get)):
                try:
                    result = call()
                except grpc.RpcError as error:
                    self.outcomes.append(f"{what}:{error.code().name}: {error.details()} "
                                         f"({reason_of(error)})")
                    continue
                found = probe.thing in result if what == "list" else result == probe.thing
                self.outcomes.append(f"{what}:{'OK' if found else f'WRONG {result!r}'}")
            time.sleep(0.01)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(10)
        return self.outcomes


def stream_end(stream: Any, timeout: float) -> tuple[grpc.StatusCode | None, list[Any]]:
    """Read ``stream`` on a thread until it ends: its final code (None if it did not end
    within ``timeout``) and what it delivered."""
    got: list[Any] = []
    ended: list[grpc.StatusCode] = []

    def read() -> None:
        try:
            for message in stream:
                got.append(message)
            ended.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            ended.append(error.code())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        stream.cancel()
        return None, got
    return ended[0], got


def test_libvirtd_killed_and_restarted(libvirtd: PrivateLibvirtd, state: Path) -> None:
    """kill -9 libvirtd under its five services, then start it again."""
    services = ("storage", "network", "nwfilter", "nodedev", "iface")
    thing = {"storage": unique("vf-pool"), "network": unique("vf-net"),
             "nwfilter": unique("vf-filter")}
    with daemon_services(state, libvirtd, services):
        found = {probe.service: probe for probe in probes(state, thing)}
        storage, network, nwfilter = found["storage"], found["network"], found["nwfilter"]
        storage.stub.DefineStoragePool(storage_pb.DefineStoragePoolRequest(
            xml=pool_xml(thing["storage"], state / "pool")))
        storage.stub.StartStoragePool(storage_pb.StartStoragePoolRequest(
            name=thing["storage"], build=True))
        network.stub.DefineNetwork(net_pb.DefineNetworkRequest(xml=network_xml(
            thing["network"])))
        nwfilter.stub.DefineNWFilter(filter_pb.DefineNWFilterRequest(
            xml=filter_xml(thing["nwfilter"])))
        before = {name: sorted(probe.names()) for name, probe in found.items()}
        assert all(before.values())

        watches = {}
        for name, probe in found.items():
            if probe.watch is not None:
                watches[name] = probe.watch()
                watches[name].initial_metadata()  # subscribed
        hammers = [Hammer(probe) for probe in found.values()]
        time.sleep(0.3)

        libvirtd.kill()
        for name in services:
            wait_for(health_is(sock(state, name), NOT_SERVING), 15,
                     f"{name} to report NOT_SERVING")
        # the outage as every service shows it: lists, lookups, new watches
        for name, probe in found.items():
            for call in (probe.names, probe.get, *((lambda probe=probe: next(iter(
                    probe.watch())),) if probe.watch else ())):
                code = code_of(call)
                assert code == UNAVAILABLE, f"{name} during the outage: {code}"
        # and the watchers are told, with UNAVAILABLE, rather than left waiting
        for name, stream in watches.items():
            ended, _ = stream_end(stream, 10)
            assert ended == UNAVAILABLE, f"{name}'s watch stream: {ended}"

        libvirtd.start()
        for name in services:
            wait_for(health_is(sock(state, name), SERVING), 20, f"{name} to reconnect")
        time.sleep(0.3)
        outcomes = {probe.service: hammer.stop() for probe, hammer in
                    zip(found.values(), hammers, strict=True)}

        after = {name: sorted(probe.names()) for name, probe in found.items()}
        assert after == before

        # events flow again, from the new libvirt connection
        stream = watch(storage)
        stream.initial_metadata()
        storage.stub.RefreshStoragePool(storage_pb.RefreshStoragePoolRequest(
            name=thing["storage"]))
        event = next(iter(stream))
        assert event.name == thing["storage"] and event.WhichOneof("event") == "refresh"
        stream.cancel()
        stream = watch(network)
        stream.initial_metadata()
        network.stub.UndefineNetwork(net_pb.UndefineNetworkRequest(name=thing["network"]))
        assert next(iter(stream)).name == thing["network"]
        stream.cancel()
        watch(found["nodedev"]).initial_metadata()

        # Last, the calls that raced the crash: each answered right, or UNAVAILABLE.
        for name, seen in outcomes.items():
            assert any(":UNAVAILABLE:" in o for o in seen), f"{name} saw no outage"
            assert seen[-1].endswith(":OK"), f"{name} did not recover: {seen[-3:]}"
        wrong = {name: [o for o in seen if not o.endswith(":OK") and ":UNAVAILABLE:" not in o]
                 for name, seen in outcomes.items()}
        assert not any(wrong.values()), f"answers while libvirtd went away: {wrong}"


# -- 4. a restart changes nothing ------------------------------------------------------


#: service -> (list RPC, its repeated field, page size, XML RPC): each object listed,
#: then its XML by name (compute and storage, whose objects nest, are read apart)
LISTED = {"network": ("ListNetworks", "networks", 2, "GetNetworkXML"),
          "nwfilter": ("ListNWFilters", "nwfilters", 5, "GetNWFilterXML"),
          "secret": ("ListSecrets", "secrets", 2, "GetSecretXML"),
          "nodedev": ("ListNodeDevices", "node_devices", 50, "GetNodeDeviceXML"),
          "iface": ("ListInterfaces", "interfaces", 2, "GetInterfaceXML")}


def everything(state: Path, services: tuple[str, ...]) -> dict[str, bytes]:
    """Every list (all of its pages, as bytes) and every listed object's XML that
    ``services`` answer, keyed by the call that returned it."""
    found: dict[str, bytes] = {}

    def listed(call: Any, request: Any, field: str, key: str) -> list[Any]:
        items: list[Any] = []
        for page in itertools.count():
            response = call(request, timeout=10)
            token = response.next_page_token
            response.next_page_token = "next" if token else ""  # sealed afresh each time
            for item in getattr(response, field):
                if field == "domains":  # QEMU's own threads run on, a paused guest's too
                    item.cpu_time_ns = 0
            found[f"{key} page {page}"] = response.SerializeToString(deterministic=True)
            items.extend(getattr(response, field))
            if not token:
                return items
            request.page_token = token
        raise AssertionError("unreachable")

    def xml(key: str, call: Any, request: Any) -> None:
        found[key] = call(request, timeout=10).xml.encode()

    for service in services:
        stub = service_stub(service, grpc.insecure_channel(sock(state, service)))
        proto = registry.spec(service).proto
        if service in LISTED:
            list_rpc, field, size, xml_rpc = LISTED[service]
            for item in listed(getattr(stub, list_rpc),
                               getattr(proto, f"{list_rpc}Request")(page_size=size),
                               field, service):
                xml(f"{service} {item.name}", getattr(stub, xml_rpc),
                    getattr(proto, f"{xml_rpc}Request")(name=item.name))
                if service == "secret":
                    found[f"secret value {item.name}"] = stub.GetSecretValue(
                        secret_pb.GetSecretValueRequest(name=item.name), timeout=10).value
        elif service == "compute":
            for domain in listed(stub.ListDomains, compute_pb.ListDomainsRequest(page_size=2),
                                 "domains", "domains"):
                for inactive in (False, True):
                    xml(f"domain {domain.name} {inactive}", stub.GetDomainXML,
                        compute_pb.GetDomainXMLRequest(name=domain.name, inactive=inactive))
        elif service == "storage":
            for pool in listed(stub.ListStoragePools, storage_pb.ListStoragePoolsRequest(
                    page_size=2), "storage_pools", "pools"):
                xml(f"pool {pool.name}", stub.GetStoragePoolXML,
                    storage_pb.GetStoragePoolXMLRequest(name=pool.name))
                if pool.state == storage_pb.STORAGE_POOL_STATE_RUNNING:
                    for volume in listed(stub.ListStorageVolumes, storage_pb.
                                         ListStorageVolumesRequest(pool=pool.name, page_size=2),
                                         "storage_volumes", f"volumes of {pool.name}"):
                        xml(f"volume {pool.name} {volume.name}", stub.GetStorageVolumeXML,
                            storage_pb.GetStorageVolumeXMLRequest(pool=pool.name,
                                                                  name=volume.name))
    return found


def assert_unchanged(before: dict[str, bytes], after: dict[str, bytes], what: str) -> None:
    changed = {key: (before.get(key), after.get(key)) for key in before.keys() | after.keys()
               if before.get(key) != after.get(key)}
    assert not changed, f"{what} changed: {changed}"


def test_restart_changes_no_object(libvirtd: PrivateLibvirtd, state: Path) -> None:
    """Storage, network, nwfilter, nodedev and iface on the private libvirtd and the
    embedded secret service, each holding objects of its own: every list and every
    object's XML (and the secret's value) are byte for byte the same after SIGTERM and
    a new process."""
    services = ("storage", "network", "nwfilter", "nodedev", "iface")
    names = {"pool": unique("vf-pool"), "network": unique("vf-net"),
             "nwfilter": unique("vf-filter"), "secret": unique("vf-secret")}
    secret_uri = f"secret:///embed?root={state}/secret"
    with daemon_services(state, libvirtd, services) as processes:
        processes["secret"] = service_process(state, "secret", "--uri", secret_uri).start()
        wait_serving(sock(state, "secret"), "", 60)
        channel = grpc.insecure_channel
        storage = storage_rpc.StorageServiceStub(channel(sock(state, "storage")))
        storage.DefineStoragePool(storage_pb.DefineStoragePoolRequest(
            xml=pool_xml(names["pool"], state / "pool")))
        storage.StartStoragePool(storage_pb.StartStoragePoolRequest(name=names["pool"],
                                                                    build=True))
        for volume in ("a.img", "b.img", "c.img"):
            storage.CreateStorageVolume(storage_pb.CreateStorageVolumeRequest(
                pool=names["pool"], xml=f"<volume><name>{volume}</name><capacity unit='KiB'>"
                "64</capacity><target><format type='raw'/></target></volume>"))
        net_rpc.NetworkServiceStub(channel(sock(state, "network"))).DefineNetwork(
            net_pb.DefineNetworkRequest(xml=network_xml(names["network"])))
        filter_rpc.NWFilterServiceStub(channel(sock(state, "nwfilter"))).DefineNWFilter(
            filter_pb.DefineNWFilterRequest(xml=filter_xml(names["nwfilter"])))
        secret = secret_rpc.SecretServiceStub(channel(sock(state, "secret")))
        defined = secret.DefineSecret(secret_pb.DefineSecretRequest(
            xml=f"<secret ephemeral='no' private='no'><usage type='ceph'><name>"
                f"{names['secret']}</name></usage></secret>")).secret
        secret.SetSecretValue(secret_pb.SetSecretValueRequest(name=defined.name,
                                                              value=b"\x00kept\xff"))
        everyone = (*services, "secret")
        before = everything(state, everyone)
        assert any(names["pool"] in key for key in before)
        assert f"secret value {defined.name}" in before

        for name in everyone:
            processes[name].stop()
            processes[name].start()
        for name in everyone:
            wait_serving(sock(state, name), "", 60)
        assert_unchanged(before, everything(state, everyone), "after a restart")


# -- 5. SIGTERM drains ---------------------------------------------------------------

MIB = 1 << 20


@contextlib.contextmanager
def storage_pool(stub: Any, directory: Path) -> Iterator[str]:
    """A started dir pool in ``directory``, removed afterwards."""
    name = unique("vf-pool")
    stub.DefineStoragePool(storage_pb.DefineStoragePoolRequest(xml=pool_xml(name, directory)))
    stub.StartStoragePool(storage_pb.StartStoragePoolRequest(name=name, build=True))
    try:
        yield name
    finally:
        with contextlib.suppress(grpc.RpcError):
            for vol in stub.ListStorageVolumes(storage_pb.ListStorageVolumesRequest(
                    pool=name)).storage_volumes:
                stub.DeleteStorageVolume(storage_pb.DeleteStorageVolumeRequest(
                    pool=name, name=vol.name))
            stub.StopStoragePool(storage_pb.StopStoragePoolRequest(name=name))
            stub.UndefineStoragePool(storage_pb.UndefineStoragePoolRequest(name=name))


def volume(stub: Any, pool: str, name: str, capacity: int) -> None:
    stub.CreateStorageVolume(storage_pb.CreateStorageVolumeRequest(pool=pool, xml=(
        f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
        "<target><format type='raw'/></target></volume>")))


class HealthWatch:
    """A grpc.health.v1 Watch stream read on a thread: (monotonic time, status) pairs."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stream = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=60)
        self.seen: list[tuple[float, int]] = []
        self.ended: tuple[float, grpc.StatusCode] | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for reply in self.stream:
                self.seen.append((time.monotonic(), reply.status))
            self.ended = (time.monotonic(), grpc.StatusCode.OK)
        except grpc.RpcError as error:
            self.ended = (time.monotonic(), error.code())

    def first(self, status: int) -> float | None:
        return next((when for when, got in self.seen if got == status), None)

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


def test_sigterm_drains(libvirtd: PrivateLibvirtd, state: Path) -> None:
    """SIGTERM with an upload in flight: health says NOT_SERVING at once, new calls get
    UNAVAILABLE at once, the upload completes, and the process exits within the grace."""
    grace = 5.0
    data = random.randbytes(4 * MIB)
    with daemon_services(state, libvirtd, ("storage",), "--grace-period", str(grace)) as procs, \
            grpc.insecure_channel(sock(state, "storage")) as channel:
        stub = storage_rpc.StorageServiceStub(channel)
        process = procs["storage"]
        with storage_pool(stub, state / "pool") as pool:
            volume(stub, pool, "drain.img", len(data))
            watch = HealthWatch(sock(state, "storage"))
            wait_for(lambda: watch.first(SERVING), 5, "the health watch")
            terminated = threading.Event()
            first_sent = threading.Event()

            def requests() -> Iterator[storage_pb.UploadStorageVolumeRequest]:
                yield storage_pb.UploadStorageVolumeRequest(pool=pool, name="drain.img",
                                                            data=data[:MIB])
                first_sent.set()
                terminated.wait(10)
                for start in range(MIB, len(data), MIB):
                    time.sleep(0.2)  # still sending well after the SIGTERM
                    yield storage_pb.UploadStorageVolumeRequest(data=data[start:start + MIB])

            upload = stub.UploadStorageVolume.future(requests(), timeout=30)
            first_sent.wait(5)
            time.sleep(0.3)  # the service is inside the upload
            sigterm = time.monotonic()
            process.signal(signal.SIGTERM)

            wait_for(lambda: watch.first(NOT_SERVING), 2, "NOT_SERVING on the health watch")
            # new calls, on the open channel and on a new one, are refused at once
            for target in (stub, storage_rpc.StorageServiceStub(
                    grpc.insecure_channel(sock(state, "storage")))):
                began = time.monotonic()
                code = code_of(functools.partial(target.ListStoragePools,
                                                 storage_pb.ListStoragePoolsRequest(), timeout=10))
                assert code == UNAVAILABLE, code
                assert time.monotonic() - began < 2, "a refused call hung"
            assert upload.running(), "the upload ended before its client finished it"
            terminated.set()

            reply = upload.result(timeout=grace + 5)
            done = time.monotonic()
            assert reply.bytes_written == len(data)
            assert done - sigterm < grace, f"the upload took {done - sigterm:.1f}s"
            assert watch.first(NOT_SERVING) < done  # type: ignore[operator]
            assert process.popen is not None
            assert process.popen.wait(grace + 5) == 0
            exited = time.monotonic()
            watch.close()
            # nothing else was in flight: no waiting out the grace period
            assert exited - done < 2, (f"exited {exited - done:.1f}s after the last call; "
                                       f"health watch {watch.ended} {watch.seen} {sigterm}\n"
                                       f"{process.log()[-3000:]}")

            # the service wrote the whole upload: read it back straight from libvirt
            conn = libvirt.open(libvirtd.uri("storage"))
            try:
                vol = conn.storagePoolLookupByName(pool).storageVolLookupByName("drain.img")
                stream = conn.newStream(0)
                vol.download(stream, 0, len(data), 0)
                got = bytearray()
                while chunk := stream.recv(MIB):
                    got += chunk
                stream.finish()
            finally:
                conn.close()
            assert bytes(got) == data
            process.start()  # for storage_pool's clean-up
            wait_serving(sock(state, "storage"), "", 30)


# -- 6. a client that vanishes mid-stream ----------------------------------------------

VANISHING_CLIENT = """
import sys, time, grpc
from virtmesh.storage.v1 import storage_service_pb2 as pb, storage_service_pb2_grpc as rpc
target, pool, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
stub = rpc.StorageServiceStub(grpc.insecure_channel(target))
held = []
for i in range(count):
    download = stub.DownloadStorageVolume(pb.DownloadStorageVolumeRequest(
        pool=pool, name="big.img"))
    next(download)
    watch = stub.WatchStoragePoolEvents(pb.WatchStoragePoolEventsRequest())
    watch.initial_metadata()
    held += [download, watch]
print("ready", flush=True)
time.sleep(600)
"""


def streams(stub: Any, pool: str, count: int) -> list[Any]:
    """``count`` downloads that have delivered a chunk and ``count`` subscribed watches."""
    held = []
    for _ in range(count):
        download = stub.DownloadStorageVolume(storage_pb.DownloadStorageVolumeRequest(
            pool=pool, name="big.img"), timeout=60)
        next(download)
        watch = stub.WatchStoragePoolEvents(storage_pb.WatchStoragePoolEventsRequest(),
                                            timeout=60)
        watch.initial_metadata()
        held += [download, watch]
    return held


def open_files(pid: int, path: Path) -> int:
    """How many of process ``pid``'s fds are open on ``path``."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == str(path)
    return count


def test_vanished_client_is_forgotten(libvirtd: PrivateLibvirtd, state: Path) -> None:
    """A client SIGKILLed with downloads and watches open: the service ends their libvirt
    streams and subscriptions, and its fds and threads return to the baseline."""
    count = 4
    with daemon_services(state, libvirtd, ("storage",), "--max-event-watchers",
                         str(count)) as procs, \
            grpc.insecure_channel(sock(state, "storage")) as channel:
        stub = storage_rpc.StorageServiceStub(channel)
        pid = pid_of(procs["storage"])
        assert libvirtd.daemon is not None
        with storage_pool(stub, state / "pool") as pool:
            volume(stub, pool, "big.img", 256 * MIB)  # sparse: 32 download windows
            image = state / "pool" / "big.img"
            # Warm up: the thread pool grows to what this load needs (it never shrinks)
            # and stays there; that is the baseline.
            warm = streams(stub, pool, count)
            assert code_of(lambda: next(stub.WatchStoragePoolEvents(
                storage_pb.WatchStoragePoolEventsRequest(), timeout=5))) == \
                grpc.StatusCode.RESOURCE_EXHAUSTED  # as below: one call more
            for held in warm:
                held.cancel()
            time.sleep(1.5)
            baseline = (fd_count(pid), thread_count(pid))
            libvirtd_fds = fd_count(libvirtd.daemon.pid)

            for round_ in range(2):  # twice: nothing grows per vanished client
                client = subprocess.Popen(
                    [os.sys.executable, "-c", VANISHING_CLIENT, sock(state, "storage"),  # type: ignore[attr-defined]
                     pool, str(count)], cwd=ROOT, stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                        [str(ROOT / "protos" / "gen" / "python"), str(ROOT)])})
                try:
                    assert client.stdout is not None
                    assert client.stdout.readline() == b"ready\n"
                    # every watcher slot is taken
                    assert code_of(lambda: next(stub.WatchStoragePoolEvents(
                        storage_pb.WatchStoragePoolEventsRequest(), timeout=5))) == \
                        grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert fd_count(pid) > baseline[0]  # the client's connection at least
                finally:
                    os.kill(client.pid, signal.SIGKILL)
                    client.wait()

                def settled() -> bool:
                    return (fd_count(pid) <= baseline[0] and thread_count(pid) <= baseline[1] + 1
                            and open_files(libvirtd.daemon.pid, image) == 0  # type: ignore[union-attr]
                            and fd_count(libvirtd.daemon.pid) <= libvirtd_fds)  # type: ignore[union-attr]

                with contextlib.suppress(AssertionError):
                    wait_for(settled, 10, "the streams to be freed")
                assert fd_count(pid) <= baseline[0], (round_, fd_count(pid), baseline)
                # The gRPC thread pool may start one more worker when a call comes while
                # all are busy for a moment (it never shrinks): one thread is that; the
                # client's 2 x count calls left behind would be several.
                assert thread_count(pid) <= baseline[1] + 1, (round_, thread_count(pid),
                                                               baseline)
                assert open_files(libvirtd.daemon.pid, image) == 0, "libvirt streams left open"
                assert fd_count(libvirtd.daemon.pid) <= libvirtd_fds, "libvirtd kept fds"
                # and the watcher slots are free again
                watch = stub.WatchStoragePoolEvents(storage_pb.WatchStoragePoolEventsRequest(),
                                                    timeout=5)
                watch.initial_metadata()
                watch.cancel()


# -- compute on embedded QEMU ----------------------------------------------------------

EMBED_URI = "qemu:///embed?root={state}/qemu"
GUEST_FILES = ("vmlinuz", "initrd.img")


def qemu_usable() -> bool:
    return bool(shutil.which("qemu-system-x86_64")) and (
        all((ROOT / ".virtmesh" / "guest" / f).exists() for f in GUEST_FILES)
        or (ROOT / "guest" / "build-guest.sh").exists())


qemu = pytest.mark.skipif(not qemu_usable(), reason="needs qemu-system-x86_64 and the guest")


def add_guest(state: Path) -> None:
    """The example guest's kernel and initramfs under ``state``/guest: linked from
    .virtmesh/guest when `make guest` built them, built otherwise."""
    target = state / "guest"
    target.mkdir(parents=True, exist_ok=True)
    built = ROOT / ".virtmesh" / "guest"
    if all((built / f).exists() for f in GUEST_FILES):
        for name in GUEST_FILES:
            try:
                os.link(built / name, target / name)
            except OSError:
                shutil.copy(built / name, target / name)
        return
    result = subprocess.run([str(ROOT / "guest" / "build-guest.sh"), str(target)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def qemu_processes(state: Path) -> dict[str, int]:
    """guest name -> PID of each QEMU running a guest of this embedded root."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].startswith(b"qemu-system") and b"/qemu-system" not in argv[0]:
            continue
        if not any(str(state).encode() in arg for arg in argv):
            continue
        name = argv[argv.index(b"-name") + 1].decode() if b"-name" in argv else ""
        found[name.removeprefix("guest=").split(",")[0]] = int(entry)
    return found


def pid_file(state: Path, name: str) -> int | None:
    path = state / "qemu" / "run" / "qemu" / f"{name}.pid"
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


@pytest.fixture(scope="module")
def qemu_cache() -> Iterator[Path]:
    """QEMU's capabilities, probed once (about 4 s) and copied into each test's root."""
    state = short_dir("vfq-")
    try:
        add_guest(state)
        compute = start_compute(state)
        try:
            stub = compute_rpc.ComputeServiceStub(grpc.insecure_channel(sock(state, "compute")))
            stub.DefineDomain(compute_pb.DefineDomainRequest(xml=guest_xml("probe", state)))
        finally:
            compute.stop()
        yield state / "qemu" / "cache"
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def qemu_state(cache: Path) -> Iterator[Path]:
    state = short_dir("vfq-")
    try:
        add_guest(state)
        shutil.copytree(cache, state / "qemu" / "cache")
        yield state
    finally:
        for pid in qemu_processes(state).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)


def start_compute(state: Path, *args: str) -> Process:
    process = service_process(state, "compute", "--uri", EMBED_URI.format(state=state),
                              *args).start()
    wait_serving(sock(state, "compute"), "", 60)
    return process


def guest_xml(name: str, state: Path, guest_uuid: str | None = None) -> str:
    xml = example.render(name, state, "qemu")
    if guest_uuid:
        xml = xml.replace("</name>", f"</name>\n  <uuid>{guest_uuid}</uuid>", 1)
    return xml


def compute_stub(state: Path) -> compute_rpc.ComputeServiceStub:
    return compute_rpc.ComputeServiceStub(grpc.insecure_channel(sock(state, "compute")))


def domains(stub: compute_rpc.ComputeServiceStub) -> dict[str, compute_pb.Domain]:
    return {d.name: d for d in stub.ListDomains(compute_pb.ListDomainsRequest(page_size=1000),
                                                timeout=10).domains}


def assert_complete(stub: compute_rpc.ComputeServiceStub, state: Path,
                    expected: dict[str, str]) -> None:
    """Every listed domain's XML parses and has the name and UUID it was defined with;
    every definition on disk is a listed domain (none that libvirt could not load).
    The disk is read first: libvirt lists a domain before it writes its file, and
    a define may still be running behind a caller that went away."""
    on_disk = {path.stem for path in (state / "qemu" / "etc" / "qemu").glob("*.xml")}
    listed = domains(stub)
    for name, domain in listed.items():
        for inactive in (False, True):
            root = ET.fromstring(stub.GetDomainXML(compute_pb.GetDomainXMLRequest(
                name=name, inactive=inactive)).xml)
            assert root.findtext("name") == name
            assert root.findtext("uuid") == domain.uuid == expected.get(name, domain.uuid)
            assert root.find("devices/serial") is not None, f"{name}'s XML is cut short"
    assert on_disk <= set(listed), f"definitions libvirt did not load: {on_disk - set(listed)}"


def assert_state_matches_qemu(stub: compute_rpc.ComputeServiceStub, state: Path,
                              timeout: float = 15) -> dict[str, int]:
    """The state the service reports is the QEMU processes there are: RUNNING (or
    PAUSED) exactly for the guests with a QEMU process, whose PID is in the pid file.
    Waits for QEMU processes being torn down; returns guest name -> QEMU PID."""
    last: list[Any] = []

    def consistent() -> dict[str, int] | None:
        listed = domains(stub)
        processes = qemu_processes(state)
        active = {name for name, d in listed.items()
                  if d.state not in (compute_pb.DOMAIN_STATE_SHUTOFF,
                                     compute_pb.DOMAIN_STATE_UNSPECIFIED)}
        last[:] = [{n: compute_pb.DomainState.Name(d.state) for n, d in listed.items()},
                   processes]
        if active != set(processes):
            return None
        if any(pid_file(state, name) != pid for name, pid in processes.items()):
            return None
        return processes or {"": 0}

    try:
        found = wait_for(consistent, timeout, "the reported state to match QEMU")
    except AssertionError as error:
        raise AssertionError(f"{error}: reported {last[0]}, QEMU processes {last[1]}") from None
    found.pop("", None)
    return found  # type: ignore[no-any-return]


# -- 1. compute killed during Define, Start and Destroy --------------------------------


@qemu
def test_compute_killed_during_defines(qemu_cache: Path) -> None:
    """Many DefineDomain calls in parallel, kill -9 at a random moment, restart on the
    same root: the domains are those before, the defines that succeeded, and at most
    the ones in flight, each one complete."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with qemu_state(qemu_cache) as state:
        compute = start_compute(state)
        try:
            stub = compute_stub(state)
            uuids = {}
            for name in ("base-1", "base-2"):
                uuids[name] = str(uuid.uuid4())
                stub.DefineDomain(compute_pb.DefineDomainRequest(
                    xml=guest_xml(name, state, uuids[name])))
            before = set(domains(stub))
            succeeded: set[str] = set()
            failed: dict[str, grpc.StatusCode] = {}
            lock = threading.Lock()

            def define(worker: int) -> None:
                own = compute_stub(state)
                for i in range(1000):
                    name = f"crash-{worker}-{i}"
                    with lock:
                        uuids[name] = str(uuid.uuid4())
                    try:
                        own.DefineDomain(compute_pb.DefineDomainRequest(
                            xml=guest_xml(name, state, uuids[name])), timeout=30)
                    except grpc.RpcError as error:
                        with lock:
                            failed[name] = error.code()
                        return
                    with lock:
                        succeeded.add(name)

            workers = [threading.Thread(target=define, args=(n,)) for n in range(6)]
            for worker in workers:
                worker.start()
            time.sleep(rng.uniform(0.2, 1.0))
            sigkill(compute)
            for worker in workers:
                worker.join(40)
            assert succeeded, f"seed {seed}: no define finished before the kill"
            assert set(failed.values()) == {UNAVAILABLE}, f"seed {seed}: {failed}"

            compute = start_compute(state)
            stub = compute_stub(state)
            after = set(domains(stub))
            assert before | succeeded <= after, f"seed {seed}: lost {before | succeeded - after}"
            assert after <= before | succeeded | set(failed), f"seed {seed}: {after}"
            assert_complete(stub, state, uuids)
            # a define cut short left nothing behind that blocks doing it again
            for name in set(failed) - after:
                stub.DefineDomain(compute_pb.DefineDomainRequest(
                    xml=guest_xml(name, state, uuids[name])))
            assert_complete(stub, state, uuids)
        finally:
            compute.stop()


@qemu
def test_compute_killed_during_start_and_destroy(qemu_cache: Path) -> None:
    """kill -9 in the middle of StartDomain, then of DestroyDomain: after each restart the
    bystander guest runs on in the same QEMU process, and the state reported for every
    guest is the QEMU processes there are."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with qemu_state(qemu_cache) as state:
        compute = start_compute(state)
        try:
            stub = compute_stub(state)
            for name in ("keep", "flip"):
                stub.DefineDomain(compute_pb.DefineDomainRequest(xml=guest_xml(name, state)))
            stub.StartDomain(compute_pb.StartDomainRequest(name="keep"))
            keep = assert_state_matches_qemu(stub, state)["keep"]

            for verb in ("start", "destroy"):
                call: Any
                if verb == "start":
                    call = stub.StartDomain.future(
                        compute_pb.StartDomainRequest(name="flip"), timeout=30)
                else:
                    call = stub.DestroyDomain.future(
                        compute_pb.DestroyDomainRequest(name="flip"), timeout=30)
                delay = rng.uniform(0.05, 1.5)
                time.sleep(delay)
                in_flight = call.running()
                sigkill(compute)
                with contextlib.suppress(grpc.RpcError):
                    call.result(10)
                flip_before = qemu_processes(state).get("flip")

                compute = start_compute(state)
                stub = compute_stub(state)
                running = assert_state_matches_qemu(stub, state)
                where = f"seed {seed}, {verb} killed after {delay:.2f}s (in flight: {in_flight})"
                assert running.get("keep") == keep, f"{where}: keep's QEMU changed"
                if verb == "destroy" and "flip" in running:
                    assert running["flip"] == flip_before, f"{where}: a new QEMU for flip"
                assert_complete(stub, state, {})
                if verb == "start" and "flip" not in running:
                    stub.StartDomain(compute_pb.StartDomainRequest(name="flip"))
                    assert_state_matches_qemu(stub, state)
            stub.DestroyDomain(compute_pb.DestroyDomainRequest(name="keep"))
            assert assert_state_matches_qemu(stub, state) == {}
        finally:
            compute.stop()


# -- 2. the gateway killed mid-call ----------------------------------------------------


@qemu
def test_gateway_killed_mid_call(qemu_cache: Path) -> None:
    """kill -9 the gateway with a StartDomain, defines and an event stream in flight:
    the callers get UNAVAILABLE; each operation is done or not begun; a new gateway
    on the same port serves."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with qemu_state(qemu_cache) as state, running_mesh(state, EMBED_URI.format(
            state=state)) as mesh:
        direct = compute_stub(state)
        direct.DefineDomain(compute_pb.DefineDomainRequest(xml=guest_xml("gw-vm", state)))
        channel = mesh.channel()
        stub = compute_rpc.ComputeServiceStub(channel)
        events = stub.WatchDomainEvents(compute_pb.WatchDomainEventsRequest(), timeout=60)
        events.initial_metadata()
        start = stub.StartDomain.future(compute_pb.StartDomainRequest(name="gw-vm"), timeout=30)
        outcomes: dict[str, grpc.StatusCode] = {}
        uuids: dict[str, str] = {}
        lock = threading.Lock()

        def define(worker: int) -> None:
            for i in range(1000):
                name = f"gw-{worker}-{i}"
                with lock:
                    uuids[name] = str(uuid.uuid4())
                code = code_of(functools.partial(stub.DefineDomain, compute_pb.DefineDomainRequest(
                    xml=guest_xml(name, state, uuids[name])), timeout=30))
                with lock:
                    outcomes[name] = code
                if code != grpc.StatusCode.OK:
                    return

        workers = [threading.Thread(target=define, args=(n,)) for n in range(3)]
        for worker in workers:
            worker.start()
        delay = rng.uniform(0.05, 0.3)
        time.sleep(delay)
        assert start.running(), "StartDomain finished before the kill"
        sigkill(mesh.gateway)
        where = f"seed {seed}, gateway killed after {delay:.2f}s"

        began = time.monotonic()
        assert code_of(lambda: start.result(15)) == UNAVAILABLE, where
        code, _ = stream_end(events, 10)
        assert code == UNAVAILABLE, f"{where}: the event stream ended with {code}"
        for worker in workers:
            worker.join(15)
        assert time.monotonic() - began < 15, f"{where}: callers hung"
        failed = {name for name, code in outcomes.items() if code != grpc.StatusCode.OK}
        assert {outcomes[name] for name in failed} == {UNAVAILABLE}, f"{where}: {outcomes}"
        channel.close()

        # behind it, each operation completed or never began (the calls the gateway
        # had forwarded run to their end: wait for the list to settle)
        running = assert_state_matches_qemu(direct, state)
        listed: set[str] = set()

        def settled() -> bool:
            previous = set(listed)
            listed.clear()
            listed.update(domains(direct))
            time.sleep(0.3)
            return previous == listed

        wait_for(settled, 10, "the defines in flight to finish")
        succeeded = set(outcomes) - failed
        assert succeeded <= listed and listed <= {"gw-vm"} | set(outcomes), where
        assert_complete(direct, state, uuids)

        gateway = gateway_process(state, mesh.port).start()
        try:
            wait_serving(mesh.target, "", 30, mesh.credentials())
            with mesh.channel() as again:
                stub = compute_rpc.ComputeServiceStub(again)
                assert set(domains(stub)) == listed
                if "gw-vm" in running:
                    stub.DestroyDomain(compute_pb.DestroyDomainRequest(name="gw-vm"))
                else:
                    stub.StartDomain(compute_pb.StartDomainRequest(name="gw-vm"))
        finally:
            gateway.stop()
            with contextlib.suppress(grpc.RpcError):
                direct.DestroyDomain(compute_pb.DestroyDomainRequest(name="gw-vm"))


# -- 4. (compute) a restart changes no domain ---------------------------------------


@qemu
def test_compute_restart_changes_no_domain(qemu_cache: Path) -> None:
    """Embedded compute with two inactive guests and a paused one: after SIGTERM and a
    new process every list (CPU time aside: QEMU's own threads run on, a paused
    guest's too) and every domain's live and inactive XML are byte for byte the same,
    and the paused guest kept its QEMU process."""
    with qemu_state(qemu_cache) as state:
        compute = start_compute(state)
        try:
            stub = compute_stub(state)
            for name in ("idle", "held", "other"):
                stub.DefineDomain(compute_pb.DefineDomainRequest(xml=guest_xml(name, state)))
            stub.StartDomain(compute_pb.StartDomainRequest(name="held"), timeout=60)
            stub.SuspendDomain(compute_pb.SuspendDomainRequest(name="held"))
            before = everything(state, ("compute",))
            pids = qemu_processes(state)
            assert set(pids) == {"held"} and len(before) == 2 * 3 + 2  # 3 XMLs x2, 2 pages
            compute.stop()
            compute = start_compute(state)
            assert_unchanged(before, everything(state, ("compute",)), "after a restart")
            assert qemu_processes(state) == pids
            stub = compute_stub(state)
            stub.DestroyDomain(compute_pb.DestroyDomainRequest(name="held"))
        finally:
            compute.stop()
