#!/usr/bin/env python3
"""Client streaming with per-item errors: push metric points, then query them.

CollectMetrics takes a stream of points and answers once with counts, a summary per series and
the points it rejected (by index, with the reason): one bad point does not fail the stream.
QueryMetrics then returns count/min/max/sum per time bucket.

    python metrics.py --name cpu_usage --label host=web1 --count 1000
    python metrics.py --name cpu_usage --label host=web1 --count 10 --bad 2   # plus 2 invalid points
"""
import argparse
import math
import sys
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streaming.v1 import streaming_pb2 as pb
from streaming.v1 import streaming_pb2_grpc as rpc


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def points(name: str, labels: dict, count: int, bad: int, start: float):
    for i in range(count):
        # A smooth, known series: value i at one point per millisecond.
        yield pb.MetricData(name=name, value=float(i), labels=labels, timestamp=timestamp(start + i / 1000))
    for i in range(bad):
        # Not a Prometheus name: rejected and reported, the stream goes on.
        yield pb.MetricData(name=f"{i}-not a metric", value=1.0, labels=labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--name", required=True)
    parser.add_argument("--label", action="append", default=[], help="k=v (repeatable)")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--bad", type=int, default=0, help="also send this many invalid points")
    parser.add_argument("--step", type=int, default=60, help="query bucket width in seconds")
    args = parser.parse_args()
    labels = dict(kv.split("=", 1) for kv in args.label)

    start = math.floor(time.time()) - 1
    with grpc.insecure_channel(args.server) as channel:
        stub = rpc.StreamingServiceStub(channel)
        try:
            result = stub.CollectMetrics(points(args.name, labels, args.count, args.bad, start))
            print(f"received {result.metrics_received} stored {result.metrics_stored} rejected {result.metrics_rejected}")
            for error in result.errors:
                print(f"  rejected #{error.index}: {error.message}")
            for s in result.summaries:
                print(f"  series {s.name}{dict(s.labels)} count={s.count} min={s.min:g} max={s.max:g} sum={s.sum:g} last={s.last:g}")
            answer = stub.QueryMetrics(
                pb.QueryMetricsRequest(
                    name=args.name,
                    labels=labels,
                    start=timestamp(start),
                    end=timestamp(time.time() + 1),
                    step_seconds=args.step,
                )
            )
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    for series in answer.series:
        for bucket in series.buckets:
            print(f"bucket {bucket.start.ToJsonString()} count={bucket.count} min={bucket.min:g} max={bucket.max:g} sum={bucket.sum:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
