#!/usr/bin/env python3
"""HTTP load for failover and restart tests: THREADS connections sending requests back to back
until STOP_FILE exists or LIMIT seconds pass. MODE keepalive (default) reuses connections and,
like browsers, retries a request once when a reused connection turns out closed before any
response byte; MODE close opens a new connection per request (exercises the accept queue).
Every failure is recorded with its wall-clock time. Prints one JSON line."""
import http.client, json, os, sys, threading, time

port, threads, stop_file, limit = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
path = sys.argv[5] if len(sys.argv) > 5 else "/"
mode = sys.argv[6] if len(sys.argv) > 6 else "keepalive"
deadline = time.time() + limit
stats = {"ok": 0, "errors": [], "retried": 0}
lock = threading.Lock()

def worker():
    conn = None
    used = 0
    while running():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                used = 0
            headers = {"Connection": "close"} if mode == "close" else {}
            try:
                conn.request("GET", path, headers=headers)
                r = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if used == 0:
                    raise
                # The server closed an idle keep-alive connection as we reused it: retry once, fresh.
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                used = 0
                with lock:
                    stats["retried"] += 1
                conn.request("GET", path, headers=headers)
                r = conn.getresponse()
            used += 1
            body = r.read()
            with lock:
                if r.status == 200:
                    stats["ok"] += 1
                    report(stats["ok"])
                else:
                    stats["errors"].append([time.time(), "status %d: %s" % (r.status, body[:100].decode(errors="replace"))])
            if mode == "close" or r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:
            with lock:
                stats["errors"].append([time.time(), repr(e)])
            if conn is not None:
                conn.close()
            conn = None

def report(ok):
    # The successes so far, written at each one (under the lock, so in order), for a test
    # that waits for the load to be under way (HTTPLoad.waitForSuccesses).
    with open(stop_file + ".progress.tmp", "w") as f:
        f.write(str(ok))
    os.replace(stop_file + ".progress.tmp", stop_file + ".progress")

def running():
    return time.time() < deadline and not os.path.exists(stop_file)

workers = [threading.Thread(target=worker) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps(stats))
