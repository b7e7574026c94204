#!/usr/bin/env python3
"""Certificate rotation figures for edge-gateway (release build), printed as a table.

1. latency: time from the rename of a new PEM into the watched directory to the first
   handshake that serves it, p50/p99 over --rotations rotations (served once the rename
   completes; the 200 ms debounce only delays the settled re-read);
2. full-handshake rate (openssl s_time -new) while a certificate rotates every 100 ms,
   divided by the rate without rotation;
3. resident memory before and after --memory-rotations rotations (each published through
   POST /reload right after the rename, with handshakes in between).
Usage: python3 bench/rotation.py [--rotations 200] [--memory-rotations 10000] [--no-build]
"""
import argparse, os, shutil, socket, ssl, statistics, subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, free_port, wait_port, release_binary, fingerprint, pem_fingerprint  # noqa: E402


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_pair(work, name, ca):
    key = os.path.join(work, name + ".key")
    crt = os.path.join(work, name + ".crt")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", crt + ".csr"], check=True, capture_output=True)
    ext = crt + ".ext"
    open(ext, "w").write("subjectAltName=DNS:localhost\n")
    subprocess.run(["openssl", "x509", "-req", "-in", crt + ".csr", "-CA", ca + "/intermediate.pem", "-CAkey", ca + "/intermediate.key",
                    "-CAcreateserial", "-days", "30", "-extfile", ext, "-out", crt], check=True, capture_output=True)
    combined = os.path.join(work, name + ".combined")
    open(combined, "w").write(open(crt).read() + open(ca + "/intermediate.pem").read() + open(key).read())
    return combined, pem_fingerprint(crt)


def s_time(port, seconds, clients=6):
    """Full handshakes per second: several `openssl s_time -new` clients in parallel (one
    s_time waits on each connection's close and idles most of the time), summed."""
    import re
    procs = [subprocess.Popen(["taskset", "-c", "0", "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(clients)]
    total = 0.0
    for p in procs:
        out = p.communicate(timeout=seconds + 30)[0]
        m = re.search(r"(\d+) connections in (\d+) real seconds", out)
        total += int(m.group(1)) / float(m.group(2))
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rotations", type=int, default=200)
    ap.add_argument("--memory-rotations", type=int, default=10000)
    ap.add_argument("--debounce-ms", type=int, default=200)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    gateway = release_binary(build=not args.no_build)

    work = tempfile.mkdtemp(prefix="edge-rotation-")
    proc = None
    try:
        subprocess.run(["bash", os.path.join(ROOT, "certs-example/generate.sh"), os.path.join(work, "ca")], check=True, stdout=subprocess.DEVNULL)
        ca = os.path.join(work, "ca")
        pairs = [make_pair(work, f"v{i}", ca) for i in range(2)]
        certs = os.path.join(work, "certs")
        os.makedirs(certs)
        shutil.copy(pairs[0][0], os.path.join(certs, "site.pem"))
        port, admin = free_port(), free_port()
        cfg = os.path.join(work, "gateway.yaml")
        open(cfg, "w").write(f"""workers: 1
listeners:
  - {{ name: https, address: "127.0.0.1:{port}", tls: {{}} }}
certificates:
  sources: [ {{ directory: {certs} }} ]
  watch: {{ debounce: {args.debounce_ms}ms }}
upstreams: {{ app: {{ backends: ["127.0.0.1:9"] }} }}
routes: [ {{ upstream: app }} ]
admin: {{ address: "127.0.0.1:{admin}", reload_min_interval: 0s }}  # 10,000 reloads in a row
""")
        log = open(os.path.join(work, "gateway.log"), "w")
        proc = subprocess.Popen(["taskset", "-c", "1", gateway, "run", "-c", cfg, "--log-level", "warning"], stdout=log, stderr=log)
        assert wait_port(port), "gateway did not start"
        ctx = ssl.create_default_context(cafile=os.path.join(ca, "ca.pem"))
        ctx.options |= ssl.OP_NO_TICKET

        def rotate_to(i):
            staged = os.path.join(certs, ".site.pem.tmp")
            shutil.copy(pairs[i % 2][0], staged)
            os.rename(staged, os.path.join(certs, "site.pem"))

        # 1. latency
        latencies = []
        for n in range(1, args.rotations + 1):
            want = pairs[n % 2][1]
            rotate_to(n)
            t0 = time.monotonic()
            while fingerprint(port, ctx) != want:
                if time.monotonic() - t0 > 10:
                    sys.exit("rotation not served within 10 s")
            latencies.append((time.monotonic() - t0) * 1000)
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]

        # 2. handshake rate with and without rotation every 100 ms
        base = s_time(port, 5)
        stop = threading.Event()
        def rotator():
            i = 0
            while not stop.is_set():
                i += 1
                rotate_to(i)
                time.sleep(0.1)
        t = threading.Thread(target=rotator)
        t.start()
        rotating = s_time(port, 5)
        stop.set()
        t.join()

        # 3. memory across many rotations
        time.sleep(1)
        before = rss_kib(proc.pid)
        for n in range(args.memory_rotations):
            rotate_to(n)
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{admin}/reload", method="POST", headers={"X-Edge-Gateway-Reload": "1"}), timeout=5).read()
            if n % 50 == 0:
                fingerprint(port, ctx)
        time.sleep(1)
        after = rss_kib(proc.pid)
        status = urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5).read().decode()
        import json
        live = json.loads(status).get("live_snapshots")

        print(f"\ncertificate rotation, edge-gateway release build on core 1 (debounce {args.debounce_ms} ms)\n")
        print("| figure | value | target |")
        print("|---|---:|---|")
        print(f"| rotation latency p50 ({args.rotations} rotations) | {p50:.1f} ms | |")
        print(f"| rotation latency p99 | {p99:.1f} ms | < {args.debounce_ms + 50} ms |")
        print(f"| full handshakes/s, no rotation (openssl s_time -new) | {base:.0f} | |")
        print(f"| full handshakes/s, rotating every 100 ms | {rotating:.0f} | |")
        print(f"| ratio rotating / not rotating | {rotating / base:.3f} | >= 0.95 |")
        print(f"| RSS before {args.memory_rotations} rotations | {before} KiB | |")
        print(f"| RSS after | {after} KiB ({(after - before) / 1024:+.1f} MiB) | within a few MiB |")
        print(f"| live snapshots after | {live} | 1 |")
    finally:
        if proc and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
