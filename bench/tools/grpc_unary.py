#!/usr/bin/env python3
"""Checks that a proxy carries the benchmarks' unary gRPC call (bench/common.py GRPC_PATH) as
gRPC: a real grpcio client calls through the proxy's TLS port and must get the reply message
and status OK, which grpcio gives only when the grpc-status trailer arrived. The benchmarks
run it on every proxy before measuring, so a proxy that lost the trailers, or answered the
call with anything else, is caught instead of measured.
Usage: python3 bench/tools/grpc_unary.py PORT CA_FILE [CALLS]   (needs grpcio: python3-grpcio)
"""
import os, sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import GRPC_PATH, GRPC_REPLY, GRPC_REQUEST  # noqa: E402


def main():
    port, ca = sys.argv[1], sys.argv[2]
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    credentials = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        call = channel.unary_unary(GRPC_PATH)
        for _ in range(calls):
            reply, outcome = call.with_call(GRPC_REQUEST[5:], timeout=10)
            if outcome.code() != grpc.StatusCode.OK or reply != GRPC_REPLY[5:]:
                sys.exit(f"grpc_unary: port {port}: {outcome.code()} {reply!r}")
    print(f"grpc_unary: port {port}: {calls} calls OK")


if __name__ == "__main__":
    main()
