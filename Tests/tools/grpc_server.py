#!/usr/bin/env python3
"""A gRPC server (Debian's python3-grpcio) for the gateway's HTTP/2 upstream tests: h2c on
127.0.0.1:PORT, or h2 over TLS with CERT and KEY. Messages are raw bytes (no protobuf).

Usage: grpc_server.py PORT [CERT KEY] [--not-serving] [--max-streams N] [--allow-idle-pings]

  --max-streams N          SETTINGS_MAX_CONCURRENT_STREAMS: N per connection
  --allow-idle-pings       PINGs on a connection without calls are fine (by default
                           grpc answers the third with GOAWAY ENHANCE_YOUR_CALM)

  /test.Echo/Unary         the request back; x-test metadata echoed in the initial
                           metadata and as trailing metadata x-trailer
  /test.Echo/Fail          NOT_FOUND "nothing here", trailing metadata x-why: test
  /test.Echo/ServerStream  as many 100-byte messages as the request's decimal number
  /test.Echo/ClientStream  the number of bytes received, in decimal
  /test.Echo/Bidi          each message back as it comes
  /test.Echo/Die           ten messages, then the process exits (an upstream killed
                           mid-stream)
  /test.Echo/Hold          waits until as many calls as the request's decimal number
                           have started (or 5 s), counting the calls in flight on each
                           connection (by peer address), then answers "ok"
  /test.Echo/Stats         {"connections": peers seen by Hold, "max_per_connection":
                           the most Hold calls in flight at once on one connection}
  /grpc.health.v1.Health/Check   SERVING (NOT_SERVING with --not-serving), as the
                           standard health service answers (a HealthCheckResponse, field 1)
"""
import json
import os
import sys
import threading
from concurrent import futures

import grpc


def unary(request, context):
    echoed = dict(context.invocation_metadata()).get("x-test", "")
    context.send_initial_metadata([("x-test", echoed)])
    context.set_trailing_metadata([("x-trailer", "end-" + echoed)])
    return request


def fail(request, context):
    context.set_trailing_metadata([("x-why", "test")])
    context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")


def server_stream(request, context):
    for i in range(int(request.decode())):
        yield b"%09d" % i + b"." * 91


def client_stream(requests, context):
    return str(sum(len(r) for r in requests)).encode()


def bidi(requests, context):
    for r in requests:
        yield r


def die(request, context):
    for i in range(10):
        yield b"%09d" % i
    # Resumed once the tenth message was handed to the transport: the gateway sees the
    # connection end in the middle of the response.
    os._exit(3)


held = threading.Condition()
started = [0]
in_flight = {}
most = {}


def hold(request, context):
    target = int(request.decode() or "1")
    peer = context.peer()
    with held:
        started[0] += 1
        in_flight[peer] = in_flight.get(peer, 0) + 1
        most[peer] = max(most.get(peer, 0), in_flight[peer])
        held.notify_all()
        held.wait_for(lambda: started[0] >= target, timeout=5)
        in_flight[peer] -= 1
    return b"ok"


def stats(request, context):
    with held:
        return json.dumps({"connections": len(most), "max_per_connection": max(most.values(), default=0)}).encode()


def main():
    not_serving = "--not-serving" in sys.argv
    # A gRPC server counts PINGs on a connection without calls as abuse, and answers the
    # third with GOAWAY ENHANCE_YOUR_CALM ("too_many_pings"), unless told to allow them.
    allow_idle_pings = "--allow-idle-pings" in sys.argv
    args = [a for a in sys.argv if a not in ("--not-serving", "--allow-idle-pings")]
    max_streams = None
    if "--max-streams" in args:
        at = args.index("--max-streams")
        max_streams = int(args[at + 1])
        del args[at:at + 2]
    port = int(args[1])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Die": grpc.unary_stream_rpc_method_handler(die),
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
        "Stats": grpc.unary_unary_rpc_method_handler(stats),
    }
    limits = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
    if max_streams is not None:
        limits.append(("grpc.max_concurrent_streams", max_streams))
    if allow_idle_pings:
        limits += [("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.min_ping_interval_without_data_ms", 10),
                   ("grpc.http2.max_ping_strikes", 0)]
    # A worker per call in flight: Hold keeps its worker while it waits for the others.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=limits)
    health = {"Check": grpc.unary_unary_rpc_method_handler(lambda request, context: b"\x08\x02" if not_serving else b"\x08\x01")}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers),
                                     grpc.method_handlers_generic_handler("grpc.health.v1.Health", health)])
    if len(args) > 3:
        with open(args[2], "rb") as c, open(args[3], "rb") as k:
            credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
