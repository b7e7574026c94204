#!/usr/bin/env python3
"""Many unary gRPC calls at once with grpcio (Debian's python3-grpcio), over TLS to the
gateway, on one client connection, against Tests/tools/grpc_server.py's Hold behind it.

Usage: grpc_burst.py PORT CA_FILE CALLS HOLD_UNTIL [AUTHORITY]
Starts CALLS calls of /test.Echo/Hold together (each asks the server to wait until
HOLD_UNTIL calls have started), waits for them all, then asks /test.Echo/Stats (with
AUTHORITY as the TLS name and :authority, to reach another route). Prints
one JSON line: {"codes": {status name: count}, "stats": what the server saw}.
"""
import json
import sys

import grpc


def main():
    port, ca_file, calls, hold_until = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    authority = sys.argv[5] if len(sys.argv) > 5 else "localhost"
    with open(ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    codes = {}
    options = [("grpc.default_authority", authority), ("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"localhost:{port}", credentials, options=options) as channel:
        hold = channel.unary_unary("/test.Echo/Hold")
        pending = [hold.future(hold_until.encode(), timeout=60) for _ in range(calls)]
        for call in pending:
            try:
                call.result()
                code = "OK"
            except grpc.RpcError as error:
                code = f"{error.code().name}: {error.details()}"
            codes[code] = codes.get(code, 0) + 1
        stats = json.loads(channel.unary_unary("/test.Echo/Stats")(b"", timeout=30))
    print(json.dumps({"codes": codes, "stats": stats}), flush=True)


if __name__ == "__main__":
    main()
