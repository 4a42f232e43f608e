#!/usr/bin/env bash
# Generates the Python stubs (streaming/v1/streaming_pb2*.py) next to the examples.
# Usage: ./gen.sh [PROTO_ROOT]   (default: the repository's proto/ directory)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto_root="${1:-$here/../../proto}"
python="${PYTHON:-python3}"
"$python" -m grpc_tools.protoc \
    -I "$proto_root" \
    --python_out="$here" \
    --grpc_python_out="$here" \
    "$proto_root/streaming/v1/streaming.proto"
echo "generated stubs in $here/streaming/v1 from $proto_root"
