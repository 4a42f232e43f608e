#!/usr/bin/env python3
"""The interop test CI runs: every example against a real streamhub, each outcome asserted.

    python interop_test.py --bin ../../target/release/streamhub

It starts the server on a free port with its own temporary database, runs each example as a
user would (a subprocess), and checks what it printed and what the server stored. The stubs it
imports must have been generated first (gen.sh); CI generates them from the frozen contract in
tests/interop/contract, so a renumbered field or renamed RPC in proto/ fails here.
"""
import argparse
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import grpc

from streaming.v1 import streaming_pb2 as pb
from streaming.v1 import streaming_pb2_grpc as rpc

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """streamhub as a child process, restartable on the same port and data directory."""

    def __init__(self, binary: str, data_dir: str):
        self.binary, self.data_dir = binary, data_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        self.log = open(os.path.join(self.data_dir, "server.log"), "ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--listen", self.address,
                "--database-url", f"sqlite://{self.data_dir}/streamhub.db",
                "--storage-dir", f"{self.data_dir}/files",
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


def run_example(name: str, *args: str, timeout: float = 60, **kwargs) -> str:
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, name), *args],
        capture_output=True, text=True, timeout=timeout, **kwargs,
    )
    if result.returncode != 0:
        raise AssertionError(f"{name} {args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result.stdout


def check(condition: bool, message: str):
    if not condition:
        raise AssertionError(message)


def publish(stub, user: str, n: int, start: int):
    for i in range(start, start + n):
        stub.PublishUserEvent(pb.PublishUserEventRequest(user_id=user, type=pb.USER_EVENT_TYPE_LOGIN, id=f"{user}-{i}"))


def test_tail_resumes_without_gaps(server: Server):
    user = f"py-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(server.address) as channel:
        publish(rpc.StreamingServiceStub(channel), user, 50, 0)
    tail = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "tail_events.py"), "--server", server.address,
         "--user", user, "--since", "3600", "--count", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(1.0)
    server.stop()  # the tail sees the connection drop ...
    server.start()  # ... and resumes after the last sequence it printed
    with grpc.insecure_channel(server.address) as channel:
        publish(rpc.StreamingServiceStub(channel), user, 50, 50)
    out, err = tail.communicate(timeout=60)
    check(tail.returncode == 0, f"tail_events.py failed: {err}")
    sequences = [int(line.split()[0]) for line in out.splitlines()]
    check(sequences == list(range(1, 101)), f"tail printed {sequences}")
    check("resuming after 50" in err, f"tail did not report a resume: {err}")


def test_upload_then_download_round_trips(server: Server, work: str):
    source = os.path.join(work, "payload.bin")
    data = os.urandom(3 * 1024 * 1024 + 12345)  # not a multiple of the 64 KiB chunk
    with open(source, "wb") as f:
        f.write(data)
    out = run_example("upload.py", source, "--server", server.address)
    file_id = re.search(r"^file_id (\S+)$", out, re.M).group(1)
    check(f"bytes {len(data)}" in out, out)
    check("verified=True" in out, out)
    target = os.path.join(work, "copy.bin")
    run_example("download.py", file_id, "--out", target, "--server", server.address)
    with open(target, "rb") as f:
        copy = f.read()
    check(hashlib.sha256(copy).hexdigest() == hashlib.sha256(data).hexdigest(), "downloaded bytes differ")
    check(not os.path.exists(target + ".part"), "partial file left behind")


def test_chat_between_python_and_rust(server: Server, binary: str):
    room = f"interop-{uuid.uuid4().hex[:8]}"
    rust = subprocess.Popen(
        [binary, "chat", "--server", f"http://{server.address}", "--room", room, "--user", "rust"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    rust.stdin.write("hello from rust\n")
    rust.stdin.close()  # a pipe: the CLI sends what it read, then keeps listening until Ctrl-C
    rust.stdin = None  # closed already; communicate() must not flush it
    out = run_example(
        "chat.py", "--server", server.address, "--room", room, "--user", "python",
        "--send", "hello from python", "--until", "rust: hello from rust", "--timeout", "30",
    )
    check("rust: hello from rust" in out, f"python did not receive rust's message:\n{out}")
    # Give the Rust client a moment to print what it received, then Ctrl-C it.
    deadline = time.monotonic() + 10
    with grpc.insecure_channel(server.address) as channel:
        stub = rpc.StreamingServiceStub(channel)
        while time.monotonic() < deadline:
            history = stub.GetChatHistory(pb.GetChatHistoryRequest(room_id=room))
            if any(m.content == "User python left the chat" for m in history.messages):
                break
            time.sleep(0.2)
    time.sleep(0.5)
    rust.send_signal(signal.SIGINT)
    rust_out, rust_err = rust.communicate(timeout=30)
    check("python: hello from python" in rust_out, f"rust did not receive python's message:\n{rust_out}\n{rust_err}")


def test_metrics_with_rejections(server: Server):
    name = f"interop_points_{uuid.uuid4().hex[:8]}"
    out = run_example("metrics.py", "--server", server.address, "--name", name, "--label", "host=a", "--count", "1000", "--bad", "2")
    check("received 1002 stored 1000 rejected 2" in out, out)
    check(len(re.findall(r"rejected #(1000|1001):", out)) == 2, out)
    check(re.search(r"count=1000 min=0 max=999 sum=499500 last=999", out) is not None, out)
    counts = [int(c) for c in re.findall(r"^bucket \S+ count=(\d+)", out, re.M)]
    check(sum(counts) == 1000, f"buckets hold {counts}")


def test_live_results_in_order_with_errors(server: Server):
    out = run_example("live.py", "--server", server.address, "--key", "k", "--values", "1,2,3,4,100,nan,5")
    lines = out.splitlines()
    check([line.split()[0] for line in lines] == ["1", "2", "3", "4", "5", "6", "7"], out)
    check("count=1 mean=1.0000" in lines[0], lines[0])
    check("count=5 mean=22.0000" in lines[4] and lines[4].endswith("ANOMALY"), lines[4])
    check(" error " in lines[5], lines[5])
    check("count=6 " in lines[6], lines[6])  # the bad input is not in the window


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
            ("tail resumes without gaps", lambda: test_tail_resumes_without_gaps(server)),
            ("upload then download round-trips", lambda: test_upload_then_download_round_trips(server, work)),
            ("chat between python and rust", lambda: test_chat_between_python_and_rust(server, binary)),
            ("metrics with rejections", lambda: test_metrics_with_rejections(server)),
            ("live results in order with errors", lambda: test_live_results_in_order_with_errors(server)),
        ]
        failed = 0
        try:
            for name, test in tests:
                if args.k and args.k not in name:
                    continue
                started = time.monotonic()
                try:
                    test()
                    print(f"ok      {name} ({time.monotonic() - started:.1f}s)", flush=True)
                except Exception as err:  # report every failure, then fail the run
                    failed += 1
                    print(f"FAILED  {name}: {err}", flush=True)
        finally:
            server.stop()
            if failed:
                with open(os.path.join(work, "server.log"), errors="replace") as log:
                    print("---- server log (tail) ----\n" + "".join(log.readlines()[-40:]))
    print(f"{len(tests) - failed if not args.k else 'selected'} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
