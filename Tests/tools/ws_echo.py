#!/usr/bin/env python3
"""A WebSocket echo server and client (RFC 6455), standard library only.

  ws_echo.py server PORT          echo every message back (/ws/refuse*: 403 instead of
                                  101); prints "ready" when listening
  ws_echo.py client HOST PORT PATH [--tls CAFILE SNI] [--sizes 5,70000] [--idle SECONDS]
                                  [--before PATH]
      handshake, send one text message per size, check each echo, optionally wait
      SECONDS idle and check the connection was closed, then close; prints a JSON summary.
      --before: first, on the same connection, a chunked POST to PATH whose response
      (from the gateway's demo upstream /echo) comes back chunked
"""
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError("connection closed before the head ended")
        data += chunk
    return data.decode("latin-1")


def read_frame(sock):
    b0, b1 = read_exact(sock, 2)
    opcode, masked, length = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
    if length == 126:
        length = struct.unpack("!H", read_exact(sock, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", read_exact(sock, 8))[0]
    mask = read_exact(sock, 4) if masked else None
    payload = read_exact(sock, length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


def frame(opcode, payload, mask):
    head = bytes([0x80 | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def serve(conn):
    try:
        head = read_head(conn)
        fields = {line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:] if ":" in line}
        if head.split(" ")[1].startswith("/ws/refuse"):
            body = b"no websocket for you\n"
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            return
        if fields.get("upgrade", "").lower() != "websocket" or "upgrade" not in fields.get("connection", "").lower():
            body = b"not a websocket handshake\n"
            conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            return
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept_key(fields['sec-websocket-key'])}\r\nX-Seen-Host: {fields.get('host', '')}\r\n\r\n").encode())
        while True:
            opcode, payload = read_frame(conn)
            if opcode == 8:
                conn.sendall(frame(8, payload[:2], False))
                return
            if opcode == 9:
                conn.sendall(frame(10, payload, False))
                continue
            conn.sendall(frame(opcode, payload, False))
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


def server(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def chunked_exchange(sock, host, port, path):
    """A chunked POST and its response, read to the last chunk; the response's head."""
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n0\r\n\r\n").encode())
    head = read_head(sock)
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError("connection closed before the chunked body ended")
        data += chunk
    return head


def client(host, port, path, tls=None, sizes=(5,), idle=None, before=None):
    sock = socket.create_connection((host, port), timeout=30)
    if tls:
        ctx = ssl.create_default_context(cafile=tls[0])
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname=tls[1])
    before_head = chunked_exchange(sock, host, port, before) if before else None
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {tls[1] if tls else host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = read_head(sock)
    status = head.split("\r\n")[0]
    result = {"status": status, "accept_ok": f"sec-websocket-accept: {accept_key(key)}".lower() in head.lower(), "head": head, "echoed": []}
    if before_head is not None:
        result["before"] = before_head.split("\r\n")[0]
        result["before_chunked"] = "transfer-encoding: chunked" in before_head.lower()
    if " 101 " not in status:
        print(json.dumps(result))
        return
    for size in sizes:
        message = os.urandom(size // 2 + 1).hex()[:size].encode()
        sock.sendall(frame(1, message, True))
        opcode, payload = read_frame(sock)
        result["echoed"].append(opcode == 1 and payload == message)
    if idle:
        sock.settimeout(idle)
        try:
            result["closed_when_idle"] = sock.recv(1) == b""
        except (socket.timeout, TimeoutError):
            result["closed_when_idle"] = False
        print(json.dumps(result))
        return
    sock.sendall(frame(8, struct.pack("!H", 1000), True))
    opcode, payload = read_frame(sock)
    result["close_echoed"] = opcode == 8
    sock.settimeout(5)
    try:
        result["closed_after"] = sock.recv(1) == b""
    except (socket.timeout, TimeoutError):
        result["closed_after"] = False
    print(json.dumps(result))


def main(argv):
    if argv[1] == "server":
        server(int(argv[2]))
        return
    host, port, path = argv[2], int(argv[3]), argv[4]
    tls, sizes, idle, before = None, (5,), None, None
    rest = argv[5:]
    while rest:
        if rest[0] == "--tls":
            tls, rest = (rest[1], rest[2]), rest[3:]
        elif rest[0] == "--sizes":
            sizes, rest = tuple(int(x) for x in rest[1].split(",")), rest[2:]
        elif rest[0] == "--idle":
            idle, rest = float(rest[1]), rest[2:]
        elif rest[0] == "--before":
            before, rest = rest[1], rest[2:]
        else:
            raise SystemExit(f"unknown argument {rest[0]}")
    client(host, port, path, tls, sizes, idle, before)


if __name__ == "__main__":
    main(sys.argv)
