#!/usr/bin/env python3
"""tus uploads with a real tus client (tuspy from PyPI) against a real streamhub.

    python tus_test.py --bin ../../target/release/streamhub

It starts the server on a free port with its own temporary database, behind a small TCP
forwarder that can cut one connection mid-body, and checks:

- an upload in chunks with per-chunk checksums (sha1) and the whole file's SHA-256 in the
  metadata: GetFileInfo reports that SHA-256, and a GET of its download URL returns the bytes;
- resume after an interruption: the connection of a PATCH is cut mid-body, HEAD then reports
  the bytes the server kept, and a new uploader continues from there to the exact file;
- a wrong checksum: a chunk whose Upload-Checksum does not match gets 460 and moves nothing;
  a whole file that does not match its declared SHA-256 gets 460 and the upload is gone (404).

The gRPC stubs it imports must have been generated first (gen.sh), as for interop_test.py.
"""
import argparse
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import requests
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.uploader import Uploader

from streaming.v1 import streaming_pb2 as pb
from streaming.v1 import streaming_pb2_grpc as rpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cutter:
    """A TCP forwarder in front of the server. Once armed, the first connection that sends more
    than `limit` bytes towards the server is closed right there, both ways, the way a dropped
    network looks; every other connection is forwarded untouched."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.limit = None
        self.cut = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, limit: int):
        with self.lock:
            self.limit = limit
            self.cut.clear()

    def _accept(self):
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            outbound = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._up, args=(inbound, outbound), daemon=True).start()
            threading.Thread(target=self._down, args=(outbound, inbound), daemon=True).start()

    def _up(self, source: socket.socket, sink: socket.socket):
        sent = 0
        try:
            while True:
                data = source.recv(64 * 1024)
                if not data:
                    break
                with self.lock:
                    limit = self.limit if not self.cut.is_set() else None
                if limit is not None and sent + len(data) > limit:
                    sink.sendall(data[: limit - sent])
                    with self.lock:
                        self.limit = None
                    self.cut.set()
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _down(self, source: socket.socket, sink: socket.socket):
        try:
            while True:
                data = source.recv(64 * 1024)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass


class Server:
    """streamhub as a child process, its public URL pointing at the forwarder."""

    def __init__(self, binary: str, data_dir: str):
        self.binary, self.data_dir = binary, data_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.cutter = Cutter(self.port)
        self.endpoint = f"http://127.0.0.1:{self.cutter.port}/files/"

    def start(self):
        self.log = open(os.path.join(self.data_dir, "server.log"), "ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--listen", self.address,
                "--database-url", f"sqlite://{self.data_dir}/streamhub.db",
                "--storage-dir", f"{self.data_dir}/files",
                # Location and download URLs lead through the forwarder.
                "--public-url", f"http://127.0.0.1:{self.cutter.port}",
            ],
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                grpc.channel_ready_future(grpc.insecure_channel(self.address)).result(timeout=1)
                return
            except grpc.FutureTimeoutError:
                if self.process.poll() is not None:
                    break
        raise RuntimeError(f"server did not start; see {self.data_dir}/server.log")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self.log.close()


def check(condition: bool, message: str):
    if not condition:
        raise AssertionError(message)


def write_file(work: str, name: str, size: int) -> str:
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return path


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def head(url: str) -> requests.Response:
    return requests.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=10)


def wait_for(what: str, condition, timeout: float = 30):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = condition()
        if ok:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last}")


def assert_stored(server: Server, url: str, path: str):
    """GetFileInfo reports the file's SHA-256; its download URL returns exactly its bytes."""
    file_id = url.rstrip("/").rsplit("/", 1)[1]
    with grpc.insecure_channel(server.address) as channel:
        info = rpc.StreamingServiceStub(channel).GetFileInfo(pb.GetFileInfoRequest(file_id=file_id))
    check(info.checksum == sha256_of(path), f"GetFileInfo checksum {info.checksum} != {sha256_of(path)}")
    check(info.total_size == os.path.getsize(path), f"size {info.total_size}")
    check(info.filename == os.path.basename(path), f"filename {info.filename!r}")
    # With auth off the download URL is the upload's URL, unsigned (the frozen contract the
    # stubs come from predates FileMetadata.download_url); without Tus-Resumable it downloads.
    body = requests.get(url, timeout=30)
    check(body.status_code == 200, f"GET {url}: {body.status_code}")
    check(body.headers.get("ETag") == f'"{info.checksum}"', f"ETag {body.headers.get('ETag')}")
    with open(path, "rb") as f:
        check(body.content == f.read(), "downloaded bytes differ")
    check(head(url).headers.get("Upload-Offset") == str(info.total_size), "HEAD: not complete")


def metadata_of(path: str, checksum: str = None) -> dict:
    return {
        "filename": os.path.basename(path),
        "filetype": "application/octet-stream",
        "checksum": checksum or sha256_of(path),
    }


def test_chunked_upload_with_checksums(server: Server, work: str):
    path = write_file(work, "chunked.bin", 5 * 1024 * 1024 + 321)
    client = tus_client.TusClient(server.endpoint)
    uploader = client.uploader(
        path, chunk_size=1024 * 1024, metadata=metadata_of(path), upload_checksum=True
    )
    uploader.upload()
    check(uploader.offset == os.path.getsize(path), f"offset {uploader.offset}")
    assert_stored(server, uploader.url, path)


def test_resume_after_interruption(server: Server, work: str):
    size = 6 * 1024 * 1024
    path = write_file(work, "resumed.bin", size)
    client = tus_client.TusClient(server.endpoint)
    first = client.uploader(path, metadata=metadata_of(path))  # one PATCH for the whole file
    first.set_url(first.create_url())
    server.cutter.arm(2 * 1024 * 1024)  # that PATCH loses its connection after about 2 MiB
    try:
        first.upload()
        raise AssertionError("the upload went through the cut")
    except (TusUploadFailed, TusCommunicationError):
        pass
    check(server.cutter.cut.is_set(), "the forwarder cut nothing")

    def kept():
        reply = head(first.url)
        offset = int(reply.headers.get("Upload-Offset", "0"))
        return reply.status_code == 200 and offset > 0, (reply.status_code, offset)

    _, offset = wait_for("the server to record what it kept", kept)
    check(0 < offset < size, f"kept {offset} of {size}")
    # A new uploader (a restarted client) finds the upload by its URL and continues from HEAD.
    second = Uploader(path, url=first.url, client=client, metadata=metadata_of(path), retries=5, retry_delay=1)
    check(second.offset == offset, f"resumed at {second.offset}, HEAD said {offset}")
    second.upload()
    assert_stored(server, first.url, path)


class WrongChecksumUploader(Uploader):
    """Sends an Upload-Checksum that is not the chunk's."""

    CHECKSUM_ALGORITHM_PAIR = ("sha1", lambda chunk: hashlib.sha1(b"not " + chunk))


def test_wrong_checksums(server: Server, work: str):
    path = write_file(work, "checked.bin", 300 * 1024)
    client = tus_client.TusClient(server.endpoint)
    wrong = WrongChecksumUploader(path, client=client, metadata=metadata_of(path), upload_checksum=True)
    try:
        wrong.upload()
        raise AssertionError("a wrong chunk checksum was accepted")
    except TusUploadFailed as err:
        check(err.status_code == 460, f"status {err.status_code}")
    reply = head(wrong.url)
    check(reply.status_code == 200 and reply.headers.get("Upload-Offset") == "0", f"offset moved: {reply.headers}")
    # The same upload, with the right checksums, goes through.
    right = client.uploader(path, url=wrong.url, metadata=metadata_of(path), upload_checksum=True)
    right.upload()
    assert_stored(server, wrong.url, path)

    # A whole file that does not match its declared SHA-256: 460, and the upload is gone.
    other = write_file(work, "mismatch.bin", 100 * 1024)
    declared = hashlib.sha256(b"something else").hexdigest()
    uploader = client.uploader(other, metadata=metadata_of(other, declared), chunk_size=64 * 1024)
    try:
        uploader.upload()
        raise AssertionError("a file that does not match its checksum was stored")
    except TusUploadFailed as err:
        check(err.status_code == 460, f"status {err.status_code}")
    check(head(uploader.url).status_code == 404, "the mismatched upload is still there")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the streamhub binary")
    parser.add_argument("-k", help="run only the tests whose name contains this")
    args = parser.parse_args()
    binary = os.path.abspath(args.bin)

    with tempfile.TemporaryDirectory() as work:
        server = Server(binary, work)
        server.start()
        tests = [
            ("tus chunked upload with checksums", lambda: test_chunked_upload_with_checksums(server, work)),
            ("tus resume after interruption", lambda: test_resume_after_interruption(server, work)),
            ("tus wrong checksums", lambda: test_wrong_checksums(server, work)),
        ]
        failed = 0
        ran = 0
        try:
            for name, test in tests:
                if args.k and args.k not in name:
                    continue
                ran += 1
                started = time.monotonic()
                try:
                    test()
                    print(f"ok      {name} ({time.monotonic() - started:.1f}s)", flush=True)
                except Exception as err:  # report every failure, then fail the run
                    failed += 1
                    print(f"FAILED  {name}: {err!r}", flush=True)
        finally:
            server.stop()
            if failed:
                with open(os.path.join(work, "server.log"), errors="replace") as log:
                    print("---- server log (tail) ----\n" + "".join(log.readlines()[-40:]))
    print(f"{ran - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
