#!/usr/bin/env python3
"""Sends a PROXY protocol header (as a layer-4 balancer does), then one HTTP/1.1 request,
over TLS (verified against CA_FILE for localhost) or plain (CA_FILE "-"):
  proxy_client.py PORT CA_FILE HEADER_HEX PATH [SOURCE_ADDRESS]
HEADER_HEX is the header's bytes in hex (empty: none); SOURCE_ADDRESS the loopback address to
connect from (127.0.0.1 by default). Prints one JSON line: "response"
(the whole response as text, "" if none), "closed" (the gateway closed the connection
without answering), "error" (what failed)."""
import json, socket, ssl, sys

port, ca, header, path = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3]), sys.argv[4]
source = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.1"
result = {"response": "", "closed": False, "error": None}
sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
try:
    sock.sendall(header)
    if ca != "-":
        ctx = ssl.create_default_context(cafile=ca)
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    result["response"] = data.decode("latin-1")
    result["closed"] = not data
except (ssl.SSLError, ConnectionError, OSError) as e:
    result["closed"] = True
    result["error"] = f"{type(e).__name__}: {e}"
finally:
    sock.close()
print(json.dumps(result))
