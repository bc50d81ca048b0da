#!/usr/bin/env bash
# Regenerate Python code from protos/ into OUT (default protos/gen/python).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -ms "${1:-protos/gen/python}")
python=$(realpath -ms "${PYTHON:-.venv/bin/python}")
rm -rf "$out/virtmesh"
mkdir -p "$out"
mapfile -t files < <(cd protos && find virtmesh -name '*.proto' | LC_ALL=C sort)
bin=$(dirname "$python")
# Typed stubs come from mypy-protobuf, for the messages and the gRPC stubs alike.
(cd protos && "$python" -m grpc_tools.protoc -I . \
    --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
    --python_out="$out" --grpc_python_out="$out" \
    --mypy_out=quiet:"$out" --mypy_grpc_out=quiet:"$out" "${files[@]}")
find "$out/virtmesh" -type d -exec touch {}/__init__.py \;
