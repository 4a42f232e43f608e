#!/usr/bin/env bash
# Generates the Python stubs (streaming/v1/streaming_pb2*.py) next to the examples.
# Usage: ./gen.sh [PROTO_ROOT [OUT_DIR]]   (defaults: the repository's proto/ directory, and this
# directory). CI generates the frozen contract's stubs here for interop_test.py, and the current
# proto/'s into another directory for browser_calls_test.py (the release 2 calls).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto_root="${1:-$here/../../proto}"
out="${2:-$here}"
mkdir -p "$out"
python="${PYTHON:-python3}"
"$python" -m grpc_tools.protoc \
    -I "$proto_root" \
    --python_out="$out" \
    --grpc_python_out="$out" \
    "$proto_root/streaming/v1/streaming.proto"
echo "generated stubs in $out/streaming/v1 from $proto_root"
