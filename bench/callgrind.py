#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind: edge-gateway beside nginx and HAProxy.

Seconds on a shared 2-core machine move by 10-25 % from run to run; callgrind's instruction
counts do not (the same gateway binary, load and configuration give the same count to half a
per cent; nginx's moves by about 2 %, HAProxy's TLS-upstream count by up to 13 %, following
its own reuse of upstream connections), so this is the measure for an optimisation of a few
per cent. Each proxy runs under
`valgrind --tool=callgrind` with one worker/thread/event loop and the same static nginx
upstream as bench/run.py. Each figure is the difference of two runs that differ only in
the number of requests (500 warm-up, then 10 against 10 + --requests on ten new connections),
divided by that number, so start-up, handshakes and shutdown cancel out (zeroing and
dumping the counters with callgrind_control does not work here: its vgdb hangs an nginx
worker asleep in epoll_wait). Kernel time is not counted (the proxies make about the same
system calls per request: see BENCHMARKS.md), so the figure is the user-space part of the
CPU a request costs. Modes:
  keepalive     HTTP/1.1 keep-alive over TLS (h2load --h1 -c 10), plain upstream
  tls-upstream  the same through a verified TLS upstream
  h2            HTTP/2 (h2load -c 10 -m 10), plain upstream
  h2-upstream   the same, HTTP/2 to the upstream too (h2c: the gateway's `protocol: h2c`,
                HAProxy's `proto h2`, nginx's grpc_pass)
  grpc          unary gRPC calls (h2load -c 10 -m 10 sending bench/common.py's SayHello, as
                bench/run.py's grpc section) over the h2c upstream, which answers them as a
                gRPC server does; only the calls the upstream answered count
  handshake     a new TLS connection for every request (h2load --h1, a hundred connections at
                a time; a full handshake every time, h2load resumes no session), plain
                upstream: the figure is the proxy's instructions per handshake and request
h2load 1.52 negotiates TLS 1.2 (ECDHE-ECDSA-AES128-GCM-SHA256) with every proxy here.
The proxies run as common.ValgrindPeers sets them up (the gateway from a stripped copy).
Usage: python3 bench/callgrind.py [--no-build | --binary PATH] [--requests 4000] [--only keepalive,tls-upstream,h2,h2-upstream,grpc,handshake]
                                  [--proxies edge-gateway,nginx,haproxy] [--top 30] [--keep DIR]
"""
import argparse, os, re, signal, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import GRPC_PATH, GRPC_REPLY, RELEASE_BUILD, add_valgrind_options, valgrind_peers, wait_port, write_grpc_files  # noqa: E402

MODES = {"keepalive": (["--h1", "-c", "10"], "/"), "tls-upstream": (["--h1", "-c", "10"], "/tls/"), "h2": (["-c", "10", "-m", "10"], "/"),
         "h2-upstream": (["-c", "10", "-m", "10"], "/h2/"), "grpc": (["-c", "10", "-m", "10"], GRPC_PATH), "handshake": (None, "/")}


def h2load(port, path, flags, n, answer_bytes=None):
    """Sends n requests; flags None: one request per connection, in batches of 100
    connections (h2load resumes no session, so each is a full handshake). answer_bytes:
    only responses with that much DATA count (a proxy's own gRPC answer is an HTTP 200
    with none)."""
    if flags is None:
        return sum(h2load(port, path, ["--h1", "-c", str(min(100, n - k))], min(100, n - k)) for k in range(0, n, 100))
    out = subprocess.run(["h2load", "-n", str(n)] + flags + [f"https://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=600).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    done = int(m.group(1)) if m else 0
    if answer_bytes:
        data = re.search(r"\((\d+)\) data", out)
        done = min(done, int(data.group(1)) // answer_bytes if data else 0)
    return done


def totals(path):
    for line in open(path):
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    return 0


def run_once(name, command, port, env, mode, n, work, tag):
    """Starts the proxy under callgrind, sends 500 warm-up requests, then n on new
    connections, stops it gracefully and returns the instructions of all its processes
    (callgrind writes its counts when a process exits)."""
    flags, path = MODES[mode]
    # A gRPC call the proxy answers itself (UNAVAILABLE, say) is an HTTP 200 to h2load:
    # only calls that brought the upstream's reply count.
    answer_bytes = len(GRPC_REPLY) if mode == "grpc" else None
    if mode == "grpc":
        flags = flags + write_grpc_files(work)
    prefix = os.path.join(work, f"cg-{name}-{mode}-{tag}")
    for old in os.listdir(work):  # a kept directory may hold an earlier run's counts
        if old.startswith(os.path.basename(prefix) + "."):
            os.remove(os.path.join(work, old))
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={prefix}.%p", "--dump-instr=no"] + command,
                            env=env, stdout=subprocess.DEVNULL, stderr=open(prefix + ".log", "w"), start_new_session=True)
    try:
        if not wait_port(port, 180):
            sys.exit(f"callgrind: {name} did not start under valgrind (see {prefix}.log)")
        time.sleep(1)
        h2load(port, path, flags, 500)
        done = h2load(port, path, flags, n, answer_bytes)
        time.sleep(1)
        # nginx: SIGQUIT is its graceful stop; the gateway and HAProxy stop gracefully on SIGTERM.
        proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    dumps = [os.path.join(work, f) for f in os.listdir(work) if f.startswith(os.path.basename(prefix) + ".") and not f.endswith(".log")]
    return sum(totals(d) for d in dumps), done, dumps


def measure(name, command, port, env, mode, n, work):
    """Instructions per request: two runs that differ only in how many requests the second
    h2load sends (10 against 10 + n, on the same 10 connections, or in `handshake` mode on a
    connection each), so start-up, warm-up and shutdown cancel out (and but for `handshake`,
    the handshakes)."""
    base, base_done, base_dumps = run_once(name, command, port, env, mode, 10, work, "base")
    total, done, dumps = run_once(name, command, port, env, mode, 10 + n, work, "load")
    return (total - base) / max(done - base_done, 1), done - base_done, (base_dumps, dumps)


def by_function(dumps):
    """Instructions by function (self cost), summed over a run's processes."""
    costs = {}
    for dump in dumps:
        out = subprocess.run(["callgrind_annotate", "--threshold=100", dump], capture_output=True, text=True).stdout
        for row in out.split("\n"):
            m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", row)
            if m and "PROGRAM TOTALS" not in row:
                fn = re.sub(r" \[[^\]]*/([^/\]]+)\]$", r" [\1]", m.group(2))  # the object's name, not its path
                costs[fn] = costs.get(fn, 0) + int(m.group(1).replace(",", ""))
    return costs


def print_top(runs, requests, count):
    """The functions that cost most per request: the load run less the base run."""
    base, load = (by_function(dumps) for dumps in runs)
    rows = sorted(((load.get(f, 0) - base.get(f, 0)) / max(requests, 1), f) for f in set(load) | set(base))[::-1][:count]
    names = subprocess.run(["swift", "demangle", "--simplified"], input="\n".join(f for _, f in rows), capture_output=True, text=True).stdout.split("\n")
    for (cost, _), name in zip(rows, names):
        print(f"    {cost:8.0f}  {name[:150]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000, help="measured requests per mode (h2, h2-upstream: half, handshake: a quarter)")
    ap.add_argument("--only", default=",".join(MODES))
    ap.add_argument("--top", type=int, default=0, help="also print the gateway's N costliest functions (self) per mode")
    add_valgrind_options(ap, "callgrind")
    args = ap.parse_args()
    with valgrind_peers(args, "callgrind", ("valgrind", "callgrind_control", "h2load", "nginx", "haproxy", "gcc"),
                        "valgrind nghttp2-client nginx-light haproxy gcc") as setup:
        proxies = [p for p in args.proxies.split(",") if p]
        modes = [m for m in args.only.split(",") if m]
        results = {}
        for mode in modes:
            n = {"h2": args.requests // 2, "h2-upstream": args.requests // 2, "grpc": args.requests // 2, "handshake": args.requests // 4}.get(mode, args.requests)
            for name in proxies:
                ir, done, dumps = measure(name, setup.commands[name], setup.ports[name], setup.env(name), mode, n, setup.work)
                results[(mode, name)] = ir
                print(f"{mode:13s} {name:13s} {ir / 1000:7.1f}k instructions per request ({done} requests)", flush=True)
                if name == "edge-gateway" and args.top:
                    print_top(dumps, done, args.top)
        build = f"--binary {args.binary}" if args.binary else " ".join(RELEASE_BUILD[1:])
        print(f"\ngateway: {build}; gateway/peer ratios (above 1.00: the gateway runs fewer instructions):")
        for mode in modes:
            g = results.get((mode, "edge-gateway"))
            peers = [f"{name} {results[(mode, name)] / g:.2f}" for name in proxies if name != "edge-gateway" and g and (mode, name) in results]
            if peers:
                print(f"  {mode:13s} " + ", ".join(peers))

if __name__ == "__main__":
    main()
