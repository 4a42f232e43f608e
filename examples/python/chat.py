#!/usr/bin/env python3
"""Bidirectional streaming: the guide's chat client, done so nothing is lost.

A generator feeds the outgoing messages from a queue while the main thread prints the responses.
The first message joins the room before anything else is sent, and carries the last sequence
this client saw, so after a reconnect the server replays exactly what was missed. Every message
has a client id, so re-sending one after a reconnect is stored once.

    python chat.py --room lobby --user alice            # type lines; Ctrl-D or /quit leaves
    python chat.py --room lobby --user alice --send hi --until "bob: hello" --timeout 20
"""
import argparse
import queue
import sys
import threading
import time
import uuid

import grpc

from streaming.v1 import streaming_pb2 as pb
from streaming.v1 import streaming_pb2_grpc as rpc

QUIT = object()


def outgoing(room: str, user: str, last_seen: int, outbox: "queue.Queue"):
    """The request stream: the join first, then whatever lands in the outbox."""
    yield pb.ChatMessage(room_id=room, user_id=user, sequence=last_seen)
    while True:
        item = outbox.get()
        if item is QUIT:
            return  # half-close: the server drains the room through our leave notice
        yield item


def text(room: str, user: str, content: str) -> pb.ChatMessage:
    return pb.ChatMessage(
        id=str(uuid.uuid4()), room_id=room, user_id=user, content=content, type=pb.CHAT_MESSAGE_TYPE_TEXT
    )


def show(message: pb.ChatMessage) -> str:
    kind = message.type
    if kind == pb.CHAT_MESSAGE_TYPE_SYSTEM:
        return f"[{message.sequence}] -- {message.content}"
    if kind == pb.CHAT_MESSAGE_TYPE_TYPING:
        return f"... {message.user_id} is typing" if message.content else f"... {message.user_id} stopped typing"
    return f"[{message.sequence}] {message.user_id}: {message.content}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--room", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--after", type=int, default=0, help="last sequence already seen (0: the latest 50)")
    parser.add_argument("--send", action="append", default=[], help="send this line (repeatable) instead of reading stdin")
    parser.add_argument("--until", help='leave once a line "user: text" with this content has been received')
    parser.add_argument("--timeout", type=float, default=0, help="give up (exit 1) after this many seconds")
    args = parser.parse_args()

    outbox: "queue.Queue" = queue.Queue()
    for line in args.send:
        outbox.put(text(args.room, args.user, line))
    if args.send and not args.until:
        outbox.put(QUIT)  # send, then leave: the server still delivers our own messages first
    if not args.send and not args.until:
        def read_stdin():
            for line in sys.stdin:
                line = line.rstrip("\n")
                if line == "/quit":
                    break
                if line:
                    outbox.put(text(args.room, args.user, line))
            outbox.put(QUIT)

        threading.Thread(target=read_stdin, daemon=True).start()

    if args.timeout:
        timer = threading.Timer(args.timeout, lambda: outbox.put(QUIT))
        timer.daemon = True
        timer.start()
    deadline = time.monotonic() + args.timeout if args.timeout else None

    with grpc.insecure_channel(args.server) as channel:
        stub = rpc.StreamingServiceStub(channel)
        responses = stub.Chat(outgoing(args.room, args.user, args.after, outbox))
        found = args.until is None
        try:
            for message in responses:
                print(show(message), flush=True)
                if not found and message.type == pb.CHAT_MESSAGE_TYPE_TEXT and f"{message.user_id}: {message.content}" == args.until:
                    found = True
                    outbox.put(QUIT)
                if deadline and time.monotonic() > deadline:
                    break
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        finally:
            outbox.put(QUIT)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
