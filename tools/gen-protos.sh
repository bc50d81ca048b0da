#!/usr/bin/env bash
# Regenerate Python code from protos/ into OUT (default protos/gen/python).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -ms "${1:-protos/gen/python}")
python=$(realpath -ms "${PYTHON:-.venv/bin/python}")
# Generate into a scratch dir and swap it in, so that a failed or concurrent run
# never leaves a half-written tree behind.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$out"
mapfile -t files < <(cd protos && find virtmesh -name '*.proto' | LC_ALL=C sort)
bin=$(dirname "$python")
# Typed stubs come from mypy-protobuf, for the messages and the gRPC stubs alike.
(cd protos && "$python" -m grpc_tools.protoc -I . \
    --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
    --python_out="$scratch" --grpc_python_out="$scratch" \
    --mypy_out=quiet:"$scratch" --mypy_grpc_out=quiet:"$scratch" "${files[@]}")
find "$scratch/virtmesh" -type d -exec touch {}/__init__.py \;
old="$scratch/previous"
if [[ -d "$out/virtmesh" ]]; then mv "$out/virtmesh" "$old"; fi
mv "$scratch/virtmesh" "$out/virtmesh"
