#!/usr/bin/env python3
"""Server streaming: download a file and verify its SHA-256.

GetFileInfo gives the size and checksum; DownloadFile streams the bytes (from --offset when a
partial copy exists). The file is written to a temporary name and moved into place only when its
SHA-256 matches, so a failed download never leaves a wrong file behind.

    python download.py 0190f6c2-... --out report.pdf
"""
import argparse
import hashlib
import os
import sys

import grpc

from streaming.v1 import streaming_pb2 as pb
from streaming.v1 import streaming_pb2_grpc as rpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file_id")
    parser.add_argument("--out", help="where to write it (default: the stored filename)")
    parser.add_argument("--server", default="127.0.0.1:50051")
    args = parser.parse_args()

    with grpc.insecure_channel(args.server) as channel:
        stub = rpc.StreamingServiceStub(channel)
        try:
            info = stub.GetFileInfo(pb.GetFileInfoRequest(file_id=args.file_id))
            out = args.out or info.filename or args.file_id
            part = out + ".part"
            digest = hashlib.sha256()
            offset = 0
            if os.path.exists(part):  # resume a partial download
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                        offset += len(block)
            with open(part, "ab") as f:
                for chunk in stub.DownloadFile(pb.DownloadFileRequest(file_id=args.file_id, offset=offset)):
                    if chunk.WhichOneof("data") == "metadata":
                        continue  # the stream opens with the file's metadata; GetFileInfo gave it
                    if chunk.offset != offset:
                        print(f"error: chunk at {chunk.offset}, expected {offset}", file=sys.stderr)
                        return 1
                    f.write(chunk.chunk)
                    digest.update(chunk.chunk)
                    offset += len(chunk.chunk)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1

    if offset != info.total_size or digest.hexdigest() != info.checksum:
        print(f"error: got {offset} bytes with sha256 {digest.hexdigest()}, expected {info.total_size} bytes with {info.checksum}", file=sys.stderr)
        os.remove(part)
        return 1
    os.replace(part, out)
    print(f"saved {out} ({offset} bytes, sha256 {info.checksum} verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
