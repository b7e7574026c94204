"""Helpers shared by the benchmark programs."""
import hashlib, os, socket, subprocess, time

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


# The production build, as the README gives it: release, with the runtime exclusivity
# checks off (the debug build the tests run keeps them; see the README's design notes).
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


def write_gateway_config(path, workers, port, upstream, tls_upstream, watched, ca, admin):
    """The gateway's side of the comparison: one HTTPS listener (HTTP/2 on), the watched
    certificate directory, a plain and a verified-TLS upstream (/tls/), admin on loopback."""
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
routes: [ {{ path_prefix: /tls/, upstream: app_tls }}, {{ upstream: app }} ]
admin: {{ address: "127.0.0.1:{admin}" }}
""")
    return path
