"""The Kubernetes manifests (deploy/k8s) against the schemas, the policy and the code.

1. Every kustomization renders with ``kubectl kustomize`` and validates strictly
   with kubernetes-validate; CRD kinds (cert-manager, Prometheus operator) have
   no schema there and are skipped by name, with the reason.
2. tools/check-manifests.py passes on every kustomization and fails on a
   privileged container.
3. A manifest-driven local run of the embedded profile's DaemonSet: each
   container's command, args and env run here as its own process, with every
   volume mapped to a temporary directory (Secrets filled from a development
   PKI, the ConfigMap from the rendered one), the image's /opt/virtmesh mapped to
   this repository and its venv to ours, in a network namespace of their own
   (the pod's), under the container's uid/gid/fsGroup with its capabilities
   dropped and no_new_privs. Then every exec probe must pass, every metrics port
   must serve, and calls through the gateway over mTLS must work: with the
   certificate and with a bearer token that only the identities Secret (made
   here, as an operator would) admits, a call the token's role may not make is
   denied, and the audit log on the path of the gateway's flag records it.
   Nothing here knows a flag, path or port: they all come from the manifest.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway import config as gateway_config
from gateway import policy as gateway_policy
from gateway.authn import DEV_ADMIN_DN, libvirt_dn, new_token, parse_identities, token_entry
from gateway.pki import ensure_dev_pki
from services.common import registry
from services.common.daemon import ServiceSpec
from services.supervisor import METRICS_BASE_PORT, SERVICES

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")
KUBERNETES_VERSIONS = ("1.30", "1.32")
#: kinds defined by CRDs: kubernetes-validate has only the built-in schemas
CRD_KINDS = {
    "cert-manager.io/v1": "cert-manager CRD; not in the Kubernetes schemas",
    "monitoring.coreos.com/v1": "Prometheus operator CRD; not in the Kubernetes schemas",
}
#: what the image's paths are here
IMAGE_ROOT, IMAGE_VENV = "/opt/virtmesh", "/opt/virtmesh/.venv"
#: the pods' state directory (--state-dir)
STATE_DIR = "/var/lib/virtmesh"
PROFILES = ("embedded", "host")
#: the TLS Secrets the DaemonSet mounts (overlays/cert-manager makes them), filled
#: here from the development PKI (key -> PKI file)
TLS_SECRETS = {
    "virtmesh-gateway-tls": {"tls.crt": "server.crt", "tls.key": "server.key",
                             "ca.crt": "ca.crt"},
    "virtmesh-probe-tls": {"tls.crt": "client.crt", "tls.key": "client.key",
                           "ca.crt": "ca.crt"},
}
#: the gateway's identities file: a Secret the operator makes (deploy/k8s/README.md)
IDENTITIES_SECRET, IDENTITIES_KEY = "virtmesh-gateway-identities", "identities.toml"
#: every Secret the DaemonSet may mount
SECRETS = {*TLS_SECRETS, IDENTITIES_SECRET}
#: the example identities file of deploy/k8s/README.md
EXAMPLE_IDENTITIES = K8S / "identities.example.toml"

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


def kustomizations() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def render(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def load_policy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_manifests",
                                                  ROOT / "tools" / "check-manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KUSTOMIZATIONS = [pytest.param(path, id=str(path.relative_to(K8S))) for path in kustomizations()]


def test_every_profile_is_there() -> None:
    names = {str(path.relative_to(K8S)) for path in kustomizations()}
    assert {"base", "overlays/embedded", "overlays/host", "overlays/cert-manager",
            "monitoring"} <= names


# --- 1. schemas -------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(directory: Path, version: str) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    objects = render(directory)
    assert objects, f"{directory} renders nothing"
    validated = skipped = 0
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] in CRD_KINDS:
            skipped += 1  # reason: CRD_KINDS[apiVersion]
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except ValidationError as error:
            pytest.fail(f"{directory.name}: {name} is invalid for Kubernetes {version}: "
                        f"{error.message} at {'.'.join(map(str, error.absolute_path))}")
        validated += 1
    assert validated + skipped == len(objects)


def spec_of(service: str) -> ServiceSpec:
    return registry.spec(service)


def embeddable(service: str) -> bool:
    """libvirt can run the service's driver in-process (by default, or on request as
    secret: see services/secret/__init__.py)."""
    return spec_of(service).can_embed


def profile_services(profile: str) -> list[str]:
    """The driver services a profile's pod runs: the embedded profile needs no libvirt
    on the node, so only the drivers libvirt can embed; the host profile all of them."""
    return [name for name in SERVICES if profile == "host" or embeddable(name)]


def profile_uri(service: str, profile: str) -> str:
    """embedded: the driver in-process (no libvirt on the node); host: the node's daemon
    (``<scheme>:///system``)."""
    spec = spec_of(service)
    if profile == "embedded" and spec.can_embed:
        return spec.embedded_uri.replace("{state_dir}", STATE_DIR)
    return f"{spec.driver}:///system"


def metrics_port(name: str) -> int:
    """As ``make run`` numbers them: the gateway on the base port, then SERVICES in order."""
    return METRICS_BASE_PORT + ["gateway", *SERVICES].index(name)


def pod_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    template: dict[str, Any] = one(objects, "DaemonSet")["spec"]["template"]
    return template


def make_image() -> str:
    """The image `make image` builds by default."""
    result = subprocess.run(["make", "-s", "-f", "Makefile", "-f", "-", "print-image"],
                            input="print-image:\n\t@echo $(IMAGE)\n", cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def images(pod: dict[str, Any]) -> set[str]:
    spec = pod["spec"]
    return {c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]}


@needs_kubectl
def test_one_node_is_reachable_by_name() -> None:
    """Per-node addressing (deploy/FLEET.md): a headless Service over the gateway pods,
    the node's name passed to the gateway, and the cert-manager server certificate
    naming that Service, which a client dialling a pod address gives as its TLS
    server name."""
    for profile in PROFILES:
        objects = render(K8S / "overlays" / profile)
        pod = pod_of(objects)
        services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
        nodes = services["virtmesh-gateway-nodes"]["spec"]
        assert nodes["clusterIP"] == "None"
        assert nodes["selector"].items() <= pod["metadata"]["labels"].items()
        gateway = next(c for c in pod["spec"]["containers"] if c["name"] == "gateway")
        assert [p["targetPort"] for p in nodes["ports"]] == [
            p["name"] for p in gateway["ports"] if p["containerPort"] in (16514, 16515)]
        assert {"name": "VIRTMESH_NODE_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in gateway["env"]
    certificates = {o["metadata"]["name"]: o for o in render(K8S / "overlays" / "cert-manager")
                    if o["kind"] == "Certificate"}
    names = certificates["virtmesh-gateway"]["spec"]["dnsNames"]
    for service in ("virtmesh-gateway", "virtmesh-gateway-nodes"):
        assert {service, f"{service}.virtmesh.svc",
                f"{service}.virtmesh.svc.cluster.local"} <= set(names)


@needs_kubectl
def test_one_image_name_and_tag_everywhere(tmp_path: Path) -> None:
    """`make image`, every container of both profiles and the README name one image, and
    kustomize `images:` moves all of them to a registry's."""
    image = make_image()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert image == f"virtmesh:{version}"
    for profile in PROFILES:
        assert images(pod_of(render(K8S / "overlays" / profile))) == {image}, profile
    assert f"`{image}`" in (K8S / "README.md").read_text()
    overlay = tmp_path / "registry"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / "host", overlay)],
        "images": [{"name": image.split(":")[0], "newName": "registry.example.org/virtmesh",
                    "newTag": "9.9.9"}]}))
    assert images(pod_of(render(overlay))) == {"registry.example.org/virtmesh:9.9.9"}


@needs_kubectl
@pytest.mark.parametrize("profile", PROFILES)
def test_profile_runs_its_services_wired_like_the_code(profile: str) -> None:
    """One container per service of the profile (services/supervisor.py SERVICES), each
    running `virtmesh-service NAME` on its socket and metrics port, with probes on that
    socket (readiness by the service's health name), the profile's libvirt URI, and
    for an embedded driver its root on a hostPath so that its state survives the pod."""
    pod = pod_of(render(K8S / "overlays" / profile))
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    services = profile_services(profile)
    assert set(containers) == {"gateway", *services}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for name in services:
        container, socket = containers[name], f"unix:{STATE_DIR}/run/{name}.sock"
        assert container["command"] == [f"{IMAGE_VENV}/bin/virtmesh-service", name]
        args = container["args"]
        assert f"--socket={STATE_DIR}/run/{name}.sock" in args
        assert f"--metrics-listen=0.0.0.0:{metrics_port(name)}" in args
        assert container["ports"] == [{"name": f"prom-{name}", "containerPort": metrics_port(name),
                                       "protocol": "TCP"}]
        probes = {kind: container[kind]["exec"]["command"]
                  for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        for kind, command in probes.items():
            assert command[:3] == [f"{IMAGE_VENV}/bin/python", f"{IMAGE_ROOT}/tools/healthcheck.py",
                                   socket], (name, kind)
        # Liveness: the process answers; NOT_SERVING (libvirt away) must not restart it.
        assert probes["livenessProbe"][3:] == ["--any-status"]
        assert probes["readinessProbe"][3:] == [
            f"--service={spec_of(name).descriptor.full_name}"]
        uri = profile_uri(name, profile)
        assert {"name": "VIRTMESH_URI", "value": uri} in container["env"], name
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        if profile == "host":
            assert volumes[mounts["/run/libvirt"]]["hostPath"]["path"] == "/run/libvirt"
            assert not (container["securityContext"]["capabilities"].get("add")), name
        elif "root=" in uri:
            root = uri.split("root=", 1)[1]
            assert "hostPath" in volumes[mounts[root]], f"{name}: {root} is not a hostPath"


@needs_kubectl
def test_profiles_wire_what_they_promise() -> None:
    """Cross-references no schema checks: names, ports and mounts that must agree."""
    embedded, host = render(K8S / "overlays/embedded"), render(K8S / "overlays/host")
    for profile, objects in (("embedded", embedded), ("host", host)):
        pod = pod_of(objects)
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        ports = {p["name"]: p["containerPort"] for c in containers.values() for p in c["ports"]}
        assert str(ports["prom-gateway"]) == pod["metadata"]["annotations"]["prometheus.io/port"]
        config_maps = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "ConfigMap"}
        for volume in pod["spec"]["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "secret" in volume:
                assert volume["secret"]["secretName"] in SECRETS
        every = [*containers.values(), *(pod["spec"].get("initContainers") or [])]
        mounted = {m["name"] for c in every for m in c["volumeMounts"]}
        assert mounted == {v["name"] for v in pod["spec"]["volumes"]}, "a volume is left over"
        for service in (o for o in objects if o["kind"] == "Service"):  # all, and one node's
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
        policy = one(objects, "NetworkPolicy")
        allowed = [(p["port"], p.get("endPort", p["port"]))
                   for rule in policy["spec"]["ingress"] for p in rule["ports"]]
        assert all(any(low <= port <= high for low, high in allowed) for port in ports.values())
        assert set(ports.values()) == {16514, 16515, *(metrics_port(name) for name in (
            "gateway", *profile_services(profile)))}
    # The PodMonitor scrapes every metrics port of either profile.
    monitor = one(render(K8S / "monitoring"), "PodMonitor")
    endpoints = [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
    assert sorted(endpoints) == sorted(f"prom-{name}" for name in ("gateway", *SERVICES))
    certificates = render(K8S / "overlays/cert-manager")
    secrets = {c["spec"]["secretName"] for c in certificates if c["kind"] == "Certificate"}
    assert set(TLS_SECRETS) <= secrets
    host_compute = next(c for c in pod_of(host)["spec"]["containers"] if c["name"] == "compute")
    assert not any(m["mountPath"] == "/dev/kvm" for m in host_compute["volumeMounts"])
    assert host_compute["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": []}


@needs_kubectl
@pytest.mark.parametrize("profile", PROFILES)
def test_gateway_serves_mutual_tls_and_token_only_tls(profile: str) -> None:
    """Both of the gateway's TLS ports: its flags, its container ports, the Service."""
    objects = render(K8S / "overlays" / profile)
    gateway = next(c for c in pod_of(objects)["spec"]["containers"] if c["name"] == "gateway")
    config = gateway_config.load([arg for arg in gateway["args"]
                                  if not arg.startswith("--config=")], environ={})
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert config.mtls_address == f"0.0.0.0:{ports['grpc-tls']}"
    assert config.token_address == f"0.0.0.0:{ports['grpc-token']}"
    services = [o for o in objects if o["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"virtmesh-gateway",
                                                         "virtmesh-gateway-nodes"}
    for service in services:  # the Service and the headless one of each node
        assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} >= {
            (ports["grpc-tls"], "grpc-tls"), (ports["grpc-token"], "grpc-token")}, service


def mounted_at(pod: dict[str, Any], container: dict[str, Any],
               path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(volume, mount, path inside the volume) of a file the container reads or writes."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = [m for m in container["volumeMounts"]
              if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{container['name']}: {path} is on no volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return volumes[mount["name"]], mount, path[len(mount["mountPath"].rstrip("/")) + 1:]


@needs_kubectl
@pytest.mark.parametrize("profile", PROFILES)
def test_gateway_identities_policy_and_audit_log_are_wired(profile: str) -> None:
    """The gateway's flags name its identities file in the identities Secret (0440,
    whole directory: the kubelet updates it and the gateway reloads it), a policy
    file that always exists (an explicit one that does not stops the gateway) and
    loads, and an audit log on a writable volume (the root filesystem is read-only)."""
    objects = render(K8S / "overlays" / profile)
    pod = pod_of(objects)
    gateway = next(c for c in pod["spec"]["containers"] if c["name"] == "gateway")
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    # The flags exist and mean what they say (--config is the ConfigMap's, not here).
    config = gateway_config.load([arg for arg in gateway["args"]
                                  if not arg.startswith("--config=")], environ={})

    volume, mount, inside = mounted_at(pod, gateway, str(config.identities_path))
    secret = volume.get("secret") or {}
    assert secret.get("secretName") == IDENTITIES_SECRET, f"{config.identities_path}: {volume}"
    assert "subPath" not in mount
    assert mount.get("readOnly") is True and secret["defaultMode"] == 0o440
    assert {"key": IDENTITIES_KEY, "path": inside} in secret["items"]
    assert not secret.get("optional"), "without the Secret the pod must not start"

    assert config.policy_file, "the policy file is explicit"
    assert config.policy_path is not None
    volume, mount, inside = mounted_at(pod, gateway, str(config.policy_path))
    assert "subPath" not in mount and not volume["configMap"].get("optional")
    [config_map] = [obj for obj in objects if obj["kind"] == "ConfigMap"
                    and obj["metadata"]["name"] == volume["configMap"]["name"]]
    # No hash suffix: a change reaches the running gateway without a new pod.
    assert config_map["metadata"]["name"] == "virtmesh-gateway-policy"
    policy = gateway_policy.parse(tomllib.loads(config_map["data"][inside]))
    assert policy.grants == gateway_policy.BUILTIN_GRANTS

    volume, mount, _ = mounted_at(pod, gateway, str(config.audit_path))
    assert "emptyDir" in volume and not mount.get("readOnly")


def cert_manager_dn(certificate: dict[str, Any]) -> str:
    """The subject cert-manager gives a Certificate (Go's pkix.Name order: C, ST, L,
    street, postal code, O, OU, CN, serial number), in libvirt's DN form."""
    spec = certificate["spec"]
    subject = spec.get("subject") or {}
    attributes = [x509.NameAttribute(oid, value) for oid, field in (
        (NameOID.COUNTRY_NAME, "countries"), (NameOID.STATE_OR_PROVINCE_NAME, "provinces"),
        (NameOID.LOCALITY_NAME, "localities"), (NameOID.STREET_ADDRESS, "streetAddresses"),
        (NameOID.POSTAL_CODE, "postalCodes"), (NameOID.ORGANIZATION_NAME, "organizations"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "organizationalUnits"))
        for value in subject.get(field, [])]
    if spec.get("commonName"):
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"]))
    if subject.get("serialNumber"):
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, subject["serialNumber"]))
    return libvirt_dn(x509.Name(attributes))


def test_example_identities_admit_the_cert_manager_admin() -> None:
    """identities.example.toml (deploy/k8s/README.md) admits the administrator
    certificate of overlays/cert-manager as admin, and ships no token digest."""
    documents = yaml.safe_load_all((K8S / "overlays/cert-manager/certificates.yaml").read_text())
    certificates = {doc["metadata"]["name"]: doc for doc in documents
                    if doc and doc["kind"] == "Certificate"}
    admin = certificates["virtmesh-admin"]
    assert "client auth" in admin["spec"]["usages"]
    assert cert_manager_dn(admin) == "O=virtmesh,CN=admin" == DEV_ADMIN_DN
    with open(EXAMPLE_IDENTITIES, "rb") as file:
        identities = parse_identities(tomllib.load(file))
    assert identities.certificate_identity(cert_manager_dn(admin)) == {"admin"}
    assert not identities.tokens, "an example must not ship a token digest"
    # Health checks need no identity: the probe's certificate is not admitted.
    assert identities.certificate_identity(cert_manager_dn(certificates["virtmesh-probe"])) is None
    assert f"--from-file={IDENTITIES_KEY}" in (K8S / "README.md").read_text()


@needs_kubectl
def test_secret_root_is_handed_to_the_secret_user() -> None:
    """The embedded secret service runs non-root; the one init container gives it the
    hostPath that the kubelet creates root-owned, and the host profile drops both."""
    pod = pod_of(render(K8S / "overlays/embedded"))
    secret = next(c for c in pod["spec"]["containers"] if c["name"] == "secret")
    security = secret["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    [init] = pod["spec"]["initContainers"]
    root = next(m["mountPath"] for m in secret["volumeMounts"] if m["name"] == "secret-root")
    assert init["command"] == ["chown", f"{security['runAsUser']}:{security['runAsGroup']}", root]
    host = pod_of(render(K8S / "overlays/host"))
    assert not host["spec"].get("initContainers")


# --- 2. policy --------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_policy_passes(directory: Path) -> None:
    problems, _ = load_policy().check(render(directory))
    assert problems == []


@needs_kubectl
def test_policy_fails_on_bad_manifests(tmp_path: Path) -> None:
    policy = load_policy()
    objects = render(K8S / "overlays/embedded")
    daemonset = one(objects, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    gateway = next(c for c in spec["containers"] if c["name"] == "gateway")
    gateway["securityContext"]["privileged"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(objects))
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "check-manifests.py"),
                             str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert ("DaemonSet virtmesh/virtmesh container gateway: securityContext.privileged is true"
            in result.stderr)

    gateway["securityContext"]["privileged"] = False
    spec["hostNetwork"] = True
    gateway["volumeMounts"].append({"name": "kvm", "mountPath": "/dev/kvm"})
    del gateway["resources"]["limits"]
    gateway["securityContext"]["readOnlyRootFilesystem"] = False
    gateway["securityContext"]["runAsNonRoot"] = False
    gateway["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
    problems, _ = policy.check([daemonset])
    text = "\n".join(problems)
    for expected in ("spec.hostNetwork is true", "gateway: mounts host device /dev/kvm",
                     "gateway: resources.limits.cpu is not set",
                     "gateway: resources.limits.memory is not set",
                     "gateway: securityContext.readOnlyRootFilesystem must be true",
                     "gateway: securityContext.runAsNonRoot must be true",
                     "gateway: securityContext.capabilities.add ['NET_ADMIN'] is not allowed"):
        assert expected in text
    assert len(problems) == 7

    # Root is allowed to a driver service only with the host's libvirt socket mounted
    # (host profile), never to the gateway; every long-running container needs probes.
    spec["hostNetwork"] = False
    gateway.update(securityContext={**gateway["securityContext"], "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
                   volumeMounts=[m for m in gateway["volumeMounts"] if m["name"] != "kvm"],
                   resources={**gateway["resources"], "limits": {"cpu": "1", "memory": "1Gi"}})
    assert policy.check([daemonset])[0] == []
    secret = next(c for c in spec["containers"] if c["name"] == "secret")
    secret["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    assert policy.check([daemonset])[0] == [
        "DaemonSet virtmesh/virtmesh container secret: securityContext.runAsNonRoot must be true"]
    spec["volumes"].append({"name": "libvirt-run", "hostPath": {"path": "/run/libvirt/"}})
    for container in (secret, gateway):
        container["volumeMounts"].append({"name": "libvirt-run", "mountPath": "/run/libvirt"})
    del gateway["readinessProbe"]
    assert policy.check([daemonset])[0] == [
        "DaemonSet virtmesh/virtmesh container gateway: mounts the host's /run/libvirt; only "
        "['compute', 'iface', 'network', 'nodedev', 'nwfilter', 'secret', 'storage'] may",
        "DaemonSet virtmesh/virtmesh container gateway: readinessProbe is not set"]


# --- 3. the DaemonSet, run here ---------------------------------------------------------

def _mapper(prefixes: dict[str, str]) -> Any:
    """Replace path prefixes (longest first, in one pass) in a string."""
    ordered = sorted(prefixes, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, ordered)) + r")(?=/|$|[^\w.-])")

    def apply(value: str) -> str:
        mapped = pattern.sub(lambda match: prefixes[match.group(1)], value)
        if mapped == value and value.startswith("/"):
            raise AssertionError(f"{value}: neither on a volume nor in the image")
        return mapped
    return apply


def image_venv(directory: Path) -> Path:
    """A venv like the image's: on the system's Python, which every user may run, with
    this checkout's packages (our venv's site-packages) and console scripts. Our own
    venv's interpreter may sit where other users cannot reach it (a pyenv under
    /root), and a non-root container's service starts Python subprocesses."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path("/usr/bin") / version
    assert base.exists(), f"{base}: the image's interpreter (Debian's python3) is missing"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(directory)], check=True,
                   timeout=60)
    site_packages = directory / "lib" / version / "site-packages"
    ours = Path(sys.prefix) / "lib" / version / "site-packages"
    (site_packages / "checkout.pth").write_text(f"import site; site.addsitedir({str(ours)!r})\n")
    with open(ROOT / "pyproject.toml", "rb") as file:
        scripts = tomllib.load(file)["project"]["scripts"]
    for name, target in scripts.items():
        module, function = target.split(":")
        script = directory / "bin" / name
        script.write_text(f"#!{directory}/bin/python\nimport sys\nfrom {module} import "
                          f"{function}\nsys.exit({function}())\n")
        script.chmod(0o755)
    directory.chmod(0o755)
    return directory


class Pod:
    """The pod's volumes as temporary directories and its network namespace."""

    def __init__(self, objects: list[dict[str, Any]], base: Path,
                 secrets: dict[str, dict[str, bytes]], venv: Path) -> None:
        self.venv = venv
        self.template = one(objects, "DaemonSet")["spec"]["template"]
        self.spec = self.template["spec"]
        self.fs_group = (self.spec.get("securityContext") or {}).get("fsGroup")
        config_maps = {obj["metadata"]["name"]: obj["data"] for obj in objects
                       if obj["kind"] == "ConfigMap"}
        self.volumes: dict[str, Path] = {}
        for index, volume in enumerate(self.spec["volumes"]):
            self.volumes[volume["name"]] = self._volume(volume, base / str(index), config_maps,
                                                        secrets)
        self.netns: subprocess.Popen[bytes] | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _volume(self, volume: dict[str, Any], path: Path, config_maps: dict[str, dict[str, str]],
                secrets: dict[str, dict[str, bytes]]) -> Path:
        if "hostPath" in volume:
            # Devices cannot be faked, and a hostPath that must exist (type Directory,
            # e.g. the node's /run/libvirt) is the node's own: both are this host's.
            if volume["hostPath"].get("type") in ("CharDevice", "BlockDevice", "Socket",
                                                  "Directory"):
                return Path(volume["hostPath"]["path"])
            path.mkdir()  # DirectoryOrCreate: the pod's own state on the node
            return path
        path.mkdir()
        if "emptyDir" in volume:
            path.chmod(0o777)
            if self.fs_group is not None:  # as the kubelet does: group and setgid
                os.chown(path, -1, self.fs_group)
                path.chmod(0o777 | stat.S_ISGID)
            return path
        if "configMap" in volume:
            source = volume["configMap"]
            files = {k: v.encode() for k, v in config_maps[source["name"]].items()}
        elif "secret" in volume:
            source = volume["secret"]
            assert source["secretName"] in secrets, f"unknown Secret {source['secretName']}"
            files = secrets[source["secretName"]]
        else:
            raise AssertionError(f"volume {volume['name']}: kind not supported here")
        items = source.get("items") or [{"key": key, "path": key} for key in files]
        for item in items:
            target = path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[item["key"]])
            os.chown(target, 0, self.fs_group if self.fs_group is not None else 0)
            target.chmod(item.get("mode", source.get("defaultMode", 0o644)))
        path.chmod(0o755)
        return path

    def mapper(self, container: dict[str, Any]) -> Any:
        prefixes = {IMAGE_VENV: str(self.venv), IMAGE_ROOT: str(ROOT)}
        for mount in container.get("volumeMounts") or []:
            prefixes[mount["mountPath"].rstrip("/")] = str(
                self.volumes[mount["name"]] / mount.get("subPath", ""))
        return _mapper(prefixes)

    def start_netns(self) -> None:
        # `unshare --net` execs the holder in the new namespace: its pid names it.
        self.netns = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        path = f"/proc/{self.netns.pid}/ns/net"
        deadline = time.monotonic() + 10
        while os.readlink(path) == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "network namespace not created"
            time.sleep(0.05)
        subprocess.run(["nsenter", f"--net={path}", "ip", "link", "set", "lo", "up"], check=True)

    def enter(self, container: dict[str, Any]) -> list[str]:
        """argv prefix: the pod's network namespace, the container's user and privileges."""
        assert self.netns is not None
        pod_security = self.spec.get("securityContext") or {}
        security = {**pod_security, **(container.get("securityContext") or {})}
        uid, gid = security.get("runAsUser", 0), security.get("runAsGroup", 0)
        groups = [str(g) for g in [gid, self.fs_group, *pod_security.get(
            "supplementalGroups", [])] if g is not None]
        assert not (security.get("runAsNonRoot") and uid == 0), "runAsNonRoot with uid 0"
        argv = ["nsenter", f"--net=/proc/{self.netns.pid}/ns/net", "--",
                "setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={','.join(groups)}"]
        capabilities = security.get("capabilities") or {}
        if "ALL" in (capabilities.get("drop") or []):
            added = "".join(f",+{cap.lower()}" for cap in capabilities.get("add") or [])
            argv += [f"--bounding-set=-all{added}", "--inh-caps=-all"]
        else:
            assert not capabilities, "only 'drop: [ALL]' (plus add) is emulated here"
        if security.get("allowPrivilegeEscalation") is False:
            argv.append("--no-new-privs")
        return [*argv, "--"]

    def environment(self, container: dict[str, Any]) -> dict[str, str]:
        security = container.get("securityContext") or {}
        env = {"PATH": f"{self.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                       "/sbin:/bin",
               "HOME": "/root" if security.get("runAsUser", 0) == 0 else "/"}
        mapped = self.mapper(container)
        for variable in container.get("env") or []:
            if variable.get("valueFrom") == {"fieldRef": {"fieldPath": "spec.nodeName"}}:
                env[variable["name"]] = NODE_NAME  # what the kubelet puts there
                continue
            assert "value" in variable, f"{variable['name']}: only literal values are mapped"
            env[variable["name"]] = mapped(variable["value"])
        return env

    def start(self, container: dict[str, Any], logs: Path) -> None:
        assert container.get("command"), f"{container['name']}: no command"
        mapped = self.mapper(container)
        argv = [mapped(arg) for arg in [*container["command"], *container.get("args", [])]]
        with open(logs / f"{container['name']}.log", "wb") as log:
            self.processes[container["name"]] = subprocess.Popen(
                [*self.enter(container), *argv], env=self.environment(container),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/",
                start_new_session=True)

    def run(self, container: dict[str, Any], argv: list[str],
            timeout: float) -> subprocess.CompletedProcess[str]:
        """As an exec probe does: in the container, with its paths."""
        argv = [self.mapper(container)(arg) for arg in argv]
        return subprocess.run([*self.enter(container), *argv], env=self.environment(container),
                              capture_output=True, text=True, timeout=timeout, cwd="/")

    def client(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """A client on the pod network (as a Service or port-forward would reach it)."""
        assert self.netns is not None
        return subprocess.run(["nsenter", f"--net=/proc/{self.netns.pid}/ns/net", "--", *argv],
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.netns is not None:
            self.netns.kill()
            self.netns.wait()


#: the node the local run pretends the pod is scheduled on (spec.nodeName)
NODE_NAME = "kvm-node-1"

CLIENT = """
import json, sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from virtmesh.compute.v1 import compute_service_pb2 as pb, compute_service_pb2_grpc as rpc
from virtmesh.gateway.v1 import gateway_service_pb2 as gpb, gateway_service_pb2_grpc as grpc_gw
target, ca, cert, key, services, token = sys.argv[1:]
read = lambda path: open(path, "rb").read()
creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))

def code(call, request, token):
    try:
        call(request, timeout=30, metadata=[("authorization", f"Bearer {token}")])
    except grpc.RpcError as error:
        return error.code().name
    return "OK"

with grpc.secure_channel(target, creds) as channel:
    compute = rpc.ComputeServiceStub(channel)
    version = compute.GetVersion(pb.GetVersionRequest(), timeout=30)
    domains = compute.ListDomains(pb.ListDomainsRequest(), timeout=30)
    node = grpc_gw.GatewayServiceStub(channel).ListServices(gpb.ListServicesRequest(),
                                                            timeout=30).node_name
    health = health_pb2_grpc.HealthStub(channel)
    statuses = {name: health_pb2.HealthCheckResponse.ServingStatus.Name(health.Check(
        health_pb2.HealthCheckRequest(service=name), timeout=30).status)
        for name in json.loads(services)}
    # A token names the caller even on a certificate connection.
    tokens = {"known": code(compute.GetVersion, pb.GetVersionRequest(), token),
              "unknown": code(compute.GetVersion, pb.GetVersionRequest(), token + "x"),
              "start": code(compute.StartDomain, pb.StartDomainRequest(name="not-mine"), token)}
print(json.dumps({"uri": version.uri, "hypervisor": version.hypervisor_type,
                  "domains": [d.name for d in domains.domains], "health": statuses,
                  "tokens": tokens, "node": node}))
"""

METRICS = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode())
"""


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Short: the embedded QEMU root is a volume and its UNIX sockets live under it.
    path = Path(tempfile.mkdtemp(prefix="k8s-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _probes(container: dict[str, Any]) -> list[tuple[str, list[str]]]:
    probes = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe:
            assert "exec" in probe, f"{container['name']} {kind}: only exec probes run here"
            probes.append((kind, probe["exec"]["command"]))
    return probes


@needs_kubectl
@pytest.mark.qemu
@pytest.mark.timeout(300)
@pytest.mark.skipif(os.geteuid() != 0, reason="a pod's namespace and users need root")
@pytest.mark.skipif(not all(shutil.which(tool) for tool in ("unshare", "nsenter", "setpriv", "ip")),
                    reason="needs util-linux unshare, nsenter, setpriv and iproute2")
@pytest.mark.parametrize("profile", PROFILES)
def test_daemonset_runs_here_as_written(profile: str, short_tmp: Path,
                                        request: pytest.FixtureRequest) -> None:
    """embedded: no libvirt daemon involved. host: the pod's /run/libvirt is this
    host's, and its libvirt daemon serves every driver (started if none runs)."""
    if profile == "host":
        request.getfixturevalue("host_libvirtd")
    objects = render(K8S / "overlays" / profile)
    pki, logs = short_tmp / "pki", short_tmp / "log"
    ensure_dev_pki(pki)
    logs.mkdir()
    volumes = short_tmp / "v"
    volumes.mkdir(mode=0o755)
    # The Secrets as the operator makes them: TLS from the PKI (cert-manager's in a
    # cluster); identities admitting the PKI's admin certificate and a readonly token.
    token = new_token()
    identities = (f"tls_allowed_dn_list = [{json.dumps(DEV_ADMIN_DN)}]\n\n[tls_dn_groups]\n"
                  f"{json.dumps(DEV_ADMIN_DN)} = [\"admin\"]\n"
                  + token_entry("ci", ["readonly"], token))
    assert parse_identities(tomllib.loads(identities)).token(token) is not None
    secrets = {name: {key: (pki / file).read_bytes() for key, file in keys.items()}
               for name, keys in TLS_SECRETS.items()}
    secrets[IDENTITIES_SECRET] = {IDENTITIES_KEY: identities.encode()}
    pod = Pod(objects, volumes, secrets, image_venv(short_tmp / "venv"))
    containers = {c["name"]: c for c in pod.spec["containers"]}
    assert set(containers) == {"gateway", *profile_services(profile)}

    def log_tail() -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(logs.iterdir()))

    try:
        pod.start_netns()
        for init in pod.spec.get("initContainers") or []:  # each to completion, in order
            done = pod.run(init, [*init["command"], *init.get("args", [])], timeout=60)
            assert done.returncode == 0, f"{init['name']}: {done.stdout}{done.stderr}"
        for container in containers.values():
            pod.start(container, logs)
        pending = {(name, kind): command for name, container in containers.items()
                   for kind, command in _probes(container)}
        assert {kind for _, kind in pending} >= {"readinessProbe", "livenessProbe"}
        failures: dict[tuple[str, str], str] = {}
        deadline = time.monotonic() + 150
        while pending:
            for name, process in pod.processes.items():
                assert process.poll() is None, f"{name} exited {process.returncode}\n{log_tail()}"
            for key, command in list(pending.items()):
                result = pod.run(containers[key[0]], command, timeout=30)
                if result.returncode == 0:
                    del pending[key]
                else:
                    failures[key] = result.stdout + result.stderr
            if pending and time.monotonic() > deadline:
                pytest.fail(f"probes still failing: {failures}\n{log_tail()}")
            time.sleep(0.5)

        gateway = containers["gateway"]
        port = next(p["containerPort"] for p in gateway["ports"] if p["name"] == "grpc-tls")
        # Through the gateway: compute answers, and every service is reachable and SERVING.
        names = [spec_of(name).descriptor.full_name for name in profile_services(profile)]
        reply = pod.client([sys.executable, "-c", CLIENT, f"127.0.0.1:{port}",
                            str(pki / "ca.crt"), str(pki / "client.crt"),
                            str(pki / "client.key"), json.dumps(names), token], timeout=60)
        assert reply.returncode == 0, reply.stderr + log_tail()
        answer = json.loads(reply.stdout)
        assert answer["health"] == dict.fromkeys(names, "SERVING")
        assert answer["hypervisor"] == "QEMU"
        assert answer["node"] == NODE_NAME  # the gateway names its node (spec.nodeName)
        # Only the identities Secret knows the token (the development CA's fallback
        # admits the admin certificate alone); its readonly role may not start guests.
        assert answer["tokens"] == {"known": "OK", "unknown": "UNAUTHENTICATED",
                                    "start": "PERMISSION_DENIED"}, log_tail()
        # The denied call is in the audit log, where the gateway's flag puts it, written
        # by the gateway's user (the root filesystem is read-only; the volume is not).
        audit_flag = next(arg.split("=", 1)[1] for arg in gateway["args"]
                          if arg.startswith("--audit-log="))
        audit = Path(pod.mapper(gateway)(audit_flag))
        deadline = time.monotonic() + 10
        while not (audit.exists() and "StartDomain" in audit.read_text()):
            assert time.monotonic() < deadline, f"no audit record in {audit}\n{log_tail()}"
            time.sleep(0.2)
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        assert any(r["method"] == "/virtmesh.compute.v1.ComputeService/StartDomain"
                   and r["identity"] == "ci" and r["code"] == "PERMISSION_DENIED"
                   and r["objects"] == ["not-mine"] for r in records), records
        assert audit.stat().st_uid == gateway["securityContext"]["runAsUser"]
        assert stat.S_IMODE(audit.stat().st_mode) == 0o600
        if profile == "embedded":
            qemu_root = pod.volumes["qemu-root"]
            assert answer["uri"] == f"qemu:///embed?root={qemu_root}"
            assert answer["domains"] == []
            assert (qemu_root / "etc" / "qemu.conf").exists()  # the hostPath is the QEMU root
            # The secret root is the non-root secret service's, and its driver's state is there.
            secret_root = pod.volumes["secret-root"]
            uid = containers["secret"]["securityContext"]["runAsUser"]
            assert secret_root.stat().st_uid == uid and any(secret_root.iterdir())
        else:
            assert answer["uri"] == "qemu:///system"

        for container in containers.values():
            for port_spec in container["ports"]:
                if port_spec["name"].startswith("prom-"):
                    scrape = pod.client([sys.executable, "-c", METRICS,
                                         str(port_spec["containerPort"])], timeout=30)
                    assert scrape.returncode == 0, scrape.stderr
                    assert "virtmesh_build_info" in scrape.stdout
    finally:
        pod.stop()
    for name, process in pod.processes.items():
        assert process.returncode == 0, f"{name} exited {process.returncode}\n{log_tail()}"
