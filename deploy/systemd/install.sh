#!/usr/bin/env bash
# Install virtmesh on a systemd host: the repository to /opt/virtmesh with its
# venv, the units, the virtmesh user, a default config and the gateway's
# identities file (admitting nobody); then daemon-reload and enable the profile.
# Run as root from a checkout:
#
#   deploy/systemd/install.sh [--profile always-on|on-demand] [--now] [--dev-pki]
#                             [--no-venv] [--no-enable]
#
#   --profile    always-on (default): virtmesh.target runs every service from boot;
#                on-demand: only the gateway runs from boot, it starts a service on
#                its first call, and a service exits after 600 idle seconds
#   --now        also start it (and restart the virtmesh units already running)
#   --dev-pki    make a development PKI in /etc/virtmesh/pki (trials only); a new
#                identities file then admits its admin certificate
#   --no-venv    do not create or update /opt/virtmesh/.venv
#   --no-enable  do not run systemd-sysusers, daemon-reload or enable
#
# DESTDIR=/some/dir installs only the files, under that directory (packaging,
# tests): no venv (a venv is not relocatable), no systemctl, no users.
# The system packages (python3, libvirt, QEMU) come from tools/install-deps.sh.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
prefix=/opt/virtmesh              # the units' ExecStart= points here
unitdir=/etc/systemd/system
sysusersdir=/etc/sysusers.d
confdir=/etc/virtmesh
destdir=${DESTDIR:-}
venv=yes enable=yes now=no dev_pki=no profile=always-on

while (($#)); do
    case $1 in
        --profile=*) profile=${1#*=} ;;
        --profile) profile=${2:-}; shift ;;
        --now) now=yes ;;
        --dev-pki) dev_pki=yes ;;
        --no-venv) venv=no ;;
        --no-enable) enable=no ;;
        -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ $profile == always-on || $profile == on-demand ]] ||
    { echo "install.sh: --profile must be always-on or on-demand" >&2; exit 2; }
if [[ -n $destdir ]]; then
    venv=no enable=no
    [[ $dev_pki == no ]] || { echo "install.sh: --dev-pki needs a real install" >&2; exit 2; }
elif [[ $(id -u) != 0 ]]; then
    echo "install.sh: run as root (or set DESTDIR to install the files elsewhere)" >&2
    exit 1
fi

say() { echo "install.sh: $*"; }

# 1. The code. Replaced wholesale (but not the venv), so removed files go too.
sources=(pyproject.toml requirements.lock README.md services gateway guest client protos deploy)
target=$destdir$prefix
mkdir -p "$target"
for item in "${sources[@]}"; do rm -rf "${target:?}/$item"; done
tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' -cf - "${sources[@]}" | tar -C "$target" -xf -
say "copied the code to $target"

# 2. The venv: runtime dependencies at the versions of requirements.lock (used
# as constraints: its linters and test tools are not installed), then virtmesh.
if [[ $venv == yes ]]; then
    [[ -x $prefix/.venv/bin/python ]] || python3 -m venv "$prefix/.venv"
    "$prefix/.venv/bin/pip" install -q --disable-pip-version-check \
        -c "$prefix/requirements.lock" --upgrade "$prefix"
    rm -rf "$prefix/build" "$prefix"/*.egg-info
    say "venv ready: $prefix/.venv"
fi

# 2b. The CLI on PATH: /usr/local/bin/virtmesh (and virtmesh-admin, where the venv
# has it) link to the venv's. A file there that is not such a link is someone
# else's (a pip install) and is kept.
bindir=/usr/local/bin
install -d "$destdir$bindir"
for tool in virtmesh virtmesh-admin; do
    link=$destdir$bindir/$tool
    [[ $tool == virtmesh || -x $prefix/.venv/bin/$tool ]] || continue
    if [[ -e $link && ! -L $link ]]; then
        say "kept $bindir/$tool, which is not ours"
    else
        ln -sfn "$prefix/.venv/bin/$tool" "$link"
    fi
done
say "the CLI: $bindir/virtmesh"

# 3. Units, the user, and a config that is never overwritten once there.
units=$repo/deploy/systemd/units
install -d "$destdir$unitdir" "$destdir$sysusersdir" "$destdir$confdir"
for unit in "$units"/*.service "$units"/*.target; do
    install -m 0644 "$unit" "$destdir$unitdir/"
done
for dropin in "$units"/*.d; do
    install -d "$destdir$unitdir/${dropin##*/}"
    install -m 0644 "$dropin"/*.conf "$destdir$unitdir/${dropin##*/}/"
done
install -m 0644 "$repo/deploy/systemd/sysusers.d/virtmesh.conf" "$destdir$sysusersdir/"
# The on-demand profile's drop-ins and polkit rule: installed, or removed.
ondemand=$repo/deploy/systemd/on-demand
rule=/etc/polkit-1/rules.d/50-virtmesh.rules
for dropin in "$ondemand"/*.d; do
    dir=$destdir$unitdir/${dropin##*/}
    if [[ $profile == on-demand ]]; then
        install -d "$dir"
        install -m 0644 "$dropin"/*.conf "$dir/"
    else
        for conf in "$dropin"/*.conf; do rm -f "$dir/${conf##*/}"; done
        [[ ! -d $dir ]] || rmdir --ignore-fail-on-non-empty "$dir"
    fi
done
if [[ $profile == on-demand ]]; then
    install -D -m 0644 "$ondemand/polkit-1/rules.d/50-virtmesh.rules" "$destdir$rule"
else
    rm -f "$destdir$rule"
fi
for file in virtmesh.toml virtmesh.env; do
    if [[ -e $destdir$confdir/$file ]]; then
        say "kept the existing $confdir/$file"
    else
        install -m 0644 "$repo/deploy/systemd/$file" "$destdir$confdir/$file"
    fi
done
say "installed units in $destdir$unitdir ($profile profile)"

# 4. Who may call the gateway: never overwritten. Owned by virtmesh (the gateway
# reads it; `python -m gateway.authn` run as virtmesh rewrites it). As shipped it
# admits nobody; created with --dev-pki, the development admin certificate.
gwconf=$confdir/gateway
identities=$gwconf/identities.toml
install -d -m 0700 "$destdir$gwconf"
if [[ -e $destdir$identities ]]; then
    say "kept the existing $identities"
else
    install -m 0600 "$repo/deploy/systemd/identities.toml" "$destdir$identities"
    if [[ $dev_pki == yes ]]; then
        printf '\ntls_allowed_dn_list = ["O=virtmesh,CN=admin"]\n\n[tls_dn_groups]\n"O=virtmesh,CN=admin" = ["admin"]\n' \
            >>"$destdir$identities"
    fi
    say "created $identities (mode 0600)"
fi
own_identities() { chown virtmesh:virtmesh "$gwconf" "$identities"; }
if [[ -z $destdir && $enable == no ]] && getent passwd virtmesh >/dev/null; then
    own_identities
fi

if [[ $enable == yes ]]; then
    systemd-sysusers "$sysusersdir/virtmesh.conf"
    own_identities  # before the gateway (re)starts: it must be able to read it
    if [[ $dev_pki == yes ]]; then
        "$prefix/.venv/bin/python" -m gateway.pki "$confdir/pki"
        chgrp virtmesh "$confdir/pki/server.key"
        chmod 0640 "$confdir/pki/server.key"
    fi
    if [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
        # Running units restart with the new code and the profile's flags (compute
        # keeps its guests across a restart).
        [[ $now == no ]] || systemctl try-restart virtmesh-gateway.service 'virtmesh@*.service'
        start=()
        [[ $now == no ]] || start=(--now)
        if [[ $profile == always-on ]]; then
            rm -f "$unitdir/multi-user.target.wants/virtmesh-gateway.service"
            systemctl enable "${start[@]}" virtmesh.target
            say "enabled virtmesh.target$([[ $now == yes ]] && echo ' and started it')"
        else
            # Only the gateway from boot: virtmesh.target would want every service.
            systemctl disable --quiet virtmesh.target
            systemctl add-wants multi-user.target virtmesh-gateway.service
            [[ $now == no ]] || systemctl start virtmesh-gateway.service
            say "the gateway starts at boot$([[ $now == yes ]] && echo ' (started)'), the services on demand"
        fi
        # secret, storage, network, nwfilter, nodedev and iface need the host's libvirt daemon
        # (is-enabled succeeds when any of them is enabled).
        systemctl is-enabled --quiet libvirtd.service libvirtd.socket virtsecretd.socket \
                virtstoraged.socket virtnetworkd.socket virtnwfilterd.socket \
                virtnodedevd.socket virtinterfaced.socket 2>/dev/null ||
            say "warning: no libvirt daemon is enabled; secret, storage, network, nwfilter, nodedev and iface need one (Debian: apt-get install libvirt-daemon-system)"
    else
        say "systemd is not running here: run 'systemctl daemon-reload' and enable the profile on the host (see deploy/systemd/README.md)"
    fi
fi
# 5. A CLI context "local" for this gateway, for root (deploy/systemd/local-context.sh;
# run it as another user for theirs).
if [[ -z $destdir && -x $prefix/.venv/bin/virtmesh ]]; then
    "$repo/deploy/systemd/local-context.sh" "$prefix/.venv/bin/virtmesh" "$confdir" |
        sed 's/^/install.sh: /'
fi
[[ -e $destdir$confdir/pki/server.crt ]] ||
    say "the gateway needs $confdir/pki/{server.crt,server.key,ca.crt} (key 0640 root:virtmesh)"
grep -Eq '^[[:space:]]*identities_file[[:space:]]*=' "$destdir$confdir/virtmesh.toml" ||
    say "warning: $confdir/virtmesh.toml (kept from an older install) sets no identities_file: add identities_file = \"$identities\" to its [services.gateway] table"
grep -Eq '^[[:space:]]*(tls_allowed_dn_list|\[\[token\]\])' "$destdir$identities" ||
    say "the gateway admits nobody until $identities lists someone: see deploy/systemd/README.md (Identities)"
