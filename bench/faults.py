#!/usr/bin/env python3
"""Faults and overload: the gateway and nginx meet the same faults in the same run (#34).

Each fault runs against each proxy, on loopback, with the proxy alone in front of the same
upstreams, and one row is printed per fault and proxy:

  descriptors   the proxy's worker is limited (prlimit) to 16 more descriptors than it has
                open and 300 idle clients connect; a probe asks for / every 200 ms for 3 s,
                then the idle clients leave: CPU during the fault, failed probes, time until
                a request is served again, log lines
  hung backend  one of two backends accepts and never answers (read timeout 1 s, one
                failure ejects for 30 s, as `max_fails=1`); wrk, which never retries, for 5 s
  big head      the upstream's response head is 118,928 bytes (10,000 fields); wrk for 3 s
  client flood  2,000 plain-HTTP requests and 500 silent connections to the TLS port
                (handshake timeout 1 s): log lines at the default level
  h2 big head   over HTTP/2, an upstream head that HPACK encodes to 16.6 KB (7,000 `\\`) on one
                stream beside a slow stream
                (0.5 s) on the same connection: streams that got no response or were cut short
  backlog       the worker is stopped (SIGSTOP) and 2,000 clients connect: connects that
                completed (the listen queue), and the queue length `ss -ltn` shows

Log lines are those written while the fault lasts: the gateway's at its default level
(info), nginx's error log at its default level (error).

Usage: python3 bench/faults.py [--no-build] [--proxies gateway,nginx] [--faults "h2 big head,backlog"] [--append]
"""
import argparse, datetime, os, re, resource, shutil, signal, socket, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
from reload import COUNT_LUA

BIG_HEAD = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Field-%d: vv\r\n" % i for i in range(10_000)) + b"Content-Length: 2\r\n\r\nok"
# 7,000 backslashes: 19 bits each in HPACK's Huffman code, a 16.6 KB header block.
H2_HEAD = b"HTTP/1.1 200 OK\r\nX-Big: " + b"\\" * 7_000 + b"\r\nContent-Length: 2\r\n\r\nok"


def serve(port, answer):
    """A thread-per-connection upstream on port: `answer(conn)` handles each connection."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(256)

    def loop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return listener


def hang(conn):
    time.sleep(3600)  # read nothing, answer nothing


def fixed_answer(response):
    def answer(conn):
        try:
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                conn.sendall(response)
        except OSError:
            pass
    return answer


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def get(port, path="/", timeout=1.0):
    """One GET on a fresh connection; True for a 2xx answer."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".encode())
        data = s.recv(64)
        s.close()
        return data.startswith(b"HTTP/1.1 2")
    except OSError:
        return False


class Proxy:
    def lines(self):
        try:
            return sum(1 for line in open(self.log_path, errors="replace") if line.strip())
        except OSError:
            return 0


class Gateway(Proxy):
    name = "gateway"

    def __init__(self, binary, work):
        self.binary, self.work = binary, work

    def start(self, tag, port, upstreams, tls=None, listener=""):
        """upstreams: name -> (backend ports, extra YAML); tls: (cert, key) makes the listener HTTPS with h2."""
        config = os.path.join(self.work, f"gateway-{tag}.yaml")
        ups = "".join(f'  {name}: {{ backends: [{", ".join(f"{chr(34)}127.0.0.1:{p}{chr(34)}" for p in ports)}]{extra} }}\n'
                      for name, (ports, extra) in upstreams.items())
        routes = "".join(f"  - {{ path_prefix: /{name}, upstream: {name} }}\n" for name in upstreams if name != "app")
        tls_text = f", tls: {{ certificate: {tls[0]}, key: {tls[1]}, h2: true }}" if tls else ""
        with open(config, "w") as f:
            f.write(f'workers: 1\nlisteners: [ {{ name: l, address: "127.0.0.1:{port}"{tls_text}{listener} }} ]\n'
                    f"upstreams:\n{ups}routes:\n{routes}  - {{ upstream: app }}\n"
                    f'admin: {{ address: "127.0.0.1:{common.free_port()}" }}\n')
        self.log_path = os.path.join(self.work, f"gateway-{tag}.log")
        log = open(self.log_path, "w")
        self.process = subprocess.Popen([self.binary, "run", "-c", config], stdout=log, stderr=log)
        if not common.wait_port(port):
            raise RuntimeError(f"the gateway did not start: {open(self.log_path).read()[-2000:]}")
        self.worker = self.process.pid

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


class Nginx(Proxy):
    name = "nginx"

    def __init__(self, binary, work):
        self.work = work

    def start(self, tag, port, upstreams, tls=None, listener=""):
        pid = os.path.join(self.work, f"nginx-{tag}.pid")
        self.log_path = os.path.join(self.work, f"nginx-{tag}-error.log")
        open(self.log_path, "w").close()
        blocks, locations = "", ""
        for name, (ports, extra) in upstreams.items():
            servers = "".join(f" server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;" for p in ports)
            blocks += f" upstream {name} {{{servers} keepalive 32; }}\n"
            path = "/" if name == "app" else f"/{name}"
            locations += (f"  location {path} {{ proxy_pass http://{name}; proxy_http_version 1.1; proxy_set_header Connection \"\";"
                          f" proxy_read_timeout 1s; proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k; }}\n")
        ssl = f" ssl http2; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}" if tls else ""
        config = os.path.join(self.work, f"nginx-{tag}.conf")
        with open(config, "w") as f:
            # Workers as this user: prlimit may change only a process of one's own (without CAP_SYS_RESOURCE).
            f.write(f"user {os.environ.get('USER', 'root')};\nworker_processes 1;\npid {pid};\nerror_log {self.log_path};\nevents {{ worker_connections 8192; }}\n"
                    f"http {{\n access_log off;\n client_header_timeout 1s;\n{blocks}"
                    f" server {{ listen 127.0.0.1:{port} backlog=511{ssl};\n{locations} }}\n}}\n")
        subprocess.run(["nginx", "-c", config, "-p", self.work], check=True)
        if not common.wait_port(port):
            raise RuntimeError("nginx did not start")
        master = int(open(pid).read())
        deadline = time.time() + 5
        self.worker = None
        while self.worker is None and time.time() < deadline:
            children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
            self.worker = int(children[0]) if children else None
            time.sleep(0.05)
        self.master = master

    def stop(self):
        os.kill(self.master, signal.SIGQUIT)
        deadline = time.time() + 10
        while os.path.exists(f"/proc/{self.master}") and time.time() < deadline:
            time.sleep(0.05)


def descriptors(proxy, demo, pki):
    port = common.free_port()
    proxy.start("fds", port, {"app": ([demo], "")})
    get(port)
    before_lines = proxy.lines()
    limit = len(os.listdir(f"/proc/{proxy.worker}/fd")) + 16
    subprocess.run(["prlimit", "--pid", str(proxy.worker), f"--nofile={limit}:{limit}"], check=True)
    idle = []
    for _ in range(300):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        idle.append(s)
    time.sleep(0.3)
    ticks = cpu_ticks(proxy.worker)
    started = time.time()
    probes = failed = 0
    while time.time() - started < 3:
        probes += 1
        failed += 0 if get(port, timeout=0.2) else 1
        time.sleep(0.2)
    cpu = (cpu_ticks(proxy.worker) - ticks) / (time.time() - started)
    for s in idle:
        s.close()
    freed = time.time()
    while not get(port, timeout=0.2) and time.time() - freed < 20:
        time.sleep(0.02)
    recovery = time.time() - freed
    lines = proxy.lines() - before_lines
    proxy.stop()
    return dict(requests=probes, failed=failed, recovery=f"{recovery:.2f} s", lines=lines, cpu=f"{cpu:.0f} %")


def wrk_run(port, seconds, path="/"):
    script = os.path.join(tempfile.gettempdir(), "faults-count.lua")
    open(script, "w").write(COUNT_LUA)
    text = subprocess.run(["wrk", "-t1", "-c10", f"-d{seconds}s", "--timeout", "5s", "-s", script, f"http://127.0.0.1:{port}{path}"],
                          capture_output=True, text=True, timeout=120).stdout
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(v) for v in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = int(re.search(r"non-2xx counted by the script: (\d+)", text).group(1))
    return requests, errors + non2xx


def wrk_against(proxy, tag, answer, seconds, backends, extra=""):
    """wrk for `seconds` through the proxy to an upstream that handles each connection with
    `answer`, placed among `backends` (None marks its place)."""
    bad_port = common.free_port()
    listener = serve(bad_port, answer)
    port = common.free_port()
    proxy.start(tag, port, {"app": ([bad_port if b is None else b for b in backends], extra)})
    before = proxy.lines()
    requests, failed = wrk_run(port, seconds)
    lines = proxy.lines() - before
    proxy.stop()
    listener.close()
    return dict(requests=requests, failed=failed, recovery="-", lines=lines, cpu="-")


def hung_backend(proxy, demo, pki):
    extra = ", timeouts: { read: 1s }, passive_health: { max_fails: 1, fail_timeout: 30s }"
    return wrk_against(proxy, "hung", hang, 5, [None, demo], extra)


def big_head(proxy, demo, pki):
    return wrk_against(proxy, "bighead", fixed_answer(BIG_HEAD), 3, [None])


def client_flood(proxy, demo, pki):
    port = common.free_port()
    proxy.start("flood", port, {"app": ([demo], "")}, tls=pki, listener=", timeouts: { handshake: 1s }" if proxy.name == "gateway" else "")
    before = proxy.lines()
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(500)]
    for _ in range(2000):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            s.recv(100)
            s.close()
        except OSError:
            pass
    time.sleep(2)  # the silent ones time out
    for s in silent:
        s.close()
    time.sleep(0.5)
    lines = proxy.lines() - before
    proxy.stop()
    return dict(requests=2500, failed="-", recovery="-", lines=lines, cpu="-")


def h2_big_head(proxy, demo, pki):
    big_port = common.free_port()
    listener = serve(big_port, fixed_answer(H2_HEAD))
    port = common.free_port()
    proxy.start("h2", port, {"app": ([demo], ""), "big": ([big_port], "")}, tls=pki)
    before = proxy.lines()
    out = subprocess.run(["nghttp", "-v", f"https://127.0.0.1:{port}/slow?ms=500", f"https://127.0.0.1:{port}/big"],
                         capture_output=True, text=True, timeout=60).stdout
    statuses = re.findall(r":status: (\d+)", out)
    slow_ok = "slow 500ms" in out
    lines = proxy.lines() - before
    proxy.stop()
    listener.close()
    # Failed: a stream that got no response, or the slow one cut short.
    return dict(requests=2, failed=(2 - len(statuses)) + (0 if slow_ok else 1), recovery="-", lines=lines, cpu="-",
                note=f"statuses {'/'.join(statuses) or 'none'}, slow stream {'completed' if slow_ok else 'lost'}")


def backlog(proxy, demo, pki):
    port = common.free_port()
    proxy.start("backlog", port, {"app": ([demo], "")})
    queue = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    shown = queue[2] if len(queue) > 2 else "?"
    os.kill(proxy.worker, signal.SIGSTOP)
    sockets = []
    for _ in range(2000):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sockets.append(s)
    time.sleep(1.5)
    completed = 0
    for s in sockets:
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            try:
                s.getpeername()
                completed += 1
            except OSError:
                pass
    os.kill(proxy.worker, signal.SIGCONT)
    for s in sockets:
        s.close()
    proxy.stop()
    return dict(requests=2000, failed=2000 - completed, recovery="-", lines="-", cpu="-", note=f"queue {shown}, {completed} connects completed")


FAULTS = [("descriptors", descriptors), ("hung backend", hung_backend), ("big head", big_head),
          ("client flood", client_flood), ("h2 big head", h2_big_head), ("backlog", backlog)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--proxies", default="gateway,nginx")
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--faults", default=",".join(name for name, _ in FAULTS), help="which faults, by name")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    binary = common.release_binary(build=not args.no_build)
    work = tempfile.mkdtemp(prefix="faults-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", f"{work}/site.key", "-out", f"{work}/site.crt"], check=True, capture_output=True)
    pki = (f"{work}/site.crt", f"{work}/site.key")
    demo_port = common.free_port()
    demo = subprocess.Popen([binary, "demo-upstream", "--listen", f"127.0.0.1:{demo_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    common.wait_port(demo_port)
    proxies = {"gateway": Gateway, "nginx": Nginx}
    rows = []
    try:
        for fault, run in [(name, run) for name, run in FAULTS if name in args.faults.split(",")]:
            for name in args.proxies.split(","):
                proxy = proxies[name](binary, work)
                try:
                    row = run(proxy, demo_port, pki)
                except Exception as error:  # a proxy that cannot take a fault is a row too
                    row = dict(requests="-", failed="-", recovery="-", lines="-", cpu="-", note=f"error: {error}")
                    try:
                        proxy.stop()
                    except Exception:
                        pass
                rows.append((fault, name, row))
                print(f"{fault:13} {name:8} {row}", file=sys.stderr)
    finally:
        demo.terminate()
        shutil.rmtree(work, ignore_errors=True)
    table = ["| fault | proxy | requests | failed | recovery | log lines | CPU during the fault | notes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for fault, name, row in rows:
        table.append(f"| {fault} | {name} | {row['requests']} | {row['failed']} | {row['recovery']} | {row['lines']} | {row['cpu']} | {row.get('note', '')} |")
    text = "\n".join(table)
    print(text)
    if args.append:
        with open(os.path.join(common.ROOT, "BENCHMARKS.md"), "a") as f:
            f.write(f"\n## Faults and overload ({datetime.date.today()}, `python3 bench/faults.py`)\n\n"
                    "The gateway (release build) and nginx 1.22 meet the same faults in the same run; "
                    "see bench/faults.py for each fault. Log lines: the gateway's at its default level (info), "
                    "nginx's error log at its default level (error).\n\n" + text + "\n")


if __name__ == "__main__":
    main()
