#!/usr/bin/env python3
"""One unary gRPC call with grpcio (Debian's python3-grpcio), over TLS to the gateway.

Usage: grpc_call.py PORT CA_FILE METHOD [TIMEOUT_SECONDS]
Prints one JSON line: the call's status code name and details, its initial and trailing
metadata, and the reply's length when it succeeded. The request is raw bytes (no
protobuf): the gateway forwards bytes and never reads a message.
"""
import json
import sys

import grpc


def main():
    port, ca_file, method = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
    with open(ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    result = {}
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            reply, outcome = call.with_call(b"\x0a\x05hello", timeout=timeout, metadata=[("x-test", "grpc")])
            result["reply_bytes"] = len(reply)
        except grpc.RpcError as error:
            outcome = error
        result["code"] = outcome.code().name
        result["details"] = outcome.details()
        result["initial"] = {k: v for k, v in (outcome.initial_metadata() or [])}
        result["trailing"] = {k: v for k, v in (outcome.trailing_metadata() or [])}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
