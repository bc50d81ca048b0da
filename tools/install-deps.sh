#!/usr/bin/env bash
# Install the Debian packages virtmesh needs, only those missing, and the system
# users the QEMU driver expects. Quick when everything is already there.
set -euo pipefail

packages=(
    python3 python3-venv python3-dev gcc pkg-config
    libvirt-dev libvirt0 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    qemu-system-x86 qemu-utils
    busybox-static linux-image-cloud-amd64 cpio gzip xz-utils zstd kmod
    openssl ca-certificates procps
)

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$package")
done

if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "install-deps: missing packages ${missing[*]}; run as root" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirt's QEMU driver refuses to initialise without its user and group
# (Debian creates them in libvirt-daemon-system, which we do not need).
if [[ $(id -u) == 0 ]]; then
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    getent group kvm >/dev/null || groupadd --system kvm
    getent passwd libvirt-qemu >/dev/null ||
        useradd --system --gid libvirt-qemu --groups kvm --home-dir /var/lib/libvirt \
            --no-create-home --shell /usr/sbin/nologin libvirt-qemu
fi
