#!/usr/bin/env python3
"""What a busy watched directory costs the gateway: CPU while a file in it is written over and over.

A release gateway serves --lineages certificate pairs from one `directory:` source (a
self-signed ECDSA pair copied under several names, generated here). For --seconds, a file
in that directory is opened, appended to and closed about every millisecond (each close is
an IN_CLOSE_WRITE), first an unrelated `app.log`, then `junk.pem` (a name a lineage could
use, never valid). Printed: the gateway's CPU time (user + system, from /proc) over each
phase, as a share of one core, and the same with no file written (the baseline).
Usage: python3 bench/watch_churn.py [--lineages 50] [--seconds 10] [--no-build]
"""
import argparse, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, wait_port, release_binary  # noqa: E402


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(pid, path, seconds):
    """CPU seconds the gateway used while `path` (None: nothing) was written every ~1 ms."""
    before, started, writes = cpu_seconds(pid), time.time(), 0
    while time.time() - started < seconds:
        if path:
            with open(path, "a") as f:
                f.write("line\n")
            writes += 1
        time.sleep(0.001)
    return cpu_seconds(pid) - before, writes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineages", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    gateway = release_binary(build=not args.no_build)
    work = tempfile.mkdtemp(prefix="edge-churn-")
    proc = None
    try:
        certs = os.path.join(work, "certs")
        os.makedirs(certs)
        key, crt = os.path.join(work, "site.key"), os.path.join(work, "site.crt")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", key, "-out", crt, "-days", "30", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        for i in range(args.lineages):
            shutil.copy(crt, os.path.join(certs, f"s{i}.crt"))
            shutil.copy(key, os.path.join(certs, f"s{i}.key"))
        port, admin = free_port(), free_port()
        config = os.path.join(work, "gateway.yaml")
        with open(config, "w") as f:
            f.write(f"""listeners: [ {{ name: https, address: "127.0.0.1:{port}", tls: {{}} }} ]
certificates: {{ sources: [ {{ directory: {certs} }} ] }}
upstreams: {{ app: {{ backends: ["127.0.0.1:9"] }} }}
routes: [ {{ upstream: app }} ]
admin: {{ address: "127.0.0.1:{admin}" }}
""")
        proc = subprocess.Popen([gateway, "run", "-c", config, "--log-level", "error"], stderr=open(os.path.join(work, "log"), "w"))
        assert wait_port(admin), "the gateway did not start: " + open(os.path.join(work, "log")).read()
        time.sleep(1)
        rows = []
        for label, name in (("nothing written (baseline)", None), ("app.log, an unrelated file", "app.log"),
                            ("junk.pem, a name a lineage could use", "junk.pem")):
            used, writes = phase(proc.pid, os.path.join(certs, name) if name else None, args.seconds)
            rows.append((label, writes, used))
        print(f"\nwatched directory with {args.lineages} lineages, one file written every ~1 ms for {args.seconds} s\n")
        print("| file written | writes | gateway CPU s | share of a core |")
        print("|---|---:|---:|---:|")
        for label, writes, used in rows:
            print(f"| {label} | {writes} | {used:.2f} | {100 * used / args.seconds:.0f} % |")
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
