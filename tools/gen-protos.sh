#!/usr/bin/env bash
# Regenerate Python code from protos/ into OUT (default protos/gen/python).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -ms "${1:-protos/gen/python}")
python=$(realpath -ms "${PYTHON:-.venv/bin/python}")
rm -rf "$out/virtmesh"
mkdir -p "$out"
mapfile -t files < <(cd protos && find virtmesh -name '*.proto' | LC_ALL=C sort)
(cd protos && "$python" -m grpc_tools.protoc -I . \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${files[@]}")
find "$out/virtmesh" -type d -exec touch {}/__init__.py \;
