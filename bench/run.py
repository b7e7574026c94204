#!/usr/bin/env python3
"""Keep-alive HTTPS throughput of edge-gateway beside nginx and HAProxy, same machine, same run.

The upstream and the load generator share core 0; each proxy runs alone on core 1 with one
worker/thread/event loop. Two cases: a plain HTTP upstream and a verified TLS upstream (the
same static nginx on a second port). Every figure is printed as the gateway's value and its
ratio to the peers; the gateway's upstream connection reuse ratio (1 - new upstream
connections / requests) is read from its /status/upstreams.
Usage: python3 bench/run.py [--duration 10] [--connections 50] [--runs 3]
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, free_port, wait_port, release_binary  # noqa: E402


def start(cmd, core, log):
    return subprocess.Popen(["taskset", "-c", str(core)] + cmd, stdout=log, stderr=log)


def wrk(url, duration, connections, core=0):
    out = subprocess.run(["taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
                         capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return {"rps": rps, "p50": lat(50), "p99": lat(99), "errors": errors}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3, help="median of this many runs per proxy")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()

    for tool in ("wrk", "nginx", "haproxy", "taskset", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"bench: '{tool}' is missing: apt-get install wrk nginx-light haproxy")
    gateway = release_binary(build=not args.no_build)

    work = tempfile.mkdtemp(prefix="edge-bench-")
    procs = []
    log = open(os.path.join(work, "bench.log"), "w")
    try:
        subprocess.run(["bash", os.path.join(ROOT, "certs-example/generate.sh"), os.path.join(work, "certs")], check=True, stdout=subprocess.DEVNULL)
        cert = os.path.join(work, "certs/pairs/localhost.crt")
        key = os.path.join(work, "certs/pairs/localhost.key")
        pem = os.path.join(work, "certs/localhost.pem")
        with open(pem, "w") as f:
            f.write(open(cert).read() + open(key).read())

        def render(name, **kv):
            text = open(os.path.join(ROOT, "bench/peers", name + ".in")).read()
            for k, v in kv.items():
                text = text.replace("@" + k + "@", str(v))
            path = os.path.join(work, name)
            open(path, "w").write(text)
            return path
        ca = os.path.join(work, "certs/ca.pem")
        up, tls_up = free_port(), free_port()
        procs.append(start(["nginx", "-c", render("upstream-nginx.conf", DIR=work, PORT=up, TLSPORT=tls_up, CERT=cert, KEY=key), "-p", work], 0, log))
        assert wait_port(up) and wait_port(tls_up), "upstream did not start"
        admin = free_port()

        ports = {"edge-gateway": free_port(), "nginx": free_port(), "haproxy": free_port()}
        cfg = os.path.join(work, "gateway.yaml")
        with open(cfg, "w") as f:
            f.write(f"""workers: 1
listeners:
  - name: https
    address: "127.0.0.1:{ports['edge-gateway']}"
    tls: {{ certificate: {cert}, key: {key} }}
upstreams:
  app: {{ backends: ["127.0.0.1:{up}"] }}
  app_tls: {{ backends: ["127.0.0.1:{tls_up}"], tls: {{ sni: localhost, ca_file: {ca} }} }}
routes: [ {{ path_prefix: /tls/, upstream: app_tls }}, {{ upstream: app }} ]
admin: {{ address: "127.0.0.1:{admin}" }}
""")
        ngx = render("nginx.conf", DIR=work, UPSTREAM=up, TLSUPSTREAM=tls_up, CA=ca, PORT=ports["nginx"], CERT=cert, KEY=key)
        hap = render("haproxy.cfg", UPSTREAM=up, TLSUPSTREAM=tls_up, CA=ca, PORT=ports["haproxy"], PEM=pem)
        commands = {
            "edge-gateway": [gateway, "run", "-c", cfg, "--log-level", "warning"],
            "nginx": ["nginx", "-c", ngx, "-p", work],
            "haproxy": ["haproxy", "-f", hap],
        }
        cases = {"plain upstream": "/", "TLS upstream": "/tls/"}
        results = {case: {} for case in cases}
        reuse = {}
        for name, cmd in commands.items():
            p = start(cmd, 1, log)
            procs.append(p)
            assert wait_port(ports[name]), f"{name} did not start (see {work}/bench.log)"
            for case, path in cases.items():
                url = f"https://127.0.0.1:{ports[name]}{path}"
                wrk(url, 2, args.connections)  # warm-up
                runs = [wrk(url, args.duration, args.connections) for _ in range(args.runs)]
                rps = statistics.median(r["rps"] for r in runs)
                best = min(runs, key=lambda r: abs(r["rps"] - rps))
                results[case][name] = {"rps": rps, "p50": best["p50"], "p99": best["p99"], "errors": sum(r["errors"] for r in runs)}
            if name == "edge-gateway":
                status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status/upstreams", timeout=5))
                for group in status["upstreams"]:
                    requests = sum(b["requests"] for b in group["backends"])
                    opened = sum(b["connections_opened"] for b in group["backends"])
                    resumed = sum(b["tls_resumed"] for b in group["backends"])
                    reuse[group["name"]] = (requests, opened, resumed)
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=20)
        direct = wrk(f"http://127.0.0.1:{up}/", args.duration, args.connections)

        cpu = subprocess.run(["bash", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
        print(f"\nkeep-alive HTTPS: wrk -t1 -c{args.connections} -d{args.duration}s, median of {args.runs}; proxy on core 1, upstream+wrk on core 0")
        print(f"machine: {cpu}, {os.cpu_count()} cores; {subprocess.run(['openssl','version'],capture_output=True,text=True).stdout.strip()}")
        for case in cases:
            g = results[case]["edge-gateway"]
            print(f"\n{case}\n")
            print("| proxy | req/s | p50 ms | p99 ms | errors | gateway/peer req/s |")
            print("|---|---:|---:|---:|---:|---:|")
            for name, r in results[case].items():
                ratio = "" if name == "edge-gateway" else f"{g['rps'] / r['rps']:.2f}"
                print(f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {ratio} |")
        print(f"\n| upstream direct (plain HTTP) | {direct['rps']:.0f} req/s | p50 {direct['p50']:.2f} ms | p99 {direct['p99']:.2f} ms | {direct['errors']} errors |")
        print("\ngateway upstream connection reuse (1 - new connections / requests, warm-up included):\n")
        print("| upstream | requests | new connections | TLS resumptions | reuse ratio |")
        print("|---|---:|---:|---:|---:|")
        for group, (requests, opened, resumed) in sorted(reuse.items()):
            ratio = 1 - opened / requests if requests else 0
            print(f"| {group} | {requests} | {opened} | {resumed} | {ratio:.5f} |")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
