#!/usr/bin/env python3
"""Server streaming: tail a user's events from a point in time, and resume after a drop.

The first call asks for everything since --since seconds ago (StreamUserEventsRequest.start_time).
When the connection drops (server restart, network), it reconnects with after_sequence set to the
last sequence it printed, so no event is missed and none is printed twice.

    python tail_events.py --user alice --since 3600
    python tail_events.py --user alice --after 41 --count 10   # stop after 10 events
"""
import argparse
import sys
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streaming.v1 import streaming_pb2 as pb
from streaming.v1 import streaming_pb2_grpc as rpc

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of streamhub")
    parser.add_argument("--user", required=True)
    parser.add_argument("--since", type=float, help="start this many seconds ago (start_time)")
    parser.add_argument("--after", type=int, default=0, help="start after this sequence")
    parser.add_argument("--count", type=int, default=0, help="exit after this many events (0: never)")
    parser.add_argument("--retry-for", type=float, default=60.0, help="give up after this many seconds without a connection")
    args = parser.parse_args()

    last_sequence = args.after
    printed = 0
    first_call = True
    down_since = None
    backoff = 0.1
    while True:
        request = pb.StreamUserEventsRequest(user_id=args.user)
        if first_call and args.since is not None and last_sequence == 0:
            start = Timestamp()
            start.FromNanoseconds(int((time.time() - args.since) * 1e9))
            request.start_time.CopyFrom(start)
        else:
            request.after_sequence = last_sequence
        try:
            with grpc.insecure_channel(args.server) as channel:
                stub = rpc.StreamingServiceStub(channel)
                for event in stub.StreamUserEvents(request, wait_for_ready=True, timeout=None):
                    down_since, backoff = None, 0.1
                    if event.sequence <= last_sequence:
                        continue  # never happens with after_sequence; a guard, not a filter
                    last_sequence = event.sequence
                    kind = pb.UserEventType.Name(event.type)
                    print(f"{event.sequence} {kind} {event.id} {event.timestamp.ToJsonString()}", flush=True)
                    printed += 1
                    if args.count and printed >= args.count:
                        return 0
            return 0  # the server ended the stream (history_only is not used here)
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE:
                print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
                return 1
            first_call = False
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > args.retry_for:
                print(f"error: no connection for {args.retry_for}s", file=sys.stderr)
                return 1
            print(f"connection lost ({err.code().name}); resuming after {last_sequence}", file=sys.stderr, flush=True)
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


if __name__ == "__main__":
    sys.exit(main())
