#!/usr/bin/env python3
"""A bidirectional gRPC call whose client stops reading: back-pressure end to end.

Usage: grpc_backpressure.py PORT CA_FILE MESSAGES GO_FILE

Sends MESSAGES messages of 64 KiB on /test.Echo/Bidi (Tests/tools/grpc_server.py echoes
each) over TLS to the gateway, and reads none of the echoes. Each layer's flow control
should stop the next: the client stops reading, so the gateway stops reading the
server's replies, the server stops reading requests, the gateway stops reading the
client's, and the client's sending stalls. Once sending has made no progress for a
second, prints "stalled SENT" (messages handed to grpc so far) and waits (bounded) for
GO_FILE, which the test creates once it has measured the gateway. Then reads every
echo and prints one JSON line: the messages sent and echoed, and whether the echoes
were the messages sent, in order.
"""
import hashlib
import json
import os
import sys
import threading

import grpc

SIZE = 64 * 1024


def main():
    port, ca_file, total, go_file = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with open(ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    sent = [0]
    tick = threading.Event()

    def requests():
        for i in range(total):
            yield (b"%08d" % i) * (SIZE // 8)
            sent[0] += 1

    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        replies = channel.stream_stream("/test.Echo/Bidi")(requests(), timeout=120)
        # No progress for a second (10 looks 100 ms apart), or everything sent: stalled.
        last, quiet = -1, 0
        while quiet < 10 and sent[0] < total:
            tick.wait(0.1)
            quiet = quiet + 1 if sent[0] == last else 0
            last = sent[0]
        print(f"stalled {sent[0]}", flush=True)
        for _ in range(600):
            if os.path.exists(go_file):
                break
            tick.wait(0.1)
        echoed, same = 0, True
        expected = hashlib.sha256()
        got = hashlib.sha256()
        for i, reply in enumerate(replies):
            expected.update((b"%08d" % i) * (SIZE // 8))
            got.update(reply)
            echoed += 1
        same = expected.digest() == got.digest()
    print(json.dumps({"sent": sent[0], "echoed": echoed, "same": same}), flush=True)


if __name__ == "__main__":
    main()
