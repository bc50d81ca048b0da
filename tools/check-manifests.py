#!/usr/bin/env python3
"""Policy check of rendered Kubernetes manifests (run by `make lint`).

    tools/check-manifests.py                     every kustomization under deploy/k8s
    tools/check-manifests.py DIR|FILE|- ...      kustomization dirs (rendered with
                                                 `kubectl kustomize`), YAML files, stdin

Every pod template must have: no hostNetwork/hostPID/hostIPC; on every container
no privileged, allowPrivilegeEscalation false, capabilities drop ALL and none
added (exceptions below), CPU and memory requests and limits, readOnlyRootFilesystem true,
runAsNonRoot true (exceptions below, each with its reason); host devices only
for the containers allowed below; the host's libvirt sockets (/run/libvirt) only
for the driver services; liveness and readiness probes on every long-running
container. Exits 1 listing every violation, one a line.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from services.common import registry

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"

#: containers that may run as root, and why (none may be privileged)
ROOT_ALLOWED = {
    "compute": "owns the hostPath QEMU root and /dev/kvm (root:kvm, the kvm gid differs "
               "between nodes)",
    "secret-root-owner": "hands the hostPath secret root (created root:root by the kubelet) "
                         "to the secret service's non-root user; runs one chown",
}
#: the host's libvirt runtime directory: its sockets give libvirt's full API
LIBVIRT_RUN = "/run/libvirt"
#: containers that may mount LIBVIRT_RUN (the driver services, host profile). Mounting
#: it, they may run as root (still with no capabilities): libvirt's UNIX socket policy
#: admits uid 0 without polkit, and the libvirt group's gid differs between nodes.
LIBVIRT_SOCKET_ALLOWED = set(registry.names())
#: capabilities a container may add (after dropping ALL), and why
CAPABILITIES_ALLOWED = {
    "compute": ({"SETUID", "SETGID", "SETPCAP", "DAC_OVERRIDE"},
                "libvirt's QEMU driver as root starts QEMU as qemu.conf's user and clears "
                "its capabilities; measured minimum (tests/test_k8s_manifests.py)"),
    "secret-root-owner": ({"CHOWN"}, "chown of a root-owned directory"),
}
#: containers whose root filesystem may be writable, and why
WRITABLE_ROOT_ALLOWED: dict[str, str] = {}
#: host device paths (hostPath under /dev) each container may mount
DEVICES_ALLOWED = {"compute": {"/dev/kvm"}}
#: probes every long-running container (not init containers) must have
PROBES_REQUIRED = ("livenessProbe", "readinessProbe")

WORKLOADS = {"Pod", "Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob",
             "ReplicationController"}


def render(source: str) -> tuple[str, list[dict[str, Any]]]:
    """The objects of a kustomization directory, a YAML file or ``-`` (stdin)."""
    if source == "-":
        text = sys.stdin.read()
    elif Path(source).is_dir():
        text = subprocess.run(["kubectl", "kustomize", source], check=True,
                              capture_output=True, text=True).stdout
    else:
        text = Path(source).read_text()
    return source, [doc for doc in yaml.safe_load_all(text) if doc]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj.get("kind")
    if kind not in WORKLOADS:
        return None
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield field, container


def check_object(obj: dict[str, Any]) -> list[str]:
    """Violations of one object, each a full sentence naming the object and container."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    meta = obj.get("metadata") or {}
    where = f"{obj['kind']} {meta.get('namespace', '-')}/{meta.get('name', '?')}"
    problems = [f"{where}: spec.{field} is true"
                for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]
    pod_security = spec.get("securityContext") or {}
    host_paths = {volume["name"]: volume["hostPath"]["path"].rstrip("/")
                  for volume in spec.get("volumes") or [] if "hostPath" in volume}
    for field, container in _containers(spec):
        name = container.get("name", "?")
        at = f"{where} container {name}"
        mounted = {host_paths[mount["name"]] for mount in container.get("volumeMounts") or []
                   if mount.get("name") in host_paths}
        security = container.get("securityContext") or {}
        if security.get("privileged"):
            problems.append(f"{at}: securityContext.privileged is true")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: securityContext.allowPrivilegeEscalation must be false")
        capabilities = security.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{at}: securityContext.capabilities.drop must include ALL")
        allowed = CAPABILITIES_ALLOWED.get(name, (set(), ""))[0]
        extra = sorted(set(capabilities.get("add") or []) - allowed)
        if extra:
            problems.append(f"{at}: securityContext.capabilities.add {extra} is not allowed "
                            f"(allowed: {sorted(allowed) or 'none'})")
        if security.get("readOnlyRootFilesystem") is not True and \
                name not in WRITABLE_ROOT_ALLOWED:
            problems.append(f"{at}: securityContext.readOnlyRootFilesystem must be true")
        non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        if non_root is not True and name not in ROOT_ALLOWED and not (
                LIBVIRT_RUN in mounted and name in LIBVIRT_SOCKET_ALLOWED):
            problems.append(f"{at}: securityContext.runAsNonRoot must be true")
        if LIBVIRT_RUN in mounted and name not in LIBVIRT_SOCKET_ALLOWED:
            problems.append(f"{at}: mounts the host's {LIBVIRT_RUN}; only "
                            f"{sorted(LIBVIRT_SOCKET_ALLOWED)} may")
        if field == "containers":
            problems += [f"{at}: {probe} is not set" for probe in PROBES_REQUIRED
                         if not container.get(probe)]
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not (resources.get(kind) or {}).get(resource):
                    problems.append(f"{at}: resources.{kind}.{resource} is not set")
        for path in sorted(mounted):
            if (path == "/dev" or path.startswith("/dev/")) and \
                    path not in DEVICES_ALLOWED.get(name, set()):
                problems.append(f"{at}: mounts host device {path}; only {sorted(DEVICES_ALLOWED)} "
                                f"may mount {sorted(set().union(*DEVICES_ALLOWED.values()))}")
    return problems


def check(objects: Iterable[dict[str, Any]]) -> tuple[list[str], int]:
    """All violations and the number of pod templates checked."""
    problems: list[str] = []
    pods = 0
    for obj in objects:
        if pod_spec(obj) is not None:
            pods += 1
        problems += check_object(obj)
    return problems, pods


def kustomizations(root: Path = K8S) -> list[Path]:
    return sorted(path.parent for path in root.rglob("kustomization.yaml"))


def main(argv: list[str] | None = None) -> int:
    sources = (argv if argv is not None else sys.argv[1:]) or \
        [str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
         for path in kustomizations()]
    failed = False
    for source in sources:
        try:
            _, objects = render(source)
        except (OSError, subprocess.CalledProcessError, yaml.YAMLError) as error:
            detail = getattr(error, "stderr", "") or error
            print(f"{source}: cannot render: {str(detail).strip()}", file=sys.stderr)
            failed = True
            continue
        problems, pods = check(objects)
        for problem in problems:
            print(f"{source}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        if not problems:
            print(f"{source}: ok ({len(objects)} objects, {pods} pod templates)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
