"""Helpers shared by the benchmark programs."""
import contextlib, hashlib, os, re, shutil, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# The production build, as docs/operations.md gives it: release, with the runtime exclusivity
# checks off (the debug build the tests run keeps them; see docs/design.md).
RELEASE_BUILD = ["swift", "build", "-c", "release", "-Xswiftc", "-enforce-exclusivity=unchecked"]


def release_binary(build=True):
    """Builds (unless told not to) and returns the release edge-gateway binary."""
    if build:
        subprocess.run(RELEASE_BUILD + ["--product", "edge-gateway"], cwd=ROOT, check=True)
    binpath = subprocess.run(RELEASE_BUILD + ["--show-bin-path"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return os.path.join(binpath, "edge-gateway")


def fingerprint(port, ctx, server_name="localhost"):
    """SHA-256 of the certificate the server at 127.0.0.1:port serves for server_name."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname=server_name)
    der = s.getpeercert(binary_form=True)
    s.close()
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(path):
    """SHA-256 of the (first) certificate in a PEM file, comparable with fingerprint()."""
    der = subprocess.run(["openssl", "x509", "-in", path, "-outform", "DER"], capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def render_peer(work, name, out_name=None, **values):
    """Writes bench/peers/NAME.in into work with each @KEY@ replaced; returns its path."""
    text = open(os.path.join(ROOT, "bench/peers", name + ".in")).read()
    for key, value in values.items():
        text = text.replace("@" + key + "@", str(value))
    path = os.path.join(work, out_name or name)
    open(path, "w").write(text)
    return path


# A unary gRPC call as it is on the wire, for the benchmarks' `grpc` cases: helloworld's
# Greeter/SayHello with HelloRequest{name: "world"} (a 5-byte gRPC prefix, then the protobuf),
# sent by h2load as the body of a POST with gRPC's headers. The upstream nginx answers it as a
# gRPC server does (upstream-nginx.conf: HelloReply{message: "Hello world"}, then the trailer
# grpc-status 0), so every proxy sees a real unary call, response trailers included, from the
# same client to the same server; bench/tools/grpc_unary.py checks that with grpcio. A
# proxy's own trailers-only answer (UNAVAILABLE, say) is an HTTP 200 to h2load, but without
# the reply's bytes: the benchmarks count the calls answered by h2load's DATA bytes.
GRPC_PATH = "/h2/helloworld.Greeter/SayHello"
GRPC_REQUEST = bytes([0, 0, 0, 0, 7]) + b"\x0a\x05world"
GRPC_REPLY = bytes([0, 0, 0, 0, 13]) + b"\x0a\x0bHello world"


def write_grpc_files(work):
    """Writes the upstream's reply where upstream-nginx.conf serves it (@DIR@/grpc-root) and
    the request body; returns h2load's flags that send the call."""
    root = os.path.join(work, "grpc-root", GRPC_PATH.lstrip("/").rsplit("/", 1)[0])
    os.makedirs(root, mode=0o755, exist_ok=True)
    # nginx's worker runs as nobody: it must get through the work directory to the reply.
    os.chmod(work, os.stat(work).st_mode | 0o711)
    open(os.path.join(root, GRPC_PATH.rsplit("/", 1)[1]), "wb").write(GRPC_REPLY)
    request = os.path.join(work, "grpc-request.bin")
    open(request, "wb").write(GRPC_REQUEST)
    return ["-d", request, "-H", "content-type: application/grpc", "-H", "te: trailers"]


def grpc_python():
    """A Python that has grpcio (this one, else Debian's, where python3-grpcio installs it), or None."""
    for python in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(python) and subprocess.run([python, "-c", "import grpc"], capture_output=True).returncode == 0:
            return python
    return None


def write_gateway_config(path, workers, port, upstream, tls_upstream, watched, ca, admin, h2_upstream):
    """The gateway's side of the comparison: one HTTPS listener (HTTP/2 on), the watched
    certificate directory, a plain, a verified-TLS (/tls/) and an h2c (/h2/) upstream,
    admin on loopback."""
    with open(path, "w") as f:
        f.write(f"""workers: {workers}
listeners:
  - name: https
    address: "127.0.0.1:{port}"
    tls: {{ h2: true }}
    timeouts: {{ header: 120s, idle: 120s }}
certificates:
  sources: [ {{ directory: {watched} }} ]
  watch: {{ debounce: 200ms }}
upstreams:
  app: {{ backends: ["127.0.0.1:{upstream}"] }}
  app_tls: {{ backends: ["127.0.0.1:{tls_upstream}"], tls: {{ sni: localhost, ca_file: {ca} }} }}
  app_h2: {{ backends: ["127.0.0.1:{h2_upstream}"], protocol: h2c }}
routes: [ {{ path_prefix: /tls/, upstream: app_tls }}, {{ path_prefix: /h2/, upstream: app_h2 }}, {{ upstream: app }} ]
admin: {{ address: "127.0.0.1:{admin}" }}
""")
    return path


PROXIES = ("edge-gateway", "nginx", "haproxy")


class ValgrindPeers:
    """The gateway, nginx and HAProxy set up to run under valgrind (bench/callgrind.py,
    bench/heap.py) with one worker/thread/event loop each, the same certificate and the same
    static nginx upstream (started here, on a plain and a TLS port) as bench/run.py.
    Valgrind 3.19 cannot read the DWARF 5 of a Swift binary, so the gateway runs from a copy
    with its debug information stripped (symbols kept), and with bench/tools/dispatch_main.c
    preloaded (valgrind crashes on the way Swift's async main parks the main thread).
    `commands[name]`, `ports[name]` and `env(name)` start and reach each proxy; `close()`
    stops the upstream."""

    def __init__(self, work, gateway):
        self.work = work
        self.procs = []
        stripped = os.path.join(work, "edge-gateway")
        subprocess.run(["strip", "--strip-debug", "-o", stripped, gateway], check=True)
        libdir = os.path.join(os.path.dirname(os.path.realpath(shutil.which("swift"))), "../lib/swift/linux")
        self.shim = os.path.join(work, "dispatch_main.so")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", os.path.join(ROOT, "bench/tools/dispatch_main.c"), "-o", self.shim,
                        "-L" + libdir, "-ldispatch", "-Wl,-rpath," + libdir], check=True)
        subprocess.run(["bash", os.path.join(ROOT, "certs-example/generate.sh"), os.path.join(work, "certs")], check=True, stdout=subprocess.DEVNULL)
        self.ca = ca = os.path.join(work, "certs/ca.pem")
        cert, key = os.path.join(work, "certs/pairs/localhost.crt"), os.path.join(work, "certs/pairs/localhost.key")
        watched = os.path.join(work, "watched")
        os.makedirs(watched, exist_ok=True)
        open(os.path.join(watched, "localhost.pem"), "w").write(open(cert).read() + open(key).read())
        pem = os.path.join(work, "haproxy.pem")
        open(pem, "w").write(open(cert).read() + open(key).read())

        def render(name, **kv):
            return render_peer(work, name, **kv)
        up, tls_up, h2_up = free_port(), free_port(), free_port()
        self.procs.append(subprocess.Popen(["nginx", "-c", render("upstream-nginx.conf", DIR=work, PORT=up, TLSPORT=tls_up, H2PORT=h2_up, CERT=cert, KEY=key),
                                            "-p", work],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert wait_port(up) and wait_port(tls_up), "upstream did not start"
        self.ports = ports = {name: free_port() for name in PROXIES}
        cfg = write_gateway_config(os.path.join(work, "gateway.yaml"), 1, ports["edge-gateway"], up, tls_up, watched, ca, free_port(), h2_up)
        hap = render("haproxy.cfg", UPSTREAM=up, TLSUPSTREAM=tls_up, H2UPSTREAM=h2_up, CA=ca, PORT=ports["haproxy"], PEM=pem, WORKERS=1)
        # valgrind keeps a few descriptors for itself, below the limit HAProxy derives from maxconn.
        text = re.sub(r"maxconn \d+", "maxconn 4000", open(hap).read())
        open(hap, "w").write(text)
        self.commands = {
            "edge-gateway": [stripped, "run", "-c", cfg, "--log-level", "warning"],
            "nginx": ["nginx", "-c", render("nginx.conf", DIR=work, UPSTREAM=up, TLSUPSTREAM=tls_up, H2UPSTREAM=h2_up, CA=ca, PORT=ports["nginx"], CERT=cert,
                                            KEY=key, WORKERS=1),
                      "-p", work],
            "haproxy": ["haproxy", "-db", "-f", hap],
        }

    def env(self, name):
        env = dict(os.environ)
        if name == "edge-gateway":
            env["LD_PRELOAD"] = self.shim
        return env

    def close(self):
        for p in self.procs:
            p.terminate()
            p.wait()


def add_valgrind_options(ap, files):
    """The options bench/callgrind.py and bench/heap.py share."""
    ap.add_argument("--proxies", default=",".join(PROXIES))
    ap.add_argument("--keep", help=f"keep the {files} files in this directory")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--binary", help="measure this gateway binary instead of the release build")


@contextlib.contextmanager
def valgrind_peers(args, program, tools, packages):
    """Checks the tools, builds the gateway (unless --no-build or --binary) and yields the
    ValgrindPeers in a work directory, removed afterwards unless --keep named it."""
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{program}: '{tool}' is missing: apt-get install {packages}")
    gateway = args.binary or release_binary(build=not args.no_build)
    work = args.keep or tempfile.mkdtemp(prefix=f"edge-{program}-")
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o777)  # nginx's worker (user nobody) writes its valgrind files here
    peers = None
    try:
        peers = ValgrindPeers(work, gateway)
        yield peers
    finally:
        if peers:
            peers.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
