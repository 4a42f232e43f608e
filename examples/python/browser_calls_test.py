#!/usr/bin/env python3
"""The interop test of release 2's browser calls, from Python stubs of the current proto/.

    ./gen.sh ../../proto /tmp/stubs-current
    python browser_calls_test.py --bin ../../target/release/streamhub --stubs /tmp/stubs-current

interop_test.py runs on stubs of the frozen contract, which predates these calls; this test runs
on stubs generated from proto/ as it is now, so the new RPCs (JoinRoom, SendChatMessage,
OpenDocument, SubmitCollaborationEvent, ListStreams, ListFiles, ListMetricSeries) are exercised by
a client that is not streamhub's own. It starts the server on a free port with its own temporary
database and asserts exact outcomes: sequences, ids, contents, status codes. Every wait has a
deadline; nothing sleeps and hopes.
"""
import argparse
import hashlib
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc

pb = None
rpc = None

DEADLINE_SECS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """streamhub as a child process with its own data directory."""

    def __init__(self, binary: str, data_dir: str):
        self.binary, self.data_dir = binary, data_dir
        self.address = f"127.0.0.1:{free_port()}"

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
        deadline = time.monotonic() + DEADLINE_SECS
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


def expect_code(call, code, what: str):
    """Runs `call` and asserts it fails with `code`."""
    try:
        call()
    except grpc.RpcError as err:
        check(err.code() == code, f"{what}: got {err.code()} ({err.details()}), want {code}")
        return
    raise AssertionError(f"{what}: succeeded, want {code}")


class Reader:
    """Reads a server stream on its own thread, so the test can wait for items with a deadline."""

    def __init__(self, call):
        self.call = call
        self.items = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for item in self.call:
                self.items.put(item)
        except grpc.RpcError as err:
            self.items.put(err)
        self.items.put(None)

    def next(self, what: str):
        try:
            item = self.items.get(timeout=DEADLINE_SECS)
        except queue.Empty:
            raise AssertionError(f"nothing within {DEADLINE_SECS}s while waiting for {what}")
        if item is None or isinstance(item, grpc.RpcError):
            raise AssertionError(f"stream ended ({item}) while waiting for {what}")
        return item

    def next_where(self, what: str, predicate):
        """The next item that matches, skipping others (typing and presence interleave)."""
        deadline = time.monotonic() + DEADLINE_SECS
        while time.monotonic() < deadline:
            item = self.next(what)
            if predicate(item):
                return item
        raise AssertionError(f"no {what} within {DEADLINE_SECS}s")

    def cancel(self):
        self.call.cancel()
        self.thread.join(timeout=DEADLINE_SECS)


def poll_until(what: str, probe):
    deadline = time.monotonic() + DEADLINE_SECS
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {DEADLINE_SECS}s")


def test_join_room_and_send_chat_message(stub):
    room = f"py-room-{uuid.uuid4().hex[:8]}"
    member = Reader(stub.JoinRoom(pb.JoinRoomRequest(room_id=room, user_id="alice")))
    joined = member.next("alice's join notice")
    check(joined.type == pb.CHAT_MESSAGE_TYPE_SYSTEM and joined.sequence == 1, f"join notice: {joined}")
    check(joined.content == "User alice joined the chat", f"join notice content: {joined.content!r}")

    sent = stub.SendChatMessage(pb.ChatMessage(
        id="py-m1", room_id=room, user_id="bob", content="hello from python", type=pb.CHAT_MESSAGE_TYPE_TEXT))
    check((sent.id, sent.sequence, sent.user_id, sent.room_id) == ("py-m1", 2, "bob", room), f"stored: {sent}")
    check(sent.HasField("timestamp"), "the stored message has no timestamp")
    got = member.next("bob's message")
    check((got.id, got.sequence, got.content) == ("py-m1", 2, "hello from python"), f"delivered: {got}")

    # Idempotent by id: the same message again is the stored one, not a second copy.
    again = stub.SendChatMessage(pb.ChatMessage(
        id="py-m1", room_id=room, user_id="bob", content="hello from python", type=pb.CHAT_MESSAGE_TYPE_TEXT))
    check(again.sequence == 2, f"re-sent message stored again: {again}")
    expect_code(lambda: stub.SendChatMessage(pb.ChatMessage(
        id="py-m1", room_id=room, user_id="bob", content="other", type=pb.CHAT_MESSAGE_TYPE_TEXT)),
        grpc.StatusCode.ALREADY_EXISTS, "same id, other content")

    # Typing is relayed, never stored.
    typing = stub.SendChatMessage(pb.ChatMessage(
        room_id=room, user_id="bob", content="typing…", type=pb.CHAT_MESSAGE_TYPE_TYPING))
    check(typing.type == pb.CHAT_MESSAGE_TYPE_TYPING and typing.sequence == 0, f"typing answer: {typing}")
    relayed = member.next_where("bob's typing", lambda m: m.type == pb.CHAT_MESSAGE_TYPE_TYPING)
    check(relayed.user_id == "bob" and relayed.sequence == 0, f"relayed typing: {relayed}")

    for bad, code in [
        (pb.ChatMessage(room_id="", user_id="bob", content="x", type=pb.CHAT_MESSAGE_TYPE_TEXT), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ChatMessage(room_id=room, user_id="", content="x", type=pb.CHAT_MESSAGE_TYPE_TEXT), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ChatMessage(room_id=room, user_id="bob", content="x", type=pb.CHAT_MESSAGE_TYPE_SYSTEM), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ChatMessage(room_id=room, user_id="bob", content="", type=pb.CHAT_MESSAGE_TYPE_TEXT), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        expect_code(lambda: stub.SendChatMessage(bad), code, f"bad message {bad}")

    # The stream's end is the member's leave: its notice follows bob's message, and nothing
    # else was stored (no notice for SendChatMessage's sender, no typing).
    member.cancel()

    def history():
        messages = stub.GetChatHistory(pb.GetChatHistoryRequest(room_id=room)).messages
        return messages if len(messages) >= 3 else None

    messages = poll_until("alice's leave notice", history)
    check([(m.sequence, m.type) for m in messages] == [
        (1, pb.CHAT_MESSAGE_TYPE_SYSTEM), (2, pb.CHAT_MESSAGE_TYPE_TEXT), (3, pb.CHAT_MESSAGE_TYPE_SYSTEM)],
        f"history: {messages}")
    check(messages[2].content == "User alice left the chat", f"leave notice: {messages[2].content!r}")


def test_open_document_and_submit(stub):
    document = f"py-doc-{uuid.uuid4().hex[:8]}"
    peer = Reader(stub.OpenDocument(pb.OpenDocumentRequest(document_id=document, user_id="carol")))
    stored = stub.SubmitCollaborationEvent(pb.CollaborationEvent(
        id="py-op1", document_id=document, user_id="dave", type=pb.COLLABORATION_EVENT_TYPE_OPERATION,
        payload=b"insert 0 hi", base_sequence=0))
    check((stored.id, stored.sequence, stored.type) == ("py-op1", 1, pb.COLLABORATION_EVENT_TYPE_OPERATION), f"stored op: {stored}")
    got = peer.next_where("dave's operation", lambda e: e.type == pb.COLLABORATION_EVENT_TYPE_OPERATION)
    check((got.id, got.sequence, got.payload) == ("py-op1", 1, b"insert 0 hi"), f"delivered op: {got}")

    rejected = stub.SubmitCollaborationEvent(pb.CollaborationEvent(
        id="py-op2", document_id=document, user_id="dave", type=pb.COLLABORATION_EVENT_TYPE_OPERATION,
        payload=b"stale", base_sequence=0))
    check(rejected.type == pb.COLLABORATION_EVENT_TYPE_REJECTED and rejected.sequence == 1, f"stale op: {rejected}")

    cursor = stub.SubmitCollaborationEvent(pb.CollaborationEvent(
        document_id=document, user_id="dave", type=pb.COLLABORATION_EVENT_TYPE_CURSOR, payload=b"line 3"))
    check(cursor.type == pb.COLLABORATION_EVENT_TYPE_CURSOR and cursor.sequence == 0, f"cursor answer: {cursor}")
    relayed = peer.next_where("dave's cursor", lambda e: e.type == pb.COLLABORATION_EVENT_TYPE_CURSOR)
    check(relayed.user_id == "dave" and relayed.payload == b"line 3", f"relayed cursor: {relayed}")

    for bad in [
        pb.CollaborationEvent(document_id="", user_id="dave", type=pb.COLLABORATION_EVENT_TYPE_CURSOR),
        pb.CollaborationEvent(document_id=document, user_id="dave", type=pb.COLLABORATION_EVENT_TYPE_JOIN),
        pb.CollaborationEvent(document_id=document, user_id="dave", type=pb.COLLABORATION_EVENT_TYPE_REJECTED),
        pb.CollaborationEvent(document_id=document, user_id="dave", type=pb.COLLABORATION_EVENT_TYPE_UNSPECIFIED),
    ]:
        expect_code(lambda: stub.SubmitCollaborationEvent(bad), grpc.StatusCode.INVALID_ARGUMENT, f"bad event {bad}")
    peer.cancel()


def test_list_streams(stub):
    prefix = f"py-list-{uuid.uuid4().hex[:6]}-"
    users = [f"{prefix}{i:02}" for i in range(5)]
    for i, user in enumerate(users):
        for n in range(i + 1):
            stub.PublishUserEvent(pb.PublishUserEventRequest(user_id=user, type=pb.USER_EVENT_TYPE_LOGIN, id=f"{user}-{n}"))
    first = stub.ListStreams(pb.ListStreamsRequest(kind=pb.STREAM_KIND_EVENTS, key_prefix=prefix, limit=3))
    check([(s.key, s.head) for s in first.streams] == [(users[i], i + 1) for i in range(3)], f"page 1: {first}")
    check(first.next_page_token != "", "page 1 has no next page token")
    second = stub.ListStreams(pb.ListStreamsRequest(
        kind=pb.STREAM_KIND_EVENTS, key_prefix=prefix, limit=3, page_token=first.next_page_token))
    check([(s.key, s.head) for s in second.streams] == [(users[i], i + 1) for i in range(3, 5)], f"page 2: {second}")
    check(second.next_page_token == "", f"last page has a token: {second.next_page_token!r}")
    check(all(s.HasField("last_timestamp") for s in first.streams), "a stream without its last timestamp")
    expect_code(lambda: stub.ListStreams(pb.ListStreamsRequest(kind=pb.STREAM_KIND_UNSPECIFIED)),
                grpc.StatusCode.INVALID_ARGUMENT, "UNSPECIFIED kind")


def test_list_files(stub):
    data = os.urandom(200_000)

    def chunks():
        yield pb.FileChunk(metadata=pb.FileMetadata(filename="py-list.bin", total_size=len(data),
                                                   content_type="application/octet-stream"))
        for start in range(0, len(data), 65536):
            yield pb.FileChunk(chunk=data[start:start + 65536], offset=start)

    uploaded = stub.UploadFile(chunks())
    listed = stub.ListFiles(pb.ListFilesRequest(limit=1000)).files
    mine = [f for f in listed if f.file_id == uploaded.file_id]
    check(len(mine) == 1, f"uploaded file not listed once: {[f.file_id for f in listed]}")
    check(mine[0].checksum == hashlib.sha256(data).hexdigest(), f"checksum {mine[0].checksum}")
    check((mine[0].filename, mine[0].total_size) == ("py-list.bin", len(data)), f"metadata {mine[0]}")
    check(listed[0].file_id == uploaded.file_id, "the newest upload is not listed first")


def test_list_metric_series(stub):
    name = f"py_series_{uuid.uuid4().hex[:6]}"
    now = time.time()

    def points():
        for host in ["a", "b"]:
            for i in range(3):
                point = pb.MetricData(name=name, value=float(i), labels={"host": host})
                point.timestamp.FromSeconds(int(now) - i)
                yield point

    result = stub.CollectMetrics(points())
    check((result.metrics_stored, result.metrics_rejected) == (6, 0), f"collected {result}")
    series = stub.ListMetricSeries(pb.ListMetricSeriesRequest(name_prefix=name)).series
    check([(s.name, dict(s.labels)) for s in series] == [(name, {"host": "a"}), (name, {"host": "b"})], f"series {series}")
    check(all(len(s.buckets) == 0 for s in series), "series listed with buckets")


def main() -> int:
    global pb, rpc
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the streamhub binary")
    parser.add_argument("--stubs", required=True, help="the directory gen.sh wrote proto/'s stubs to")
    parser.add_argument("-k", help="run only the tests whose name contains this")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.stubs))
    from streaming.v1 import streaming_pb2, streaming_pb2_grpc  # noqa: E402
    pb, rpc = streaming_pb2, streaming_pb2_grpc

    with tempfile.TemporaryDirectory() as work:
        server = Server(os.path.abspath(args.bin), work)
        server.start()
        channel = grpc.insecure_channel(server.address)
        stub = rpc.StreamingServiceStub(channel)
        tests = [
            ("join room and send chat message", lambda: test_join_room_and_send_chat_message(stub)),
            ("open document and submit", lambda: test_open_document_and_submit(stub)),
            ("list streams", lambda: test_list_streams(stub)),
            ("list files", lambda: test_list_files(stub)),
            ("list metric series", lambda: test_list_metric_series(stub)),
        ]
        failed = ran = 0
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
                    print(f"FAILED  {name}: {err}", flush=True)
        finally:
            channel.close()
            server.stop()
            if failed:
                with open(os.path.join(work, "server.log"), errors="replace") as log:
                    print("---- server log (tail) ----\n" + "".join(log.readlines()[-40:]))
    print(f"{ran - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
