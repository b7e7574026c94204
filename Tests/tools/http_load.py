#!/usr/bin/env python3
"""Keep-alive HTTP load for failover tests: THREADS connections sending requests back to back
until STOP_FILE exists or LIMIT seconds pass. Every failure is recorded with its wall-clock
time, so a test can tell failures before and after an event. Prints one JSON line."""
import http.client, json, os, sys, threading, time

port, threads, stop_file, limit = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
path = sys.argv[5] if len(sys.argv) > 5 else "/"
deadline = time.time() + limit
stats = {"ok": 0, "errors": []}
lock = threading.Lock()

def worker():
    conn = None
    while time.time() < deadline and not os.path.exists(stop_file):
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            with lock:
                if r.status == 200:
                    stats["ok"] += 1
                else:
                    stats["errors"].append([time.time(), "status %d: %s" % (r.status, body[:100].decode(errors="replace"))])
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:
            with lock:
                stats["errors"].append([time.time(), repr(e)])
            if conn is not None:
                conn.close()
            conn = None

workers = [threading.Thread(target=worker) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps(stats))
