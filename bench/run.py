#!/usr/bin/env python3
"""edge-gateway beside nginx and HAProxy: the same upstream, certificate and machine, in one run.

Pinned (the default, one worker/thread/event loop each): the proxies on core 1 (all three
running, one under load at a time), the upstream and the load generators on core 0. Every
measurement is taken in rounds that visit the three proxies in turn (the order rotating), so
the machine's drift over minutes falls on all of them alike. Measured per proxy:
  1. keep-alive HTTPS req/s and p50/p99 (wrk -t1 -c50, median of --runs), with a plain and with
     a verified TLS upstream, and the proxy's CPU per request over all rounds (steadier than
     req/s on a shared machine); the gateway's upstream connection reuse from /status/upstreams;
  2. full and resumed TLS handshakes (openssl s_time -new / -reuse, each with a GET through the
     proxy), as handshakes/s and as proxy CPU per handshake (the clients saturate first on 2 cores);
  3. HTTP/2: h2load -c 10 -m 10 for --duration seconds, req/s and proxy CPU per request, with an
     HTTP/1.1 upstream (h2) and with HTTP/2 to the upstream too (h2up: the gateway's h2c group,
     HAProxy's `proto h2`, nginx's grpc_pass), and unary gRPC calls (grpc: h2load sending helloworld's
     SayHello over the same h2c upstream, which answers as a gRPC server does, trailers included;
     each proxy is first checked with a real grpcio client, bench/tools/grpc_unary.py);
  4. resident memory idle and with 2,000 and 10,000 idle TLS connections (KiB per connection);
  5. certificate rotation: time from the file operation to the new certificate being served and
     errors under load meanwhile, gateway (file watch, no signal) against `nginx -s reload`.
Then an all-cores variant of (1): every proxy with 2 workers/threads/loops, wrk -t2 -c100, no pinning.
Every figure is printed as the gateway's value and its ratio to the peers; the run is appended to
BENCHMARKS.md with the machine, versions and commands (--no-append to skip).
Usage: python3 bench/run.py [--duration 10] [--runs 3] [--only keepalive,handshake,h2,h2up,grpc,memory,rotation,allcores]
"""
import argparse, asyncio, datetime, json, os, re, resource, shutil, signal, socket, ssl, statistics, subprocess, sys
import tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, RELEASE_BUILD, GRPC_PATH, GRPC_REPLY, free_port, wait_port, release_binary, fingerprint, pem_fingerprint, render_peer, write_gateway_config, write_grpc_files, grpc_python  # noqa: E402

PROXIES = ("edge-gateway", "nginx", "haproxy")
SECTIONS = ("keepalive", "handshake", "h2", "h2up", "grpc", "memory", "rotation", "allcores")


def start(cmd, core, log):
    prefix = ["taskset", "-c", str(core)] if core is not None else []
    return subprocess.Popen(prefix + cmd, stdout=log, stderr=log)


def on_core(core):
    return ["taskset", "-c", str(core)] if core is not None else []


def wrk(url, duration, connections, threads=1, core=0):
    out = subprocess.run(on_core(core) + ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url],
                         capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))

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
    return {"rps": rps, "requests": requests, "p50": lat(50), "p99": lat(99), "errors": errors}


def cpu_seconds(pids):
    """User+system CPU of processes and their children threads (nginx: master and workers)."""
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def family(pid):
    """The process and its children (nginx and HAProxy masters fork workers)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [int(p) for p in out]


def s_time(port, seconds, reuse, clients=4):
    """Handshakes (each followed by a GET) by several openssl s_time clients on core 0."""
    mode = "-reuse" if reuse else "-new"
    procs = [subprocess.Popen(on_core(0) + ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", mode, "-time", str(seconds), "-www", "/"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(clients)]
    total = 0
    for p in procs:
        out = p.communicate(timeout=seconds + 60)[0]
        m = re.findall(r"(\d+) connections in [\d.]+s", out)
        if m:
            total += int(m[-1])
    return total


def handshakes(port, pids, seconds, reuse):
    before = cpu_seconds(pids)
    started = time.time()
    count = s_time(port, seconds, reuse)
    elapsed = time.time() - started
    return {"count": count, "cpu": cpu_seconds(pids) - before, "elapsed": elapsed}


def interleaved(names, n):
    """n rounds that visit every proxy, each round starting one further along: the machine's
    speed drifts by tens of percent over minutes, and measuring one proxy after the other
    turned that drift into bias."""
    for r in range(n):
        yield names[r % len(names):] + names[:r % len(names)]


def wrk_rounds(urls, pids, runs, duration, connections, threads=1, core=None):
    """Keep-alive load on each proxy of `urls` in interleaved rounds: median req/s, the
    latencies of the run closest to it, errors summed, and the proxy's CPU per request
    over all rounds (`pids`: the proxy's processes)."""
    results = {name: [] for name in urls}
    cpu = {name: 0.0 for name in urls}
    for url in urls.values():
        wrk(url, 2, connections, threads=threads, core=core)  # warm-up
    for order in interleaved(tuple(urls), runs):
        for name in order:
            before = cpu_seconds(pids[name])
            results[name].append(wrk(urls[name], duration, connections, threads=threads, core=core))
            cpu[name] += cpu_seconds(pids[name]) - before
    summary = {}
    for name, rs in results.items():
        rps = statistics.median(r["rps"] for r in rs)
        best = min(rs, key=lambda r: abs(r["rps"] - rps))
        requests = sum(r["requests"] for r in rs)
        summary[name] = {"rps": rps, "p50": best["p50"], "p99": best["p99"], "errors": sum(r["errors"] for r in rs),
                         "cpu_us": cpu[name] / requests * 1e6 if requests else float("nan")}
    return summary


def h2load(port, duration, path="/", flags=()):
    out = subprocess.run(on_core(0) + ["h2load", "-D", str(duration), "-c", "10", "-m", "10", *flags, f"https://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    data = re.search(r"\((\d+)\) data", out)
    return {"rps": rps, "succeeded": int(m.group(1)) if m else 0, "failed": int(m.group(2)) + int(m.group(3)) if m else -1,
            "data": int(data.group(1)) if data else 0}


async def hold_connections(port, ca, count, ready, release):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
                conns.append(w)
            except Exception:
                pass
    await asyncio.gather(*(one() for _ in range(count)))
    ready.set_result(len(conns))
    await release
    for w in conns:
        w.close()


def idle_memory(port, ca, pids, counts):
    """RSS idle and holding each count of idle TLS connections (opened by asyncio on core 0)."""
    results = {"idle": rss_kib(pids)}
    for count in counts:
        loop = asyncio.new_event_loop()
        ready, release = loop.create_future(), loop.create_future()
        task = loop.create_task(hold_connections(port, ca, count, ready, release))
        opened = loop.run_until_complete(ready)
        time.sleep(4)  # steady state: the gateway trims its heap a second or two after a burst ends
        rss = rss_kib(pids)
        release.set_result(None)
        loop.run_until_complete(task)
        loop.close()
        results[count] = {"opened": opened, "rss": rss, "per_conn": (rss - results["idle"]) / max(opened, 1)}
        time.sleep(2)
    return results


def issue_pair(work, ca_dir, tag):
    key, crt = os.path.join(work, f"rot-{tag}.key"), os.path.join(work, f"rot-{tag}.crt")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", crt + ".csr"], check=True, capture_output=True)
    open(crt + ".ext", "w").write("subjectAltName=DNS:localhost\n")
    subprocess.run(["openssl", "x509", "-req", "-in", crt + ".csr", "-CA", ca_dir + "/intermediate.pem", "-CAkey", ca_dir + "/intermediate.key",
                    "-CAcreateserial", "-days", "30", "-extfile", crt + ".ext", "-out", crt], check=True, capture_output=True)
    chain = open(crt).read() + open(ca_dir + "/intermediate.pem").read()
    return chain, open(key).read(), pem_fingerprint(crt)


class RotationLoad:
    """New connections (handshake + GET) back to back while rotating; counts failures."""

    def __init__(self, port, ca):
        self.port, self.ctx = port, ssl.create_default_context(cafile=ca)
        self.stop, self.ok, self.errors = threading.Event(), 0, 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                s = self.ctx.wrap_socket(raw, server_hostname="localhost")
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                s.close()
                if data.startswith(b"HTTP/1.1 200"):
                    self.ok += 1
                else:
                    self.errors += 1
            except Exception:
                self.errors += 1

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=10)


def rotation(port, ca, pairs, rotate, n):
    """Latency from the file operation (`rotate(i)`) to the new certificate being served."""
    ctx = ssl.create_default_context(cafile=ca)
    load = RotationLoad(port, ca)
    latencies = []
    for i in range(n):
        wanted = pairs[i % len(pairs)][2]
        started = time.time()
        rotate(i)
        while time.time() - started < 10:
            try:
                if fingerprint(port, ctx) == wanted:
                    break
            except Exception:
                pass
            time.sleep(0.005)
        latencies.append((time.time() - started) * 1000)
        time.sleep(0.3)
    load.finish()
    latencies.sort()
    return {"p50": statistics.median(latencies), "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "ok": load.ok, "errors": load.errors}


def ratio(g, p, higher_is_better=True):
    if not p or p != p or not g or g != g:
        return ""
    return f"{(g / p if higher_is_better else p / g):.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3, help="median of this many keep-alive runs per proxy")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument("--rotations", type=int, default=20)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-append", action="store_true", help="do not append the run to BENCHMARKS.md")
    args = ap.parse_args()
    only = set(args.only.split(","))

    for tool in ("wrk", "nginx", "haproxy", "taskset", "openssl", "h2load"):
        if not shutil.which(tool):
            sys.exit(f"bench: '{tool}' is missing: apt-get install wrk nginx-light haproxy nghttp2-client")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # 10,000 idle connections; children inherit
    gateway = release_binary(build=not args.no_build)

    work = tempfile.mkdtemp(prefix="edge-bench-")
    procs = []
    log = open(os.path.join(work, "bench.log"), "w")
    out_lines = []

    def say(line=""):
        print(line, flush=True)
        out_lines.append(line)
    try:
        subprocess.run(["bash", os.path.join(ROOT, "certs-example/generate.sh"), os.path.join(work, "certs")], check=True, stdout=subprocess.DEVNULL)
        ca_dir = os.path.join(work, "certs")
        ca = os.path.join(ca_dir, "ca.pem")
        cert = os.path.join(work, "certs/pairs/localhost.crt")
        key = os.path.join(work, "certs/pairs/localhost.key")
        # Each proxy gets its own copy of the pair, so rotating one touches nothing of the others.
        watched = os.path.join(work, "watched")
        os.makedirs(watched)
        chain_text = open(cert).read()
        key_text = open(key).read()
        open(os.path.join(watched, "localhost.pem"), "w").write(chain_text + key_text)
        ngx_cert, ngx_key = os.path.join(work, "nginx-cert.pem"), os.path.join(work, "nginx-key.pem")
        open(ngx_cert, "w").write(chain_text)
        open(ngx_key, "w").write(key_text)
        pem = os.path.join(work, "haproxy.pem")
        open(pem, "w").write(chain_text + key_text)

        grpc_flags = write_grpc_files(work)

        def render(name, out_name=None, **kv):
            return render_peer(work, name, out_name, **kv)
        up, tls_up, h2_up = free_port(), free_port(), free_port()
        procs.append(start(["nginx", "-c", render("upstream-nginx.conf", DIR=work, PORT=up, TLSPORT=tls_up, H2PORT=h2_up, CERT=cert, KEY=key), "-p", work],
                           0, log))
        assert wait_port(up) and wait_port(tls_up), "upstream did not start"

        def configs(workers, tag):
            ports = {name: free_port() for name in PROXIES}
            admin = free_port()
            cfg = write_gateway_config(os.path.join(work, f"gateway-{tag}.yaml"), workers, ports["edge-gateway"], up, tls_up, watched, ca, admin, h2_up)
            ngx = render("nginx.conf", f"nginx-{tag}.conf", DIR=work, UPSTREAM=up, TLSUPSTREAM=tls_up, H2UPSTREAM=h2_up, CA=ca, PORT=ports["nginx"],
                         CERT=ngx_cert, KEY=ngx_key, WORKERS=workers)
            hap = render("haproxy.cfg", f"haproxy-{tag}.cfg", UPSTREAM=up, TLSUPSTREAM=tls_up, H2UPSTREAM=h2_up, CA=ca, PORT=ports["haproxy"], PEM=pem,
                         WORKERS=workers)
            commands = {
                "edge-gateway": [gateway, "run", "-c", cfg, "--log-level", "warning"],
                "nginx": ["nginx", "-c", ngx, "-p", work],
                "haproxy": ["haproxy", "-f", hap],
            }
            return ports, admin, commands, ngx

        cases = {"plain upstream": "/", "TLS upstream": "/tls/"}
        results = {case: {} for case in cases}
        hs = {"full": {}, "resumed": {}}
        h2 = {}
        mem = {}
        rot = {}
        reuse = {}
        ports, admin, commands, ngx_conf = configs(1, "pinned")
        # All three run at once (idle ones cost nothing) and are measured in interleaved rounds.
        running, pids = {}, {}
        for name in PROXIES:
            running[name] = start(commands[name], 1, log)
            procs.append(running[name])
            assert wait_port(ports[name]), f"{name} did not start (see {work}/bench.log)"
        time.sleep(0.5)
        for name in PROXIES:
            pids[name] = family(running[name].pid)

        if "keepalive" in only:
            for case, path in cases.items():
                results[case] = wrk_rounds({name: f"https://127.0.0.1:{ports[name]}{path}" for name in PROXIES}, pids,
                                           args.runs, args.duration, args.connections, core=0)
        if "handshake" in only:
            for mode, reuse_sessions in (("full", False), ("resumed", True)):
                totals = {name: {"count": 0, "cpu": 0.0, "elapsed": 0.0} for name in PROXIES}
                for order in interleaved(PROXIES, args.runs):
                    for name in order:
                        one = handshakes(ports[name], pids[name], max(4, args.duration // 3), reuse=reuse_sessions)
                        for k in ("count", "cpu", "elapsed"):
                            totals[name][k] += one[k]
                for name, t in totals.items():
                    hs[mode][name] = {"rate": t["count"] / t["elapsed"] if t["elapsed"] else 0.0,
                                      "cpu_us": t["cpu"] / t["count"] * 1e6 if t["count"] else float("nan"), "count": t["count"]}
        def h2_rounds(path, flags=(), answer_bytes=None):
            """answer_bytes: the response body every answer from the upstream has, when
            h2load's count of successes is not enough (a proxy's own gRPC answer is an HTTP
            200 too, with no body): only that many bytes of DATA count as a call answered."""
            h2runs = {name: [] for name in PROXIES}
            h2cpu = {name: 0.0 for name in PROXIES}
            for name in PROXIES:
                h2load(ports[name], 2, path, flags)
            for order in interleaved(PROXIES, args.runs):
                for name in order:
                    before = cpu_seconds(pids[name])
                    run = h2load(ports[name], max(4, args.duration // 2), path, flags)
                    h2cpu[name] += cpu_seconds(pids[name]) - before
                    if answer_bytes and run["succeeded"]:
                        answered = min(run["succeeded"], run["data"] // answer_bytes)
                        run["failed"] += run["succeeded"] - answered
                        run["rps"] *= answered / run["succeeded"]
                        run["succeeded"] = answered
                    h2runs[name].append(run)
            summary = {}
            for name in PROXIES:
                done = sum(r["succeeded"] for r in h2runs[name])
                summary[name] = {"rps": statistics.median(r["rps"] for r in h2runs[name]), "failed": sum(r["failed"] for r in h2runs[name]),
                                 "cpu_us": h2cpu[name] / done * 1e6 if done else float("nan")}
            return summary
        if "h2" in only:
            h2 = h2_rounds("/")
        h2up = h2_rounds("/h2/") if "h2up" in only else {}
        grpc_unary, grpc_checked = {}, "no grpcio here (apt-get install python3-grpcio): not checked with a gRPC client"
        if "grpc" in only:
            checker = grpc_python()
            if checker:
                for name in PROXIES:
                    subprocess.run([checker, os.path.join(ROOT, "bench/tools/grpc_unary.py"), str(ports[name]), ca], check=True,
                                   stdout=subprocess.DEVNULL, timeout=120)
                grpc_checked = "each proxy checked first with grpcio (bench/tools/grpc_unary.py: reply and status OK)"
            grpc_unary = h2_rounds(GRPC_PATH, grpc_flags, answer_bytes=len(GRPC_REPLY))
        for name in PROXIES:
            port = ports[name]
            if "memory" in only:
                mem[name] = idle_memory(port, ca, family(running[name].pid), [2000, 10000])
            if "rotation" in only and name != "haproxy":
                pairs = [issue_pair(work, ca_dir, f"{name}-{i}") for i in range(4)]
                if name == "edge-gateway":
                    def rotate(i):
                        chain, k, _ = pairs[i % len(pairs)]
                        tmp = os.path.join(work, "rotate.tmp")
                        open(tmp, "w").write(chain + k)
                        os.rename(tmp, os.path.join(watched, "localhost.pem"))
                else:
                    def rotate(i):
                        chain, k, _ = pairs[i % len(pairs)]
                        open(ngx_cert + ".tmp", "w").write(chain)
                        open(ngx_key + ".tmp", "w").write(k)
                        os.rename(ngx_cert + ".tmp", ngx_cert)
                        os.rename(ngx_key + ".tmp", ngx_key)
                        subprocess.run(["nginx", "-c", ngx_conf, "-p", work, "-s", "reload"], check=True, capture_output=True)
                rot[name] = rotation(port, ca, pairs, rotate, args.rotations)
        status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status/upstreams", timeout=5))
        for group in status["upstreams"]:
            requests = sum(b["requests"] for b in group["backends"])
            opened = sum(b["connections_opened"] for b in group["backends"])
            resumed = sum(b["tls_resumed"] for b in group["backends"])
            reuse[group["name"]] = (requests, opened, resumed)
        for name in PROXIES:
            running[name].send_signal(signal.SIGTERM)
            running[name].wait(timeout=30)
        allcores = {}
        if "allcores" in only:
            ports2, _, commands2, _ = configs(2, "allcores")
            running2 = {}
            for name in PROXIES:
                running2[name] = start(commands2[name], None, log)
                procs.append(running2[name])
                assert wait_port(ports2[name]), f"{name} did not start (see {work}/bench.log)"
            time.sleep(0.5)
            pids2 = {name: family(running2[name].pid) for name in PROXIES}
            allcores = wrk_rounds({name: f"https://127.0.0.1:{ports2[name]}/" for name in PROXIES}, pids2, args.runs, args.duration, 100, threads=2)
            for name in PROXIES:
                running2[name].send_signal(signal.SIGTERM)
                running2[name].wait(timeout=30)
        direct = wrk(f"http://127.0.0.1:{up}/", args.duration, args.connections) if "keepalive" in only else None

        cpu = subprocess.run(["bash", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
        versions = "; ".join([
            subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip(),
            subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().replace("nginx version: ", ""),
            subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
            subprocess.run([gateway, "--version"], capture_output=True, text=True).stdout.strip() + " (" + " ".join(RELEASE_BUILD[1:]) + ")",
        ])
        say(f"machine: {cpu}, {os.cpu_count()} cores; {versions}")
        say(f"command: python3 bench/run.py --duration {args.duration} --runs {args.runs} --only {args.only}")
        say("pinned: each proxy with 1 worker/thread/event loop on core 1 (all three running, measured in turn, the order rotating each round); upstream (static nginx) and load generators on core 0")
        say("ratios: gateway / peer, so above 1.00 means the gateway is better (for CPU, memory and latency: peer / gateway)")
        if "keepalive" in only:
            for case in cases:
                g = results[case]["edge-gateway"]
                say(f"\nkeep-alive HTTPS, {case}: wrk -t1 -c{args.connections} -d{args.duration}s, median of {args.runs} interleaved rounds\n")
                say("| proxy | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req | req/s ratio | p99 ratio | CPU/req ratio |")
                say("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
                for name, r in results[case].items():
                    peer = name != "edge-gateway"
                    say(f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {r['cpu_us']:.1f} | "
                        f"{ratio(g['rps'], r['rps']) if peer else ''} | {ratio(g['p99'], r['p99'], False) if peer else ''} | "
                        f"{ratio(g['cpu_us'], r['cpu_us'], False) if peer else ''} |")
            say(f"\nupstream direct (plain HTTP, wrk on core 0): {direct['rps']:.0f} req/s, p50 {direct['p50']:.2f} ms, p99 {direct['p99']:.2f} ms")
            say("\ngateway upstream connection reuse (1 - new connections / requests, whole run):\n")
            say("| upstream | requests | new connections | TLS resumptions | reuse ratio |")
            say("|---|---:|---:|---:|---:|")
            for group, (requests, opened, resumed) in sorted(reuse.items()):
                say(f"| {group} | {requests} | {opened} | {resumed} | {1 - opened / requests if requests else 0:.5f} |")
        if "handshake" in only:
            say(f"\nTLS handshakes, each followed by a GET through the proxy: 4 x openssl s_time (-new: full, -reuse: resumed), {args.runs} interleaved rounds of {max(4, args.duration // 3)} s, CPU summed over the rounds\n")
            say("| proxy | full/s | proxy CPU µs per full | resumed/s | proxy CPU µs per resumed | full CPU ratio | resumed CPU ratio |")
            say("|---|---:|---:|---:|---:|---:|---:|")
            g = (hs["full"]["edge-gateway"], hs["resumed"]["edge-gateway"])
            for name in PROXIES:
                f, r = hs["full"][name], hs["resumed"][name]
                say(f"| {name} | {f['rate']:.0f} | {f['cpu_us']:.0f} | {r['rate']:.0f} | {r['cpu_us']:.0f} | "
                    f"{'' if name == 'edge-gateway' else ratio(g[0]['cpu_us'], f['cpu_us'], False)} | {'' if name == 'edge-gateway' else ratio(g[1]['cpu_us'], r['cpu_us'], False)} |")
        for section, table, upstream in (("h2", h2, "HTTP/1.1 upstream"), ("h2up", h2up, "HTTP/2 upstream (h2c): gateway protocol h2c, HAProxy proto h2, nginx grpc_pass"),
                                         ("grpc", grpc_unary, f"unary gRPC calls to the h2c upstream answering as a gRPC server, {grpc_checked}")):
            if section not in only:
                continue
            say(f"\nHTTP/2: h2load -D {max(4, args.duration // 2)} -c 10 -m 10 ({upstream}), median of {args.runs} interleaved rounds\n")
            say("| proxy | req/s | failed | proxy CPU µs/req | req/s ratio | CPU/req ratio |")
            say("|---|---:|---:|---:|---:|---:|")
            g2 = table["edge-gateway"]
            for name in PROXIES:
                peer = name != "edge-gateway"
                say(f"| {name} | {table[name]['rps']:.0f} | {table[name]['failed']} | {table[name]['cpu_us']:.1f} | "
                    f"{ratio(g2['rps'], table[name]['rps']) if peer else ''} | {ratio(g2['cpu_us'], table[name]['cpu_us'], False) if peer else ''} |")
        if "memory" in only:
            say("\nresident memory (all processes of the proxy), idle and holding idle TLS connections\n")
            say("| proxy | idle KiB | 2,000 conns KiB | KiB/conn | 10,000 conns KiB | KiB/conn | KiB/conn ratio (10,000) |")
            say("|---|---:|---:|---:|---:|---:|---:|")
            gk = mem["edge-gateway"][10000]["per_conn"]
            for name in PROXIES:
                m = mem[name]
                opened = "" if m[10000]["opened"] == 10000 else f" ({m[10000]['opened']} opened)"
                say(f"| {name} | {m['idle']} | {m[2000]['rss']} | {m[2000]['per_conn']:.1f} | {m[10000]['rss']}{opened} | {m[10000]['per_conn']:.1f} | "
                    f"{'' if name == 'edge-gateway' else ratio(gk, m[10000]['per_conn'], False)} |")
        if "rotation" in only:
            say(f"\ncertificate rotation, {args.rotations} rotations under new-connection load: gateway renames a PEM into its watched "
                "directory (no signal; served once the rename completes, 200 ms debounce for the settled re-read); nginx replaces its files and runs `nginx -s reload`\n")
            say("| proxy | file op to served p50 ms | p99 ms | requests ok | errors | p50 ratio |")
            say("|---|---:|---:|---:|---:|---:|")
            for name, r in rot.items():
                say(f"| {name} | {r['p50']:.0f} | {r['p99']:.0f} | {r['ok']} | {r['errors']} | {'' if name == 'edge-gateway' else ratio(r['p50'], rot['edge-gateway']['p50'])} |")
        if "allcores" in only:
            say(f"\nall cores: 2 workers/threads/loops each, nothing pinned, wrk -t2 -c100 -d{args.duration}s (wrk and upstream share the cores)\n")
            say("| proxy | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req | req/s ratio | CPU/req ratio |")
            say("|---|---:|---:|---:|---:|---:|---:|---:|")
            ga = allcores["edge-gateway"]
            for name, r in allcores.items():
                peer = name != "edge-gateway"
                say(f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {r['cpu_us']:.1f} | "
                    f"{ratio(ga['rps'], r['rps']) if peer else ''} | {ratio(ga['cpu_us'], r['cpu_us'], False) if peer else ''} |")
        if not args.no_append:
            with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
                f.write(f"\n## {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, `bench/run.py`\n\n")
                f.write("\n".join(out_lines) + "\n")
            print("\nappended to BENCHMARKS.md")
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
