#!/usr/bin/env python3
"""Load for rotation tests: one keep-alive HTTPS connection sending requests back to back,
plus a loop of new connections (full handshakes, no resumption), until STOP_FILE exists or
the time limit passes. Prints one JSON summary line."""
import http.client, json, os, ssl, sys, threading, time

port, ca, stop_file, limit = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
server_name = sys.argv[5] if len(sys.argv) > 5 else "localhost"
deadline = time.time() + limit
stats = {"keepalive_ok": 0, "keepalive_errors": [], "handshakes_ok": 0, "handshake_errors": [], "serials": {}}
lock = threading.Lock()

def context():
    ctx = ssl.create_default_context(cafile=ca)
    return ctx

def report():
    # Successes so far ("keep-alive handshakes"), written at each one (the caller holds the
    # lock), for a test that waits for both parts of the load to be under way
    # (TLSLoad.waitForSuccesses).
    with open(stop_file + ".progress.tmp", "w") as f:
        f.write("%d %d" % (stats["keepalive_ok"], stats["handshakes_ok"]))
    os.replace(stop_file + ".progress.tmp", stop_file + ".progress")

def running():
    return time.time() < deadline and not os.path.exists(stop_file)

class SNIConnection(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 but sends and verifies server_name (no DNS needed)."""
    def connect(self):
        import socket
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context().wrap_socket(raw, server_hostname=server_name)

def keepalive():
    conn = SNIConnection("127.0.0.1", port, timeout=10)
    while running():
        try:
            conn.request("GET", "/ka", headers={"Host": server_name})
            r = conn.getresponse()
            r.read()
            with lock:
                if r.status == 200:
                    stats["keepalive_ok"] += 1
                    report()
                else:
                    stats["keepalive_errors"].append(f"status {r.status}")
        except Exception as e:
            with lock:
                stats["keepalive_errors"].append(repr(e))
            conn.close()
            conn = SNIConnection("127.0.0.1", port, timeout=10)

def handshakes():
    import socket
    while running():
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            s = context().wrap_socket(raw, server_hostname=server_name)
            der = s.getpeercert(binary_form=True)
            s.sendall(b"GET /hs HTTP/1.1\r\nHost: " + server_name.encode() + b"\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            import hashlib
            fp = hashlib.sha256(der).hexdigest()[:16]
            with lock:
                if data.startswith(b"HTTP/1.1 200"):
                    stats["handshakes_ok"] += 1
                    report()
                    stats["serials"][fp] = stats["serials"].get(fp, 0) + 1
                else:
                    stats["handshake_errors"].append(data[:60].decode(errors="replace"))
        except Exception as e:
            with lock:
                stats["handshake_errors"].append(repr(e))

threads = [threading.Thread(target=keepalive), threading.Thread(target=handshakes)]
for t in threads:
    t.start()
for t in threads:
    t.join()
stats["keepalive_errors"] = stats["keepalive_errors"][:20]
stats["handshake_errors"] = stats["handshake_errors"][:20]
print(json.dumps(stats))
