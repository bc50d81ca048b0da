#!/usr/bin/env bash
# Install the Debian packages virtmesh needs, only those missing, and the system
# users the QEMU driver expects. Quick when everything is already there.
set -euo pipefail

packages=(
    python3 python3-venv python3-dev gcc pkg-config
    # libvirt-dev also brings /usr/share/libvirt/api/*.xml, read by tools/api-coverage.py
    libvirt-dev libvirt0 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base
    # libvirt 9.0's network driver starts no network, not even an isolated one, without
    # iptables/ip6tables; it remembers the failure until libvirtd restarts
    iptables
    qemu-system-x86 qemu-utils
    busybox-static linux-image-cloud-amd64 cpio gzip xz-utils zstd kmod
    # the example guest's agent (guest/build-guest.sh copies it and its libraries)
    qemu-guest-agent
    openssl ca-certificates procps
    systemd
    prometheus
    # graphics through the gateway: real viewers under a virtual X server, in tests
    xvfb gvncviewer virt-viewer
    # clients in other languages (clients/): Go built offline from Debian's packaged
    # sources (protobuf-go APIv2 and golang/protobuf 1.5: 1.3 panics on APIv2 types)
    golang-go golang-google-grpc-dev golang-google-protobuf-dev
    golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev
    protoc-gen-go protoc-gen-go-grpc
    # the Node client: its packages come from npm (clients/node/package-lock.json)
    nodejs
    # the CLI's zsh completion script runs in a real zsh, in tests
    zsh
)
# Debian's nodejs comes without npm; another nodejs (NodeSource's) brings its own.
command -v npm >/dev/null || packages+=(npm)

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
    # Packages with a daemon (prometheus, for its binaries and promtool) must
    # not start it: invoke-rc.d and deb-systemd-invoke ask policy-rc.d, and 101
    # means "no". Ours is temporary and only if the host has none of its own.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from virtmesh tools/install-deps.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Nor start at the next boot: we only want /usr/bin/prometheus and promtool.
    if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
        systemctl disable --quiet prometheus.service 2>/dev/null || true
    fi
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
