#!/usr/bin/env python3
"""gRPC calls of every kind with grpcio (Debian's python3-grpcio), over TLS to the gateway,
against Tests/tools/grpc_server.py behind it.

Usage: grpc_calls.py PORT CA_FILE
Prints one JSON line: per call, what it got (status, metadata, what the replies add up
to), for the test to compare with what the server sent.
"""
import hashlib
import json
import sys

import grpc


def outcome(error):
    return {"code": error.code().name, "details": error.details(),
            "trailing": {k: v for k, v in (error.trailing_metadata() or [])}}


def main():
    port, ca_file = int(sys.argv[1]), sys.argv[2]
    with open(ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    limits = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
    result = {}
    with grpc.secure_channel(f"localhost:{port}", credentials, options=limits) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        reply, call = unary.with_call(b"hello", timeout=30, metadata=[("x-test", "grpc")])
        result["unary"] = {"reply": reply.decode(), "initial": dict(call.initial_metadata()),
                           "trailing": dict(call.trailing_metadata()), "code": call.code().name}

        big = bytes(range(256)) * (4 * 1024 * 1024 // 256)
        reply = unary(big, timeout=60)
        result["big"] = {"sent": hashlib.sha256(big).hexdigest(), "got": hashlib.sha256(reply).hexdigest()}

        try:
            channel.unary_unary("/test.Echo/Fail")(b"x", timeout=30)
            result["fail"] = {"code": "OK"}
        except grpc.RpcError as error:
            result["fail"] = outcome(error)

        count, ordered = 0, True
        for message in channel.unary_stream("/test.Echo/ServerStream")(b"10000", timeout=60):
            ordered = ordered and message[:9] == b"%09d" % count and len(message) == 100
            count += 1
        result["server_stream"] = {"messages": count, "ordered": ordered}

        chunk = b"c" * 1024
        reply = channel.stream_unary("/test.Echo/ClientStream")(iter([chunk] * 1000), timeout=60)
        result["client_stream"] = {"bytes": int(reply)}

        sent = [b"%06d" % i * 20 for i in range(1000)]
        echoed = list(channel.stream_stream("/test.Echo/Bidi")(iter(sent), timeout=60))
        result["bidi"] = {"messages": len(echoed), "same": echoed == sent}

        got = 0
        try:
            for _ in channel.unary_stream("/test.Echo/Die")(b"", timeout=30):
                got += 1
            result["die"] = {"code": "OK", "messages": got}
        except grpc.RpcError as error:
            result["die"] = dict(outcome(error), messages=got)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
