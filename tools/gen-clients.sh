#!/usr/bin/env bash
# Regenerate the clients' code in other languages from protos/ (protos/buf.gen.yaml):
# clients/go/gen and clients/node/src/gen under OUT (default: the top of the
# checkout). Needs Debian's protoc-gen-go and protoc-gen-go-grpc
# (tools/install-deps.sh) and ts-proto (npm ci in clients/node).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -ms "${1:-.}")
buf=$(realpath -ms "${BUF:-.venv/bin/buf}")
generated=(clients/go/gen clients/node/src/gen)
# Into a scratch dir first, then swapped in: no stale file of a removed proto stays.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$buf" generate protos --template protos/buf.gen.yaml --output "$scratch"
for dir in "${generated[@]}"; do
    mkdir -p "$(dirname "$out/$dir")"
    rm -rf "$out/$dir"
    mv "$scratch/$dir" "$out/$dir"
done
