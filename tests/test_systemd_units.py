"""deploy/systemd and deploy/Containerfile agree with the code.

The units pass ``systemd-analyze verify`` (with /opt/virtmesh pointed at this
checkout, so that every ExecStart binary resolves); every ExecStart is a console
script of pyproject.toml whose flags the program accepts; and each ExecStart
really runs, with temporary directories in place of /var/lib, /run and /etc,
until the compute service (on its default embedded QEMU URI) and the gateway
answer health and a call. The Containerfile is checked statically (no image is
built here), and ``make image`` refuses to pretend when no builder works.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import config as gateway_config
from gateway.authn import DEV_ADMIN_DN, new_token, parse_identities, token_entry
from gateway.pki import ensure_dev_pki
from services.common import config as service_config
from services.common import registry
from services.common.daemon import ServiceSpec
from services.supervisor import METRICS_BASE_PORT, SERVICES, client_credentials, wait_serving
from tests.conftest import ROOT, free_port
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = SYSTEMD / "units"
#: the on-demand profile's drop-ins, on top of UNITS (install.sh --profile on-demand)
ON_DEMAND = SYSTEMD / "on-demand"
PREFIX = "/opt/virtmesh"
STATE, RUN, ETC = "/var/lib/virtmesh", "/run/virtmesh", "/etc/virtmesh"
#: the gateway's LogsDirectory= (its audit log)
LOGS = "/var/log/virtmesh"
#: the gateway's identities file, as virtmesh.toml names it and install.sh creates it
IDENTITIES = f"{ETC}/gateway/identities.toml"
DRIVER_UNITS = [f"virtmesh@{name}.service" for name in SERVICES]
GATEWAY_UNIT = "virtmesh-gateway.service"
SERVICE_UNITS = [*DRIVER_UNITS, GATEWAY_UNIT]
ALL_UNITS = [*SERVICE_UNITS, "virtmesh.target"]
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
COMPUTE_SERVICE = "virtmesh.compute.v1.ComputeService"

Unit = dict[str, dict[str, list[str]]]


# --- reading units ---------------------------------------------------------------

def parse_unit(text: str, into: Unit | None = None) -> Unit:
    """section -> key -> values, in order (systemd keys may repeat; empty resets)."""
    unit: Unit = into if into is not None else {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        values = unit[section].setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


def load_unit(name: str, *profiles: Path) -> Unit:
    """A unit as systemd sees it: its file (or template) plus drop-ins (the template's
    and the instance's, from UNITS and ``profiles``, in file name order), %i expanded."""
    prefix, at, rest = name.partition("@")
    instance = rest.rsplit(".", 1)[0] if at else ""
    template = f"{prefix}@.{rest.rsplit('.', 1)[1]}" if at else name
    unit = parse_unit((UNITS / template).read_text().replace("%i", instance))
    dropins = [path for directory in (UNITS, *profiles) for path in {
        *(directory / f"{template}.d").glob("*.conf"), *(directory / f"{name}.d").glob("*.conf")}]
    for dropin in sorted(dropins, key=lambda path: path.name):
        parse_unit(dropin.read_text().replace("%i", instance), unit)
    return unit


def setting(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert values, f"[{section}] {key}= is not set"
    return values[-1]


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [word for value in unit.get(section, {}).get(key, []) for word in value.split()]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", value)
    assert match, f"cannot read the time span {value!r}"
    return float(match[1]) * {"ms": 0.001, None: 1, "s": 1, "min": 60}[match[2]]


def exec_start(name: str, *profiles: Path) -> list[str]:
    return shlex.split(setting(load_unit(name, *profiles), "Service", "ExecStart"))


def console_scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        scripts: dict[str, str] = tomllib.load(file)["project"]["scripts"]
    return scripts


# --- systemd-analyze ---------------------------------------------------------------

def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not Path(found).exists():
        pytest.fail("systemd-analyze is missing: install Debian's systemd package "
                    "(tools/install-deps.sh lists it; `make test` installs it)")
    return found


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The units with /opt/virtmesh pointing at this checkout, so binaries resolve."""
    directory = tmp_path / "units"
    shutil.copytree(UNITS, directory)
    for path in directory.rglob("*"):
        if path.is_file():
            path.write_text(path.read_text().replace(PREFIX, str(ROOT)))
    return directory


def analyze(unit_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The trailing colon keeps systemd's own directories (network-online.target, ...).
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_path}:", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([systemd_analyze(), *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_systemd_analyze_is_installed() -> None:
    assert subprocess.run([systemd_analyze(), "--version"], capture_output=True,
                          check=False).returncode == 0


def test_units_pass_systemd_analyze_verify(unit_dir: Path) -> None:
    result = analyze(unit_dir, "verify", "--man=no", *ALL_UNITS)
    # verify exits 0 on mere warnings (unknown keys, bad values): any output fails.
    assert (result.returncode, result.stderr + result.stdout) == (0, "")


def test_verify_would_catch_a_mistake(unit_dir: Path) -> None:
    """The check above is not vacuous: a typo in the compute drop-in is reported."""
    dropin = unit_dir / "virtmesh@compute.service.d" / "10-compute.conf"
    dropin.write_text(dropin.read_text() + "KillMod=process\n")
    (unit_dir / GATEWAY_UNIT).write_text(
        (unit_dir / GATEWAY_UNIT).read_text().replace("virtmesh-gateway ", "virtmesh-gatewy "))
    result = analyze(unit_dir, "verify", "--man=no", *ALL_UNITS)
    assert "Unknown key 'KillMod'" in result.stderr
    assert "virtmesh-gatewy is not executable" in result.stderr


def spec_of(driver: str) -> ServiceSpec:
    return registry.spec(driver)


def driver_of(unit: str) -> str:
    return unit.removeprefix("virtmesh@").removesuffix(".service")


def uses_host_daemon(driver: str) -> bool:
    """Its driver lives in the host's libvirt daemon (libvirt cannot embed it)."""
    return not spec_of(driver).embedded


@pytest.mark.parametrize("name", [*(u for u in DRIVER_UNITS if u != "virtmesh@compute.service"),
                                  GATEWAY_UNIT])
def test_services_without_qemu_are_hardened(unit_dir: Path, name: str) -> None:
    """systemd's own exposure score: every process but compute (whose QEMU needs more,
    see README.md) must stay at 'OK' (at most 2.0)."""
    result = analyze(unit_dir, "security", "--offline=yes", "--threshold=20", name)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_only_compute_lifts_the_sandbox() -> None:
    """The template's sandbox holds for every driver but compute: no capabilities, no
    new privileges; compute's drop-in lifts those for libvirt's QEMU driver."""
    for name in DRIVER_UNITS:
        service = load_unit(name)["Service"]
        lifted = service["NoNewPrivileges"][-1] == "no"
        assert lifted == (name == "virtmesh@compute.service"), name
        assert (service["CapabilityBoundingSet"] == []) != lifted, name
        assert (service["MemoryDenyWriteExecute"][-1] == "yes") != lifted, name


def test_host_daemon_drivers_start_after_libvirt() -> None:
    """storage, network, ... order after the host's libvirt daemon, monolithic or
    modular, without pulling either in (they conflict with each other)."""
    host_drivers = [name for name in DRIVER_UNITS if uses_host_daemon(driver_of(name))]
    assert host_drivers
    for name in DRIVER_UNITS:
        unit = load_unit(name)
        scheme = spec_of(driver_of(name)).default_uri.split(":", 1)[0]
        daemons = {"libvirtd.service", f"virt{scheme}d.service"}
        after, wants = set(words(unit, "Unit", "After")), set(words(unit, "Unit", "Wants"))
        assert (daemons <= after) == (name in host_drivers), name
        assert not any(w.startswith(("libvirtd", "virt")) and "virtmesh" not in w
                       for w in wants), f"{name} pulls in a libvirt daemon: {wants}"


def test_sysusers_creates_the_virtmesh_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}",
                    str(SYSTEMD / "sysusers.d" / "virtmesh.conf")], check=True,
                   capture_output=True)
    assert (tmp_path / "etc" / "passwd").read_text().startswith("virtmesh:")
    gateway = load_unit(GATEWAY_UNIT)
    assert (setting(gateway, "Service", "User"), setting(gateway, "Service", "Group")) == (
        "virtmesh", "virtmesh")
    for name in DRIVER_UNITS:  # root, but its sockets belong to the gateway's group
        assert "User" not in load_unit(name)["Service"]
        assert setting(load_unit(name), "Service", "Group") == "virtmesh"


# --- what the units say --------------------------------------------------------------

def test_every_driver_service_is_in_the_target_and_before_the_gateway() -> None:
    target, gateway = load_unit("virtmesh.target"), load_unit(GATEWAY_UNIT)
    assert set(words(target, "Unit", "Wants")) == {*SERVICE_UNITS}
    assert setting(target, "Install", "WantedBy") == "multi-user.target"
    for name in DRIVER_UNITS:
        unit = load_unit(name)
        # Ordered after them, but not pulling them in: on demand, they start on a call.
        assert name not in words(gateway, "Unit", "Wants")
        assert name in words(gateway, "Unit", "After")
        assert GATEWAY_UNIT in words(unit, "Unit", "Before")
        assert "network-online.target" in words(unit, "Unit", "After")
    for name in SERVICE_UNITS:
        unit = load_unit(name)
        assert setting(unit, "Unit", "PartOf") == "virtmesh.target"
        assert setting(unit, "Service", "Restart") == "on-failure"
        assert 1 <= seconds(setting(unit, "Service", "RestartSec")) <= 10
        assert setting(unit, "Service", "EnvironmentFile") == f"-{ETC}/virtmesh.env"


@pytest.mark.parametrize("profiles", [(), (ON_DEMAND,)], ids=["always-on", "on-demand"])
def test_exec_start_is_a_console_script_that_accepts_its_flags(profiles: tuple[Path]) -> None:
    scripts = console_scripts()
    for name in SERVICE_UNITS:
        argv = exec_start(name, *profiles)
        program = argv[0].removeprefix(f"{PREFIX}/.venv/bin/")
        assert program in scripts, f"{name}: {argv[0]} is not a console script of pyproject"
        binary = ROOT / ".venv" / "bin" / program
        service = argv[1:2] if program == "virtmesh-service" else []  # virtmesh-service NAME
        help_text = subprocess.run([str(binary), *service, "--help"], capture_output=True,
                                   text=True, check=True, timeout=60).stdout
        for flag in (arg for arg in argv[1:] if arg.startswith("--")):
            assert flag in help_text.split(), f"{name}: {program} has no flag {flag}"


def effective_configs() -> dict[str, object]:
    """Each unit's configuration as its program computes it from the ExecStart flags
    and the shipped virtmesh.toml (environment ignored)."""
    configs: dict[str, object] = {}
    for name in SERVICE_UNITS:
        args = exec_start(name)[1:]
        assert args[args.index("--config") + 1] == f"{ETC}/virtmesh.toml"
        args[args.index("--config") + 1] = str(SYSTEMD / "virtmesh.toml")
        if name == GATEWAY_UNIT:
            configs[name] = gateway_config.load(args, environ={})
        else:
            driver = name.removeprefix("virtmesh@").removesuffix(".service")
            assert args[0] == driver, args  # virtmesh-service NAME
            spec = registry.spec(driver)
            configs[name] = service_config.load(driver, spec.default_uri, args[1:], environ={})
    return configs


def test_units_paths_are_the_programs_paths() -> None:
    configs = effective_configs()
    for name in DRIVER_UNITS:
        config = configs[name]
        assert isinstance(config, service_config.Config)
        unit = load_unit(name)
        assert setting(unit, "Service", "StateDirectory") == "virtmesh"  # /var/lib/virtmesh
        assert setting(unit, "Service", "RuntimeDirectory") == "virtmesh"  # /run/virtmesh
        # Every driver shares /run/virtmesh: one stopping must not delete the others' sockets.
        assert setting(unit, "Service", "RuntimeDirectoryPreserve") == "yes"
        assert (config.state_dir, config.socket_path) == (
            Path(STATE), Path(RUN) / f"{config.service}.sock")
        # An embedded driver keeps its state under StateDirectory; the others use the
        # host's daemon. Metrics ports are make run's: the gateway's, then SERVICES'.
        uri = spec_of(config.service).default_uri.replace("{state_dir}", STATE)
        assert config.libvirt_uri == uri
        assert not uses_host_daemon(config.service) or uri.endswith(":///system")
        assert config.metrics_listen == \
            f"127.0.0.1:{METRICS_BASE_PORT + 1 + SERVICES.index(config.service)}"
    compute = configs["virtmesh@compute.service"]
    assert isinstance(compute, service_config.Config)
    assert compute.libvirt_uri == f"qemu:///embed?root={STATE}/qemu"
    gateway = configs[GATEWAY_UNIT]
    assert isinstance(gateway, gateway_config.GatewayConfig)
    assert gateway.metrics_listen == f"127.0.0.1:{METRICS_BASE_PORT}"
    assert gateway.socket_path_dir == Path(RUN)
    assert {gateway.cert_file.parent, gateway.key_file.parent, gateway.ca_file.parent} == {
        Path(ETC) / "pki"}
    # Who may call: in /etc (read-only to the gateway, and it only reads it). The audit
    # log: the one directory it may write (ProtectSystem=strict), its LogsDirectory=.
    assert gateway.identities_path == Path(IDENTITIES)
    assert not gateway.policy_file, "an explicit policy file must exist: none is shipped"
    gateway_unit = load_unit(GATEWAY_UNIT)
    assert setting(gateway_unit, "Service", "LogsDirectory") == Path(LOGS).name
    assert gateway.audit_path == Path(LOGS) / "audit.jsonl"
    assert setting(gateway_unit, "Service", "ProtectSystem") == "strict"
    assert setting(gateway_unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_stopping_keeps_guests_and_waits_long_enough() -> None:
    configs = effective_configs()
    compute, gateway = configs["virtmesh@compute.service"], configs[GATEWAY_UNIT]
    assert isinstance(compute, service_config.Config)
    assert isinstance(gateway, gateway_config.GatewayConfig)
    unit = load_unit("virtmesh@compute.service")
    # QEMU must survive a stop or restart: only the main process is signalled.
    assert setting(unit, "Service", "KillMode") == "process"
    assert compute.guests_on_exit == "keep"
    assert not any(arg.startswith("--guests-on-exit") for arg in exec_start(
        "virtmesh@compute.service")), "guests_on_exit belongs to virtmesh.toml, not the unit"
    # Long enough for guests_on_exit = shutdown: in-flight calls, then ACPI, then destroy.
    assert seconds(setting(unit, "Service", "TimeoutStopSec")) >= (
        compute.grace_period + compute.shutdown_timeout + 15)
    gateway_unit = load_unit(GATEWAY_UNIT)
    assert seconds(setting(gateway_unit, "Service", "TimeoutStopSec")) >= (
        gateway.grace_period + 10)


def test_on_demand_units_pass_systemd_analyze_verify(unit_dir: Path) -> None:
    for dropin in ON_DEMAND.glob("*.d/*.conf"):
        target = unit_dir / dropin.parent.name / dropin.name
        target.parent.mkdir(exist_ok=True)
        target.write_text(dropin.read_text().replace(PREFIX, str(ROOT)))
    result = analyze(unit_dir, "verify", "--man=no", *ALL_UNITS)
    assert (result.returncode, result.stderr + result.stdout) == (0, "")


def test_on_demand_profile_activates_and_idles() -> None:
    """The gateway starts virtmesh@<driver>.service through systemctl; each service is
    the always-on one plus an idle timeout; the rest of each command line is unchanged."""
    gateway = exec_start(GATEWAY_UNIT, ON_DEMAND)
    activation = gateway[gateway.index("--activation") + 1]
    assert gateway[:gateway.index("--activation")] == exec_start(GATEWAY_UNIT)
    args = [arg.replace(PREFIX, str(ROOT)).replace(ETC, str(SYSTEMD)) for arg in gateway[1:]]
    assert gateway_config.load(args, environ={}).activation == activation
    for name in DRIVER_UNITS:
        driver = name.removeprefix("virtmesh@").removesuffix(".service")
        assert shlex.split(activation.replace("{service}", driver))[-2:] == ["start", name]
        assert exec_start(name, ON_DEMAND) == [*exec_start(name), "--idle-timeout", "600"]
    rule = (ON_DEMAND / "polkit-1" / "rules.d" / "50-virtmesh.rules").read_text()
    assert 'subject.user == "virtmesh"' in rule and 'action.lookup("verb") == "start"' in rule


def test_environment_file_names_only_real_settings() -> None:
    known = {service_config.ENV_PREFIX + name.upper() for cls in (
        service_config.Config, gateway_config.GatewayConfig)
        for name in service_config._settings(cls)} | {"VIRTMESH_CONFIG"}
    assignments = re.findall(r"^#?\s*([A-Z_]+)=", (SYSTEMD / "virtmesh.env").read_text(), re.M)
    assert assignments and set(assignments) <= known


# --- the units' commands really run ------------------------------------------------------

_PR_SET_NO_NEW_PRIVS, _PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 1


def sandbox(unit: Unit) -> Callable[[], None]:
    """What of the unit's [Service] a plain process can apply to itself: UMask=,
    NoNewPrivileges=, and MemoryDenyWriteExecute= (as the kernel's PR_SET_MDWE,
    where the kernel has it, 6.3 and later)."""
    umask = int(setting(unit, "Service", "UMask"), 8)
    no_new_privs = unit["Service"].get("NoNewPrivileges") == ["yes"]
    mdwe = unit["Service"].get("MemoryDenyWriteExecute") == ["yes"]

    def apply() -> None:
        os.umask(umask)
        libc = ctypes.CDLL(None, use_errno=True)
        if no_new_privs and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        if mdwe:
            libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)
    return apply


class UnitProcess:
    """A unit's ExecStart with /opt/virtmesh, /var/lib, /run and /etc mapped to ``paths``."""

    def __init__(self, name: str, paths: dict[str, str], log: Path) -> None:
        self.name, self.unit, self.log = name, load_unit(name), log

        def mapped(text: str) -> str:
            for real, temporary in paths.items():
                text = text.replace(real, temporary)
            return text

        self.argv = [mapped(arg) for arg in exec_start(name)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTMESH_")}
        env_file = Path(mapped(setting(self.unit, "Service", "EnvironmentFile").lstrip("-")))
        for line in env_file.read_text().splitlines() if env_file.exists() else []:
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
        with open(log, "ab") as output:
            self.popen = subprocess.Popen(self.argv, stdout=output, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd="/",
                                          start_new_session=True,
                                          preexec_fn=sandbox(self.unit))

    def stop(self) -> int:
        """SIGTERM, as systemd sends it; SIGKILL after the unit's TimeoutStopSec."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(seconds(setting(self.unit, "Service", "TimeoutStopSec")))
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode

    def wait_serving(self, target: str, timeout: float,
                     credentials: grpc.ChannelCredentials | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                wait_serving(target, "", 2, credentials)
                return
            except RuntimeError:
                assert self.popen.poll() is None, f"{self.name} exited:\n{self.log.read_text()}"
                assert time.monotonic() < deadline, f"{self.name} not serving:\n" + \
                    self.log.read_text()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Temporary stand-ins for the host's directories, set up as systemd and
    install.sh would: state, runtime and logs directories 0750, /etc/virtmesh with
    the shipped config (the gateway on a free port), a development PKI, and an
    identities file admitting its admin certificate and a readonly token (the
    token in <tmp_path>/ci.token)."""
    paths = {PREFIX: str(ROOT), STATE: str(tmp_path / "state"),
             RUN: str(tmp_path / "run"), ETC: str(tmp_path / "etc"), LOGS: str(tmp_path / "logs")}
    for directory in (paths[STATE], paths[RUN], paths[LOGS]):
        Path(directory).mkdir(mode=0o750)
    etc = Path(paths[ETC])
    etc.mkdir()
    ensure_dev_pki(etc / "pki")
    token = new_token()
    (tmp_path / "ci.token").write_text(token + "\n")
    identities = Path(IDENTITIES.replace(ETC, paths[ETC]))
    identities.parent.mkdir(mode=0o700)
    identities.write_text(f'tls_allowed_dn_list = ["{DEV_ADMIN_DN}"]\n\n[tls_dn_groups]\n'
                          f'"{DEV_ADMIN_DN}" = ["admin"]\n'
                          + token_entry("ci", ["readonly"], token))
    identities.chmod(0o600)
    config = (SYSTEMD / "virtmesh.toml").read_text().replace(ETC, str(etc))
    config, listens = re.subn(r'^listen = ".*"$', f'listen = "127.0.0.1:{free_port()}"',
                              config, flags=re.M)
    config, token_listens = re.subn(r'^token_listen = ".*"$',
                                    f'token_listen = "127.0.0.1:{free_port()}"', config,
                                    flags=re.M)
    config, metrics = re.subn(r'^metrics_listen = ".*"$', 'metrics_listen = "127.0.0.1:0"',
                              config, flags=re.M)
    assert (listens, token_listens, metrics) == (1, 1, len(SERVICE_UNITS)), \
        "the shipped virtmesh.toml changed shape"
    (etc / "virtmesh.toml").write_text(config)
    shutil.copy(SYSTEMD / "virtmesh.env", etc)
    yield paths


@pytest.mark.qemu
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("host_libvirtd")
def test_units_run_and_answer_health(host: dict[str, str], tmp_path: Path) -> None:
    """Every driver service on its real default URI (compute: embedded QEMU; secret:
    embedded; the others: this host's libvirt daemon) and the gateway over TLS, each
    started from its unit's ExecStart with its sandbox's UMask/NoNewPrivileges/
    MemoryDenyWriteExecute; then every service's health and a call through the
    gateway; then stop."""
    etc, run = Path(host[ETC]), Path(host[RUN])
    settings = gateway_config.load(["--config", str(etc / "virtmesh.toml")], environ={})
    listen, token_listen = settings.listen, settings.token_address
    assert token_listen is not None
    credentials = client_credentials(etc / "pki")
    drivers = {name: UnitProcess(name, host, tmp_path / f"{driver_of(name)}.log")
               for name in DRIVER_UNITS}
    gateway = None
    try:
        for name, process in drivers.items():
            process.wait_serving(f"unix:{run / f'{driver_of(name)}.sock'}", 120)
            socket_mode = stat.S_IMODE((run / f"{driver_of(name)}.sock").stat().st_mode)
            assert socket_mode == 0o660  # group virtmesh (the gateway) may connect
        assert "uri=qemu:///embed?root=" + host[STATE] + "/qemu" in \
            drivers["virtmesh@compute.service"].log.read_text()
        gateway = UnitProcess(GATEWAY_UNIT, host, tmp_path / "gateway.log")
        gateway.wait_serving(listen, 30, credentials)
        with grpc.secure_channel(listen, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in DRIVER_UNITS:
                health = stub.Check(health_pb2.HealthCheckRequest(
                    service=spec_of(driver_of(name)).descriptor.full_name), timeout=10)
                assert health.status == health_pb2.HealthCheckResponse.SERVING, name
            compute = pb_grpc.ComputeServiceStub(channel)
            compute.ListDomains(pb.ListDomainsRequest(), timeout=30)
            # The token exists only in the identities file of virtmesh.toml (the development
            # CA's fallback admits the admin certificate alone); readonly may not start.
            token = (tmp_path / "ci.token").read_text().strip()
            bearer: tuple[tuple[str, str | bytes], ...] = (("authorization", f"Bearer {token}"),)
            compute.GetVersion(pb.GetVersionRequest(), timeout=30, metadata=bearer)
            with pytest.raises(grpc.RpcError) as denied:
                compute.StartDomain(pb.StartDomainRequest(name="not-mine"), timeout=30,
                                    metadata=bearer)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The token alone, with the CA only, on virtmesh.toml's token-only port.
        with grpc.secure_channel(token_listen, grpc.ssl_channel_credentials(
                (etc / "pki" / "ca.crt").read_bytes())) as channel:
            pb_grpc.ComputeServiceStub(channel).GetVersion(pb.GetVersionRequest(), timeout=30,
                                                           metadata=bearer)
        # ... and the audit log in the gateway's LogsDirectory= says so.
        audit = Path(host[LOGS]) / "audit.jsonl"
        deadline = time.monotonic() + 10
        while not (audit.exists() and "StartDomain" in audit.read_text()):
            assert time.monotonic() < deadline, gateway.log.read_text()
            time.sleep(0.2)
        assert stat.S_IMODE(audit.stat().st_mode) == 0o600
        assert any('"identity":"ci"' in line and '"code":"PERMISSION_DENIED"' in line
                   for line in audit.read_text().splitlines())
    finally:
        codes = {"gateway": gateway.stop() if gateway else 0,
                 **{name: process.stop() for name, process in drivers.items()}}
    logs = "\n".join(process.log.read_text()[-2000:] for process in drivers.values())
    assert codes == dict.fromkeys(["gateway", *DRIVER_UNITS], 0), logs
    assert not any((run / f"{driver_of(name)}.sock").exists() for name in DRIVER_UNITS)


# --- install.sh ---------------------------------------------------------------------------

def test_install_script_copies_the_files(tmp_path: Path, unit_dir: Path) -> None:
    dest = tmp_path / "root"
    env = {**os.environ, "DESTDIR": str(dest)}
    script = str(SYSTEMD / "install.sh")
    subprocess.run([script], env=env, check=True, capture_output=True, timeout=60)
    opt = dest / PREFIX.lstrip("/")
    for path in ("pyproject.toml", "requirements.lock", "services/__main__.py",
                 "gateway/__main__.py", "protos/gen/python/virtmesh/compute/v1",
                 "client/virtmesh_client/cli.py", "guest/example.py"):
        assert (opt / path).exists(), path
    assert not list(opt.rglob("__pycache__")) and not (opt / ".venv").exists()
    installed = dest / "etc" / "systemd" / "system"
    for source in UNITS.rglob("*"):
        if source.is_file():
            target = installed / source.relative_to(UNITS)
            assert target.read_text() == source.read_text(), target
    assert (dest / "etc/sysusers.d/virtmesh.conf").exists()
    # The CLI is on PATH: /usr/local/bin/virtmesh is the venv's.
    cli = dest / "usr" / "local" / "bin" / "virtmesh"
    assert cli.is_symlink() and os.readlink(cli) == f"{PREFIX}/.venv/bin/virtmesh"
    # The operator's config survives a reinstall.
    config = dest / "etc" / "virtmesh" / "virtmesh.toml"
    assert config.read_text() == (SYSTEMD / "virtmesh.toml").read_text()
    config.write_text("# mine\n")
    subprocess.run([script], env=env, check=True, capture_output=True, timeout=60)
    assert config.read_text() == "# mine\n"
    assert (dest / "etc" / "virtmesh" / "virtmesh.env").exists()
    # The gateway's identities file, where virtmesh.toml names it: private, admitting
    # nobody as installed, and never overwritten.
    identities = dest / IDENTITIES.lstrip("/")
    assert stat.S_IMODE(identities.stat().st_mode) == 0o600
    assert stat.S_IMODE(identities.parent.stat().st_mode) == 0o700
    with open(identities, "rb") as file:
        assert parse_identities(tomllib.load(file)) == parse_identities({})
    identities.write_text("# mine\n")
    subprocess.run([script], env=env, check=True, capture_output=True, timeout=60)
    assert identities.read_text() == "# mine\n"
    # The on-demand profile adds its drop-ins and polkit rule; always-on takes them away.
    added = [installed / path.relative_to(ON_DEMAND) for path in ON_DEMAND.glob("*.d/*.conf")]
    rule = dest / "etc" / "polkit-1" / "rules.d" / "50-virtmesh.rules"
    assert added and not any(path.exists() for path in [*added, rule])
    subprocess.run([script, "--profile", "on-demand"], env=env, check=True,
                   capture_output=True, timeout=60)
    assert all(path.exists() for path in [*added, rule])
    subprocess.run([script, "--profile=always-on"], env=env, check=True, capture_output=True,
                   timeout=60)
    assert not any(path.exists() for path in [*added, rule])
    assert (installed / "virtmesh@compute.service.d" / "10-compute.conf").exists()


# --- the container image -----------------------------------------------------------------

def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in CONTAINERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in containerfile():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def apt_packages(stage: list[tuple[str, str]]) -> set[str]:
    packages: set[str] = set()
    for kind, args in stage:
        if kind == "RUN" and "apt-get install" in args:
            after = args.split("apt-get install", 1)[1].split("&&")[0].split()
            packages |= {word for word in after if not word.startswith("-")}
    return packages


def install_deps_packages() -> set[str]:
    text = (ROOT / "tools" / "install-deps.sh").read_text()
    match = re.search(r"^packages=\((.*?)^\)", text, re.M | re.S)
    assert match
    return set(match[1].split())


def test_base_image_is_a_pinned_debian_12() -> None:
    args = dict(line.split("=", 1) for kind, line in containerfile() if kind == "ARG")
    assert re.fullmatch(r"docker\.io/library/debian:12\.\d+(-slim)?(@sha256:[0-9a-f]{64})?",
                        args["DEBIAN_IMAGE"]), args["DEBIAN_IMAGE"]
    froms = [args.split()[0] for kind, args in containerfile() if kind == "FROM"]
    assert froms and set(froms) == {"${DEBIAN_IMAGE}"}


def test_copy_sources_exist() -> None:
    copies = [args.split() for kind, args in containerfile() if kind == "COPY"]
    for words_ in copies:
        if any(word.startswith("--from=") for word in words_):
            continue
        for source in words_[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # Every package directory of pyproject is copied (setuptools finds packages there).
    copied = {source.rstrip("/") for words_ in copies for source in words_[:-1]}
    with open(ROOT / "pyproject.toml", "rb") as file:
        wheres = tomllib.load(file)["tool"]["setuptools"]["packages"]["find"]["where"]
    top = {where.split("/")[0] for where in wheres if where != "."}
    assert top | {"services", "gateway", "guest", "pyproject.toml", "requirements.lock"} <= copied


def test_packages_are_install_deps_minus_build_tools() -> None:
    builder, runtime = stages()
    known = install_deps_packages()
    assert apt_packages(builder) <= known and apt_packages(runtime) <= known
    assert {"gcc", "libvirt-dev", "python3-dev", "pkg-config"} <= apt_packages(builder)
    assert not {p for p in apt_packages(runtime) if p in ("gcc", "pkg-config")
                or p.endswith("-dev")}, "compilers or headers in the runtime image"
    assert {"python3", "libvirt0", "libvirt-daemon-driver-qemu",
            "qemu-system-x86"} <= apt_packages(runtime)


def test_runtime_stage_venv_user_and_no_command() -> None:
    builder, runtime = stages()
    build = " ".join(args for kind, args in builder if kind == "RUN")
    assert f"python3 -m venv {PREFIX}/.venv" in build
    assert "-c requirements.lock" in build  # pinned versions
    assert ("COPY", f"--from=builder {PREFIX} {PREFIX}") in runtime
    env = " ".join(args for kind, args in runtime if kind == "ENV")
    assert f"PATH={PREFIX}/.venv/bin:" in env
    users = [args for kind, args in runtime if kind == "USER"]
    assert users == ["virtmesh"]
    run = " ".join(args for kind, args in runtime if kind == "RUN")
    assert "useradd --system --gid libvirt-qemu" in run and "useradd --uid 10001" in run
    assert not [kind for kind, _ in containerfile() if kind in ("CMD", "ENTRYPOINT")]


def test_runtime_dependencies_are_all_pinned() -> None:
    """The image installs with requirements.lock as constraints: that pins every
    version only if the lock names each runtime dependency, transitively."""
    locked = {re.split(r"[=<>]", line)[0].lower().replace("_", "-")
              for line in (ROOT / "requirements.lock").read_text().splitlines()
              if line and not line.startswith("#")}
    seen: set[str] = set()
    todo = ["virtmesh"]
    while todo:
        name = todo.pop()
        for requirement in importlib.metadata.requires(name) or []:
            if "extra ==" in requirement:
                continue
            dependency = re.split(r"[\s<>=!~;\[(]", requirement)[0].lower().replace("_", "-")
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    assert seen and seen <= locked, f"not in requirements.lock: {sorted(seen - locked)}"


def test_entry_points_used_by_units_and_manifests_exist_in_the_image() -> None:
    """Every /opt/virtmesh/.venv/bin/PROGRAM named by a unit or a Kubernetes manifest
    is a console script of pyproject (which pip install creates) or python, and every
    other /opt/virtmesh/PATH they name is copied into the image."""
    scripts = console_scripts()
    files = [p for p in [*UNITS.rglob("*"), *(ROOT / "deploy" / "k8s").rglob("*")]
             if p.is_file()]
    used = {(path, program) for path in files for program in re.findall(
        re.escape(PREFIX) + r"/\.venv/bin/([\w.%-]+)", path.read_text())}
    assert used
    for path, program in used:
        assert program in scripts or program in ("python", "python3"), (path, program)
    # Other files under /opt/virtmesh (e.g. the probes' healthcheck.py) are COPYed in.
    builder = stages()[0]
    assert ("WORKDIR", PREFIX) in builder
    copied = [Path(source) for kind, args in builder if kind == "COPY"
              for source in args.split()[:-1] if not source.startswith("--")]
    for path in files:  # (units name docs, which install.sh copies with deploy/)
        for reference in re.findall(re.escape(PREFIX) + r"/(?!\.venv\b)([\w./-]+)",
                                    path.read_text()):
            assert (ROOT / reference).exists(), f"{path}: {reference} is not in the repository"
            assert path.is_relative_to(UNITS) or any(
                Path(reference).is_relative_to(source) for source in copied), (
                f"{path}: {PREFIX}/{reference} is not in the image")
    for target in scripts.values():  # each script's function exists
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_make_image_refuses_without_a_builder(tmp_path: Path) -> None:
    """With docker, podman and buildah all failing `info`, make image fails and says so."""
    for tool in ("docker", "podman", "buildah"):
        stub = tmp_path / tool
        stub.write_text("#!/bin/sh\nexit 1\n")
        stub.chmod(0o755)
    make = shutil.which("make")
    assert make
    result = subprocess.run([make, "-s", "image"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"},
                            timeout=60, check=False)
    assert result.returncode != 0
    assert "no container builder available" in result.stderr


STUB_CLI = """#!/bin/sh
# a virtmesh CLI with (or, when $NO_CONTEXTS is set, without) contexts
[ -n "$NO_CONTEXTS" ] && exit 2
case "$1 $2 $3" in
  "config set-context --help") exit 0 ;;
  "config get-contexts "*) cat "$0.contexts" 2>/dev/null; exit 0 ;;
  "config set-context "*) echo "$@" >> "$0.calls"; echo "* $3" > "$0.contexts" ;;
  *) exit 2 ;;
esac
"""


@pytest.mark.parametrize("dev_pki", [True, False])
def test_install_makes_a_local_context(tmp_path: Path, dev_pki: bool) -> None:
    """install.sh's last step: `virtmesh config set-context local` for the gateway that
    virtmesh.toml listens on (a wildcard is dialled on 127.0.0.1), its CA and, from
    --dev-pki, the admin certificate; made current, never overwritten; nothing (and
    a word why) with a CLI that has no contexts."""
    conf = tmp_path / "etc"
    (conf / "pki").mkdir(parents=True)
    shutil.copy(SYSTEMD / "virtmesh.toml", conf)
    for name in ("ca.crt", *(("client.crt", "client.key") if dev_pki else ())):
        (conf / "pki" / name).write_text("")
    cli = tmp_path / "virtmesh"
    cli.write_text(STUB_CLI)
    cli.chmod(0o755)
    script = str(SYSTEMD / "local-context.sh")
    run = subprocess.run([script, str(cli), str(conf)], capture_output=True, text=True,
                         timeout=30, check=True)
    listen = gateway_config.load(["--config", str(conf / "virtmesh.toml")], environ={}).listen
    port = listen.rsplit(":", 1)[1]
    expected = f"config set-context local --gateway 127.0.0.1:{port} --ca {conf}/pki/ca.crt"
    if dev_pki:
        expected += f" --cert {conf}/pki/client.crt --key {conf}/pki/client.key"
    calls = Path(f"{cli}.calls")
    assert calls.read_text().splitlines() == [expected + " --use"], run.stdout
    assert ("add your credentials" in run.stdout) != dev_pki
    # run again (a reinstall): the context the user may have changed is kept
    again = subprocess.run([script, str(cli), str(conf)], capture_output=True, text=True,
                           timeout=30, check=True)
    assert len(calls.read_text().splitlines()) == 1 and "kept" in again.stdout
    calls.unlink()
    older = subprocess.run([script, str(cli), str(conf)], capture_output=True, text=True,
                           timeout=30, check=True, env={**os.environ, "NO_CONTEXTS": "1"})
    assert not calls.exists() and "no context made" in older.stdout
