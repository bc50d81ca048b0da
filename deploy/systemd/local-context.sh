#!/usr/bin/env bash
# A CLI context named "local" for this host's gateway, made by install.sh after an
# install (also runnable alone, as the user whose CLI should have it):
#
#   deploy/systemd/local-context.sh [VIRTMESH [CONFDIR]]
#
# VIRTMESH is the CLI (default /opt/virtmesh/.venv/bin/virtmesh), CONFDIR the
# mesh's configuration (default /etc/virtmesh). The gateway's address is the
# listen address of CONFDIR/virtmesh.toml's [services.gateway], a wildcard
# (0.0.0.0, [::]) becoming 127.0.0.1; the CA is CONFDIR/pki/ca.crt, and the client
# certificate CONFDIR/pki/client.{crt,key} when there is one (install.sh
# --dev-pki). The context is written with `virtmesh config set-context`, into the
# CLI's config file (~/.config/virtmesh/config.toml, or $VIRTMESH_CLI_CONFIG), and
# made current; an existing "local" context is left alone. A CLI without contexts
# (no `config set-context`) gets none, and the script says so.
set -euo pipefail

cli=${1:-/opt/virtmesh/.venv/bin/virtmesh}
confdir=${2:-/etc/virtmesh}
say() { echo "local-context: $*"; }

if ! "$cli" config set-context --help >/dev/null 2>&1; then
    say "$cli has no 'config set-context': no context made (give --gateway, --ca ... to each command)"
    exit 0
fi
if "$cli" config get-contexts 2>/dev/null | grep -Eq '(^|[[:space:]*])local([[:space:]]|$)'; then
    say "kept the existing context 'local'"
    exit 0
fi
# the gateway's listen address: the first listen = "..." under [services.gateway]
listen=$(awk '/^\[/ { section = $0 }
              section == "[services.gateway]" && $1 == "listen" {
                  sub(/^[^"]*"/, ""); sub(/".*$/, ""); print; exit }' "$confdir/virtmesh.toml")
listen=${listen:-127.0.0.1:16514}
port=${listen##*:}
host=${listen%:*}
case $host in "" | 0.0.0.0 | "[::]" | "::") host=127.0.0.1 ;; esac
args=(--gateway "$host:$port" --ca "$confdir/pki/ca.crt")
if [[ -r $confdir/pki/client.crt && -r $confdir/pki/client.key ]]; then
    args+=(--cert "$confdir/pki/client.crt" --key "$confdir/pki/client.key")
fi
"$cli" config set-context local "${args[@]}" --use
[[ ${#args[@]} -gt 4 ]] ||
    say "add your credentials: virtmesh config set-context local --cert FILE --key FILE (or --token-file FILE)"
