#!/usr/bin/env python3
"""What a reload and a restart cost clients that never retry: the gateway, nginx and HAProxy.

A proxy that closes an idle keep-alive connection while it reloads races the client's next
request on that connection. A browser retries such a request on a new connection; most API
clients, and every POST, do not, and the request fails. wrk never retries, so it counts
them. For each proxy, in the same run, two wrk processes load a plain-HTTP listener at
once (50 connections sending GET /, 50 sending a 2 KiB POST to /echo) while the proxy
  - reloads its configuration N times (`--reloads`, 20): the gateway on SIGHUP, nginx on
    SIGHUP to its master (`nginx -s reload`), HAProxy in master-worker mode on SIGUSR2;
  - is replaced by a new process M times (`--takeovers`, 5): the gateway through its
    handoff socket, nginx by its binary upgrade (USR2, then QUIT to the old master),
    HAProxy by a new process started with `-sf` (the old one finishes and exits).
It prints requests and failures (socket errors by kind, non-2xx answers) for each.

  python3 bench/reload.py [--binary PATH] [--reloads 20] [--takeovers 5] [--proxies gateway,nginx,haproxy] [--append]

It needs `apt-get install wrk nginx-light haproxy` and a gateway binary (the release build
by default; it is not built here: see bench/common.release_binary)."""
import argparse, datetime, os, re, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

POST_LUA = 'wrk.method = "POST"\nwrk.body = string.rep("x", 2048)\nwrk.headers["Content-Type"] = "application/octet-stream"\n'
# wrk's own "Non-2xx or 3xx responses" counts only statuses above 399; this counts every
# answer outside 2xx (each thread's count, summed by done() in the main Lua state).
COUNT_LUA = """local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) non2xx = 0 end
function response(status, headers, body) if status < 200 or status > 299 then non2xx = non2xx + 1 end end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("non2xx") end
  io.write(string.format("non-2xx counted by the script: %d\\n", n))
end
"""


def wrk(port, path, seconds, script):
    return subprocess.Popen(["wrk", "-t1", "-c50", f"-d{seconds}s", "--timeout", "5s", "-s", script, f"http://127.0.0.1:{port}{path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_result(process):
    text = process.communicate(timeout=120)[0]
    requests = int(re.search(r"(\d+) requests in", text).group(1)) if "requests in" in text else 0
    errors = dict((k, int(v)) for k, v in re.findall(r"(connect|read|write|timeout) (\d+)", text))
    counted = re.search(r"non-2xx counted by the script: (\d+)", text)
    if not counted:
        raise RuntimeError(f"wrk printed no count of non-2xx answers:\n{text}")
    errors["non-2xx"] = int(counted.group(1))
    return requests, errors


class ProcessGroup:
    """A proxy run as child processes of this program (each generation one), stopped together."""

    def stop(self):
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)


class Gateway(ProcessGroup):
    name = "gateway"

    def __init__(self, work, binary, port, upstream):
        self.work, self.binary, self.port = work, binary, port
        self.config = os.path.join(work, "gateway.yaml")
        with open(self.config, "w") as f:
            f.write(f'listeners: [ {{ name: http, address: "127.0.0.1:{port}" }} ]\n'
                    f'upstreams: {{ app: {{ backends: ["127.0.0.1:{upstream}"] }} }}\n'
                    f'routes: [ {{ upstream: app }} ]\nadmin: {{ address: "127.0.0.1:{common.free_port()}" }}\n'
                    f'handoff_socket: {work}/handoff.sock\nshutdown_grace_period: 5s\n')
        self.processes = []

    def start(self):
        log = open(os.path.join(self.work, f"gateway{len(self.processes)}.log"), "w")
        self.processes.append(subprocess.Popen([self.binary, "run", "-c", self.config], stdout=log, stderr=log))

    def reload(self):
        self.processes[-1].send_signal(signal.SIGHUP)

    def takeover(self):
        old = self.processes[-1]
        self.start()
        old.wait(timeout=30)



class Nginx:
    name = "nginx"

    def __init__(self, work, port, upstream):
        self.work, self.pid = work, os.path.join(work, "nginx.pid")
        self.config = os.path.join(work, "nginx.conf")
        with open(self.config, "w") as f:
            f.write(f"worker_processes 1;\npid {self.pid};\nerror_log {work}/nginx-error.log warn;\n"
                    "events { worker_connections 4096; }\nhttp {\n access_log off;\n"
                    f" upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n"
                    f" server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000; keepalive_timeout 120s;\n"
                    "  location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }\n}\n")

    def read_pid(self, suffix=""):
        try:
            with open(self.pid + suffix) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def start(self):
        # By its full path: the binary upgrade re-executes argv[0].
        subprocess.run([shutil.which("nginx"), "-c", self.config, "-p", self.work], check=True)
        self.master = self.read_pid()

    def reload(self):
        os.kill(self.master, signal.SIGHUP)

    def takeover(self):
        # The binary upgrade: a new master from the same binary serves beside the old one,
        # then the old master is told to finish and exit. (The old master removes the pid
        # file as it exits, so the masters are tracked here, not read back.)
        old = self.master
        os.kill(old, signal.SIGUSR2)
        deadline = time.time() + 10
        while time.time() < deadline and (self.read_pid() in (None, old)):
            time.sleep(0.05)
        self.master = self.read_pid()
        time.sleep(0.2)  # the new master's worker is listening
        os.kill(old, signal.SIGQUIT)
        while time.time() < deadline + 20 and os.path.exists(f"/proc/{old}"):
            time.sleep(0.05)

    def stop(self):
        try:
            os.kill(self.master, signal.SIGQUIT)
        except (OSError, TypeError):
            pass
        time.sleep(1)


class HAProxy(ProcessGroup):
    name = "haproxy"

    def __init__(self, work, port, upstream):
        self.work = work
        self.config = os.path.join(work, "haproxy.cfg")
        with open(self.config, "w") as f:
            f.write("global\n    maxconn 4000\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n"
                    "    timeout server 60s\n    timeout http-keep-alive 120s\n    http-reuse always\n"
                    f"frontend http\n    bind 127.0.0.1:{port}\n    default_backend app\n"
                    f"backend app\n    server app1 127.0.0.1:{upstream}\n")
        self.processes = []

    def start(self, master_worker=True):
        log = open(os.path.join(self.work, f"haproxy{len(self.processes)}.log"), "w")
        extra = ["-W"] if master_worker else []
        self.processes.append(subprocess.Popen(["haproxy", *extra, "-f", self.config], stdout=log, stderr=log))

    def reload(self):
        self.processes[-1].send_signal(signal.SIGUSR2)  # master-worker: reload the workers

    def takeover(self):
        old = self.processes[-1]
        log = open(os.path.join(self.work, f"haproxy{len(self.processes)}.log"), "w")
        self.processes.append(subprocess.Popen(["haproxy", "-f", self.config, "-sf", str(old.pid)], stdout=log, stderr=log))
        old.wait(timeout=30)



def measure(proxy, port, work, action, count, spacing):
    """Starts the proxy, loads it with wrk GET and POST, runs `action` count times; stops it."""
    seconds = int(2 + count * spacing + 3)
    get = post = None
    proxy.start() if not isinstance(proxy, HAProxy) else proxy.start(master_worker=(action == "reload"))
    try:
        if not common.wait_port(port):
            raise RuntimeError(f"{proxy.name} did not start")
        get = wrk(port, "/", seconds, os.path.join(work, "get.lua"))
        post = wrk(port, "/echo", seconds, os.path.join(work, "post.lua"))
        time.sleep(1.5)
        for _ in range(count):
            getattr(proxy, action)()
            time.sleep(spacing)
        return wrk_result(get), wrk_result(post)
    finally:
        for load in (get, post):
            if load and load.poll() is None:
                load.kill()
                load.wait()
        proxy.stop()


def failures(errors):
    failed = sum(errors.values())
    kinds = ", ".join(f"{k} {v}" for k, v in errors.items() if v)
    return f"{failed}" + (f" ({kinds})" if kinds else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", help="the gateway binary (default: the release build, not built here)")
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--takeovers", type=int, default=5)
    ap.add_argument("--proxies", default="gateway,nginx,haproxy", help="which to measure, in this order")
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    binary = args.binary or common.release_binary(build=False)
    if not os.path.exists(binary):
        sys.exit(f"no gateway binary at {binary}: build it as docs/operations.md (Production build) says, or pass --binary")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        with open(os.path.join(work, "get.lua"), "w") as f:
            f.write('wrk.method = "GET"\n' + COUNT_LUA)
        with open(os.path.join(work, "post.lua"), "w") as f:
            f.write(POST_LUA + COUNT_LUA)
        upstream_port = common.free_port()
        upstream = subprocess.Popen([binary, "demo-upstream", "--listen", f"127.0.0.1:{upstream_port}", "--threads", "1"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not common.wait_port(upstream_port):
                raise RuntimeError("the demo upstream did not start")
            makers = {"gateway": lambda p: Gateway(work, binary, p, upstream_port), "nginx": lambda p: Nginx(work, p, upstream_port),
                      "haproxy": lambda p: HAProxy(work, p, upstream_port)}
            for make in (makers[name] for name in args.proxies.split(",")):
                for action, count, spacing in (("reload", args.reloads, 0.5), ("takeover", args.takeovers, 2.5)):
                    port = common.free_port()
                    proxy = make(port)
                    (gets, get_errors), (posts, post_errors) = measure(proxy, port, work, action, count, spacing)
                    row = (proxy.name, f"{count} {action}s", gets, posts, failures(get_errors), failures(post_errors))
                    print("  ".join(str(c) for c in row), flush=True)
                    rows.append(row)
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)
    table = ["| proxy | events | GET requests | POST requests | GET failed | POST failed |", "|---|---|---|---|---|---|"]
    table += [f"| {' | '.join(str(c) for c in row)} |" for row in rows]
    print("\n".join(table))
    if args.append:
        versions = subprocess.run(["sh", "-c", "nginx -v 2>&1; haproxy -v | head -1"], capture_output=True, text=True).stdout.strip()
        with open(os.path.join(common.ROOT, "BENCHMARKS.md"), "a") as f:
            f.write(f"\n## Reloads and restarts under clients that never retry ({datetime.date.today()})\n\n"
                    f"`python3 bench/reload.py --reloads {args.reloads} --takeovers {args.takeovers}` on "
                    f"{os.cpu_count()} cores; wrk -t1 -c50 GET and wrk -t1 -c50 POST (2 KiB) at once, plain HTTP on "
                    f"127.0.0.1. {versions.replace(chr(10), '; ')}.\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
