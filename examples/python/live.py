#!/usr/bin/env python3
"""Bidirectional streaming with per-item errors: sliding-window statistics, one result per input.

Values go out through a generator while results are printed as they come back, in input order.
A bad input (NaN, infinity, an empty key) gets an error result and the stream goes on.

    echo "1 2 3 100 nan 4" | tr ' ' '\n' | python live.py --key sensor-1
    python live.py --key sensor-1 --values 1,2,3,100,nan,4
"""
import argparse
import sys

import grpc

from streaming.v1 import streaming_pb2 as pb
from streaming.v1 import streaming_pb2_grpc as rpc


def inputs(key: str, values):
    for i, value in enumerate(values):
        yield pb.DataInput(id=str(i + 1), key=key, value=value)


def parse(text: str) -> float:
    return float(text)  # accepts "nan" and "inf", which the server answers with an error result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--key", required=True)
    parser.add_argument("--values", help="comma-separated values instead of stdin lines")
    args = parser.parse_args()
    if args.values is not None:
        values = [parse(v) for v in args.values.split(",") if v.strip()]
    else:
        values = (parse(line) for line in sys.stdin if line.strip())

    with grpc.insecure_channel(args.server) as channel:
        stub = rpc.StreamingServiceStub(channel)
        try:
            for result in stub.ProcessLiveData(inputs(args.key, values)):
                if result.WhichOneof("outcome") == "error":
                    print(f"{result.input_id} {result.key} error {result.error.code}: {result.error.message}", flush=True)
                    continue
                s = result.stats
                flag = " ANOMALY" if s.anomaly else ""
                print(
                    f"{result.input_id} {result.key} count={s.count} mean={s.mean:.4f} min={s.min:g} max={s.max:g} "
                    f"stddev={s.stddev:.4f} z={s.z_score:.4f}{flag}",
                    flush=True,
                )
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
