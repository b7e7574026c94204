#!/usr/bin/env python3
"""HTTP/2 load that counts what a draining server loses, for reload and takeover tests.

  h2_reload_client.py PORT CA SECONDS [CLIENTS] [STREAMS]

CLIENTS threads (default 4) each send batches of STREAMS GETs (default 10) on one
verified TLS connection (ALPN h2, server name localhost) for SECONDS, or until SIGINT. A GOAWAY is
followed as RFC 9113 §6.8 says: no new stream goes on that connection; the streams the
GOAWAY names as processed (up to its last-stream-id) must still be answered; the ones
above it were never processed, so they go again on a new connection ("refused", not
failed). A failure is anything else that ends a request without a 200: a reset stream,
another status, or a connection that closes before its processed streams are answered.
h2load cannot measure this: it never reconnects after GOAWAY and counts the requests it
queued and never sent as failed. Prints one JSON line."""
import json, signal, socket, ssl, struct, sys, threading, time

port, ca, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
clients = int(sys.argv[4]) if len(sys.argv) > 4 else 4
per_batch = int(sys.argv[5]) if len(sys.argv) > 5 else 10
deadline = time.time() + seconds


def stop(*_):
    # SIGINT: the test is done; streams in flight finish, no new batch starts, and the
    # totals are printed as at the deadline.
    global deadline
    deadline = time.time()


signal.signal(signal.SIGINT, stop)


def skip_table_size_updates(block):
    """A field block without the dynamic table size updates (RFC 7541 §6.3: 001xxxxx and a
    5-bit-prefix integer) that may start it: the gateway's first block on a connection
    has one."""
    while block[:1] and block[0] & 0xE0 == 0x20:
        i = 1
        if block[0] & 0x1F == 0x1F:
            while i < len(block) and block[i] & 0x80:
                i += 1
            i += 1
        block = block[i:]
    return block
lock = threading.Lock()
totals = {"ok": 0, "failed": 0, "refused": 0, "goaways": 0, "connections": 0, "errors": []}


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


REQUEST = b"\x82\x87\x84" + b"\x00" + bytes([10]) + b":authority" + bytes([9]) + b"localhost"  # GET https /


def record(key, n=1, error=None):
    with lock:
        totals[key] += n
        if error and len(totals["errors"]) < 20:
            totals["errors"].append(error)


class Connection:
    def __init__(self, ctx):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        if self.sock.selected_alpn_protocol() != "h2":
            raise ConnectionError("h2 not negotiated")
        self.buffer, self.next_stream, self.unacked = b"", 1, 0
        self.last_stream = None  # set by GOAWAY
        settings = frame(4, 0, 0, struct.pack(">HI", 4, 1 << 30))
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + frame(8, 0, 0, struct.pack(">I", (1 << 30) - 65535)))
        record("connections")

    def read_frame(self):
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    b, self.buffer = self.buffer, self.buffer[9 + length:]
                    return b[3], b[4], int.from_bytes(b[5:9], "big") & 0x7FFFFFFF, b[9:9 + length]
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed")
            self.buffer += data

    def batch(self, n):
        """Sends n GETs; returns how many must go again (refused by a GOAWAY). Records the rest."""
        streams = list(range(self.next_stream, self.next_stream + 2 * n, 2))
        self.next_stream += 2 * n
        self.sock.sendall(b"".join(frame(1, 0x5, s, REQUEST) for s in streams))
        pending, status = set(streams), {}
        while pending:
            if self.last_stream is not None:
                refused = {s for s in pending if s > self.last_stream}
                pending -= refused
                if refused:
                    record("refused", len(refused))
                if not pending:
                    return len(refused)
            try:
                kind, flags, stream, payload = self.read_frame()
            except (OSError, ConnectionError) as e:
                record("failed", len(pending), f"{len(pending)} accepted streams lost: {e}")
                raise
            if kind == 4 and not flags & 0x1:
                self.sock.sendall(frame(4, 0x1, 0))
            elif kind == 6 and not flags & 0x1:
                self.sock.sendall(frame(6, 0x1, 0, payload))
            elif kind == 7:
                record("goaways")
                self.last_stream = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                code = int.from_bytes(payload[4:8], "big")
                if code != 0:
                    record("failed", len(pending), f"GOAWAY with error code {code}")
                    raise ConnectionError("GOAWAY error")
            elif kind == 3 and stream in pending:
                pending.discard(stream)
                record("failed", 1, f"RST_STREAM {int.from_bytes(payload[:4], 'big')} on stream {stream}")
            elif kind == 1 and stream in pending:
                block = payload[(1 + payload[0]) if flags & 0x8 else 0:]
                block = block[5:] if flags & 0x20 else block
                status.setdefault(stream, skip_table_size_updates(block)[:1] == b"\x88")
                if flags & 0x1:
                    pending.discard(stream)
                    record("ok" if status[stream] else "failed", 1, None if status[stream] else f"stream {stream}: not 200")
            elif kind == 0 and stream in pending:
                self.unacked += len(payload)
                if flags & 0x1:
                    pending.discard(stream)
                    record("ok" if status.get(stream) else "failed", 1, None if status.get(stream) else f"stream {stream}: not 200")
        if self.unacked > 1 << 20:
            self.sock.sendall(frame(8, 0, 0, struct.pack(">I", self.unacked)))
            self.unacked = 0
        return 0


def client():
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    again = 0
    while time.time() < deadline:
        try:
            conn = Connection(ctx)
        except (OSError, ConnectionError) as e:
            record("failed", max(again, 1), f"connect: {e}")
            again = 0
            time.sleep(0.05)
            continue
        try:
            while time.time() < deadline and conn.last_stream is None:
                again = conn.batch(again or per_batch)
        except (OSError, ConnectionError):
            again = 0
        finally:
            conn.sock.close()


threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join(seconds + 30)
print(json.dumps(totals))
