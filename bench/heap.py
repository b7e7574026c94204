#!/usr/bin/env python3
"""Heap bytes per idle TLS connection, counted by valgrind's massif: edge-gateway beside nginx and HAProxy.

bench/run.py measures resident memory, which is what the issue's target is about, but RSS
moves with the heap's fragmentation and with when freed pages go back to the kernel, by a
few per cent from run to run. The heap does not: this counts the bytes each proxy keeps
allocated (malloc's own overhead included) for an idle TLS connection, and says where they
are. Each proxy runs under `valgrind --tool=massif` (one worker/thread/event loop, as
common.ValgrindPeers sets them up) and Python's ssl opens --connections TLS connections
(HTTP/1.1 by ALPN, TLS 1.3), a hundred at a time, in two halves with three idle seconds
after each. Nothing is allocated while a proxy idles, so the last heap snapshot before
each pause is the heap holding that many connections; the figure is the difference
between the two divided by the second half's connections, so start-up, warm-up and
whatever the first connections create once cancel out.
The breakdown of that figure is by who called malloc: OpenSSL, the Swift runtime (for the
gateway's and SwiftNIO's objects), the proxy's own code, libc (allocations below massif's
0.1 % threshold are in "the rest"; malloc's overhead is not broken down, so the parts add
up to a little less). nginx allocates its connection tables at start, for
worker_connections: they are in no difference, though they become resident as they are
used (bench/run.py's RSS counts them).
With --alpn h2 the connections are HTTP/2 instead (every proxy offers it here): each client
sends the connection preface and an empty SETTINGS frame, as a browser does before its
first request, and then idles, so the figure is what an idle HTTP/2 connection holds.
Usage: python3 bench/heap.py [--no-build | --binary PATH] [--connections 2000] [--proxies edge-gateway,nginx,haproxy] [--alpn h2]
"""
import argparse, asyncio, os, re, resource, signal, ssl, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_valgrind_options, valgrind_peers, wait_port  # noqa: E402

# Who asked malloc for the bytes: the object file of each direct caller of the allocator.
# The gateway's own objects and SwiftNIO's are both the Swift runtime's (swift_slowAlloc).
OWNERS = [("OpenSSL", re.compile(r"lib(crypto|ssl)\.so")), ("Swift objects (gateway and SwiftNIO)", re.compile(r"libswiftCore\.so")),
          ("the proxy's own code", re.compile(r"/(edge-gateway|nginx|haproxy)\)?$")), ("libc", re.compile(r"libc\.so"))]


class Holder:
    """Opens TLS connections from a thread of its own and keeps them until close()."""

    def __init__(self, port, ca, alpn="http/1.1"):
        self.port, self.ca, self.alpn = port, ca, alpn
        self.loop = asyncio.new_event_loop()
        self.conns = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _open(self, count):
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.set_alpn_protocols([self.alpn])
        sem = asyncio.Semaphore(100)

        async def one():
            async with sem:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=ctx, server_hostname="localhost")
                    if self.alpn == "h2":
                        # The client preface and an empty SETTINGS frame (RFC 9113 §3.4).
                        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
                        await writer.drain()
                    self.conns.append(writer)
                except OSError:
                    pass
        await asyncio.gather(*(one() for _ in range(count)))

    def open(self, count):
        asyncio.run_coroutine_threadsafe(self._open(count), self.loop).result(timeout=900)
        return len(self.conns)

    def close(self):
        async def close_all():
            for writer in self.conns:
                writer.close()
        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def snapshots(path):
    """(time ms, heap + malloc overhead bytes, detailed tree lines or None) of each massif snapshot."""
    out, cur = [], None
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("snapshot="):
            cur = {"tree": None}
            out.append(cur)
        elif cur is None:
            continue
        elif line.startswith("time="):
            cur["time"] = int(line[5:])
        elif line.startswith("mem_heap_B="):
            cur["heap"] = int(line[11:])
        elif line.startswith("mem_heap_extra_B="):
            cur["heap"] += int(line[17:])
        elif line.startswith("heap_tree=detailed") or line.startswith("heap_tree=peak"):
            cur["tree"] = []
        elif cur["tree"] is not None and re.match(r"^ *n\d+: ", line):
            cur["tree"].append(line)
    return out


def owners(tree):
    """Bytes by the object file of malloc's direct callers (OWNERS), in a detailed snapshot's tree."""
    sums = {name: 0 for name, _ in OWNERS}
    sums["the rest"] = 0
    for line in tree:
        m = re.match(r"^ (n\d+): (\d+) (.*)$", line)  # depth 1: the allocator's direct callers
        if not m:
            continue
        where = re.search(r"\(in ([^)]*)\)$", m.group(3))
        owner = next((name for name, pattern in OWNERS if where and pattern.search(where.group(1))), "the rest")
        sums[owner] += int(m.group(2))
    return sums


def measure(name, peers, count, work, alpn="http/1.1"):
    """Heap bytes per connection of the second half, and the same by owner (OWNERS)."""
    prefix = os.path.join(work, f"massif-{name}")
    for old in os.listdir(work):
        if old.startswith(os.path.basename(prefix) + "."):
            os.remove(os.path.join(work, old))
    proc = subprocess.Popen(["valgrind", "--tool=massif", "--trace-children=yes", "--time-unit=ms", "--max-snapshots=1000", "--detailed-freq=1",
                             "--threshold=0.1", f"--massif-out-file={prefix}.%p"] + peers.commands[name],
                            env=peers.env(name), stdout=subprocess.DEVNULL, stderr=open(prefix + ".log", "w"), start_new_session=True)
    started = time.monotonic()  # massif's clock (--time-unit=ms) starts with the process
    holder = None
    try:
        if not wait_port(peers.ports[name], 180):
            sys.exit(f"heap: {name} did not start under valgrind (see {prefix}.log)")
        holder = Holder(peers.ports[name], peers.ca, alpn)
        first = holder.open(count // 2)
        time.sleep(3)
        pause1 = (time.monotonic() - started) * 1000
        held = holder.open(count - count // 2)
        time.sleep(3)
        pause2 = (time.monotonic() - started) * 1000
        proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        if holder:
            holder.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The last snapshot a second before the end of each pause (nothing is allocated while
    # the proxy idles), in the process that holds the connections: the one whose heap grew
    # most (nginx's worker; its master's stays as it was).
    best = None
    for f in os.listdir(work):
        if f.startswith(os.path.basename(prefix) + ".") and not f.endswith(".log"):
            snaps = [s for s in snapshots(os.path.join(work, f)) if "time" in s]
            before = [[s for s in snaps if s["time"] < t - 1000] for t in (pause1, pause2)]
            if not before[0] or not before[1]:
                continue
            a, b = before[0][-1], before[1][-1]
            if best is None or b["heap"] - a["heap"] > best[1]["heap"] - best[0]["heap"]:
                best = (a, b)
    if best is None:
        sys.exit(f"heap: no massif output for {name} (see {prefix}.log)")
    a, b = best
    per_conn = (b["heap"] - a["heap"]) / max(held - first, 1)
    breakdown = {}
    if a["tree"] and b["tree"]:
        before, after = owners(a["tree"]), owners(b["tree"])
        breakdown = {k: (after[k] - before[k]) / max(held - first, 1) for k in after}
    return per_conn, held, first, breakdown


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--alpn", choices=["http/1.1", "h2"], default="http/1.1", help="the protocol the idle connections negotiate")
    add_valgrind_options(ap, "massif")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 3 * args.connections + 1000)), hard))
    with valgrind_peers(args, "heap", ("valgrind", "nginx", "haproxy", "gcc"), "valgrind nginx-light haproxy gcc") as peers:
        results = {}
        for name in [p for p in args.proxies.split(",") if p]:
            per_conn, held, first, breakdown = measure(name, peers, args.connections, peers.work, args.alpn)
            results[name] = per_conn
            parts = ", ".join(f"{k} {v:,.0f}" for k, v in breakdown.items() if abs(v) >= 1)
            kind = "HTTP/2 " if args.alpn == "h2" else ""
            print(f"{name:13s} {per_conn:8,.0f} bytes of heap per idle {kind}TLS connection (the last {held - first} of {held}): {parts}", flush=True)
        g = results.get("edge-gateway")
        peers_text = [f"{n} {results[n] / g:.2f}" for n in results if n != "edge-gateway" and g]
        if peers_text:
            print("gateway/peer ratios (above 1.00: the gateway holds less): " + ", ".join(peers_text))

if __name__ == "__main__":
    main()
