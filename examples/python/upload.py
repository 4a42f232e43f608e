#!/usr/bin/env python3
"""Client streaming: upload a file with its metadata first, then 64 KiB chunks.

The first message carries FileMetadata (name, size, type and the SHA-256 computed before
sending), each later one a chunk with its offset. The server verifies the checksum before it
commits the file, so a corrupted upload is refused with DATA_LOSS instead of stored.

    python upload.py report.pdf
    python upload.py big.iso --chunk 65536
"""
import argparse
import hashlib
import mimetypes
import os
import sys

import grpc

from streaming.v1 import streaming_pb2 as pb
from streaming.v1 import streaming_pb2_grpc as rpc


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def chunks(path: str, chunk_size: int, checksum: str):
    size = os.path.getsize(path)
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    yield pb.FileChunk(
        metadata=pb.FileMetadata(
            filename=os.path.basename(path), total_size=size, content_type=content_type, checksum=checksum
        )
    )
    offset = 0
    with open(path, "rb") as f:  # opened once, read in order
        while block := f.read(chunk_size):
            yield pb.FileChunk(chunk=block, offset=offset)
            offset += len(block)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="chunk size in bytes")
    args = parser.parse_args()

    checksum = sha256_of(args.path)
    with grpc.insecure_channel(args.server) as channel:
        stub = rpc.StreamingServiceStub(channel)
        try:
            result = stub.UploadFile(chunks(args.path, args.chunk, checksum))
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(f"file_id {result.file_id}")
    print(f"bytes {result.bytes_uploaded}")
    print(f"sha256 {checksum} verified={result.checksum_verified}")
    print(f"url {result.download_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
