#!/usr/bin/env python3
"""A client that sends a request body slowly, for body-timeout tests:
  slow_body.py PORT PATH LENGTH SENT GAP
declares Content-Length LENGTH, sends SENT body bytes one every GAP seconds (the first at
once with the head), then reads (at most 15 s) until the server closes. Prints one JSON
line: "status" (of the first response line, or null), "answered_after" (seconds from the
last byte sent to the first response byte), "closed_after" (to the close), "response"."""
import json, socket, sys, time

port, path, length, sent, gap = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
sock = socket.create_connection(("127.0.0.1", port), timeout=15)
head = f"POST {path} HTTP/1.1\r\nHost: a.test\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()
response = b""
sock.settimeout(0.05)
for i in range(sent):
    sock.sendall((head if i == 0 else b"") + b"x")
    if i + 1 < sent:
        end = time.time() + gap
        while time.time() < end:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                response += data
            except socket.timeout:
                pass
last = time.time()
result = {"status": None, "answered_after": None, "closed_after": None}
sock.settimeout(0.2)
deadline = last + 15
while time.time() < deadline:
    try:
        data = sock.recv(65536)
    except socket.timeout:
        continue
    except OSError:
        data = b""
    if not data:
        result["closed_after"] = round(time.time() - last, 2)
        break
    if not response and result["answered_after"] is None:
        result["answered_after"] = round(time.time() - last, 2)
    response += data
if response.startswith(b"HTTP/1.1 "):
    result["status"] = int(response[9:12])
result["response"] = response.decode("latin-1")[:400]
print(json.dumps(result))
