#!/usr/bin/env python3
"""Mutual-TLS clients whose handshakes are parked just before their final flight.

  parked_mtls.py --port P --ca CA --sni NAME --count N --ready-file F --release-file F
                 --cert C --key K [--cert C --key K ...] [--max-wait S] [--tls12]

Each of N connections (identities taken round robin from the --cert/--key pairs) runs its
handshake over memory BIOs and sends only its first flight (ClientHello). Once the server's
flight is in, OpenSSL writes the client's final flight (TLS 1.3: Certificate,
CertificateVerify, Finished; TLS 1.2: Certificate, ClientKeyExchange, CertificateVerify,
ChangeCipherSpec, Finished): it is held back, not sent. When every handshake is parked the
ready file is created; when the release file appears, each held flight is sent, then
`GET /headers` (Connection: close), and the outcome is read: "admitted" with the status line
and the body, or "refused" with the alert or error. The server verifies every client
certificate only after the release, with the context each ClientHello chose, however much
was rotated meanwhile: that is what a rotation test needs to exercise. One JSON line out."""
import argparse, json, os, socket, ssl, time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--ca", required=True)
parser.add_argument("--sni", default="localhost")
parser.add_argument("--count", type=int, default=1)
parser.add_argument("--cert", action="append", required=True)
parser.add_argument("--key", action="append", required=True)
parser.add_argument("--ready-file", required=True)
parser.add_argument("--release-file", required=True)
parser.add_argument("--max-wait", type=float, default=60)
parser.add_argument("--tls12", action="store_true")
args = parser.parse_args()
assert len(args.cert) == len(args.key), "one --key per --cert"


class Parked:
    def __init__(self, index):
        self.index = index
        self.identity = args.cert[index % len(args.cert)]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(args.ca)
        ctx.load_cert_chain(self.identity, args.key[index % len(args.key)])
        if args.tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=args.sni)
        self.sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        self.held = b""
        self.done = False
        self.result = {"index": index, "identity": self.identity}

    def step(self):
        try:
            self.tls.do_handshake()
            self.done = True
        except ssl.SSLWantReadError:
            pass

    def feed(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.incoming.write(data)

    def park(self):
        """ClientHello out; the server's flight in; the client's answer held back."""
        self.step()
        self.sock.sendall(self.outgoing.read())
        while not self.held:
            self.feed()
            self.step()
            self.held = self.outgoing.read()

    def release(self):
        self.sock.sendall(self.held)

    def finish(self):
        try:
            while not self.done:  # TLS 1.2: the server's ChangeCipherSpec and Finished
                self.feed()
                self.step()
            self.tls.write(f"GET /headers HTTP/1.1\r\nHost: {args.sni}\r\nConnection: close\r\n\r\n".encode())
            self.sock.sendall(self.outgoing.read())
            response = b""
            while True:
                try:
                    chunk = self.tls.read(65536)
                    if not chunk:
                        break
                    response += chunk
                    continue
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    break
                try:
                    self.feed()
                except ConnectionError:
                    break
                out = self.outgoing.read()
                if out:
                    self.sock.sendall(out)
            text = response.decode("latin-1")
            if text.startswith("HTTP/1.1 "):
                status = text.split("\r\n", 1)[0]
                self.result.update(outcome="admitted" if " 200 " in status + " " else "refused", status=status,
                                   body=text.split("\r\n\r\n", 1)[-1][:2048])
            else:
                self.result.update(outcome="refused", error="no response" + (f": {text[:200]!r}" if text else ""))
        except (ssl.SSLError, OSError, ConnectionError) as e:
            self.result.update(outcome="refused", error=str(e))
        finally:
            self.sock.close()


clients = []
for i in range(args.count):
    client = Parked(i)
    client.park()
    clients.append(client)
open(args.ready_file, "w").close()
deadline = time.time() + args.max_wait
while not os.path.exists(args.release_file) and time.time() < deadline:
    time.sleep(0.02)
for client in clients:
    client.release()
for client in clients:
    client.finish()
print(json.dumps({"parked": len(clients), "results": [c.result for c in clients]}))
