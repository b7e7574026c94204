#!/usr/bin/env python3
"""HTTPS upstreams on loopback for the upstream TLS tests, one per spec, all in one process.

usage: tls_upstream.py SNI_LOG SPEC...
  SPEC  port=P,cert=FILE,key=FILE[,max=1.2][,min=1.3][,client_ca=FILE][,reset=1][,tickets=0]
        client_ca makes the server require a client certificate signed by that CA;
        reset=1 makes it read the ClientHello and reset the connection (RST) instead;
        tickets=0 makes it send no TLS 1.3 session tickets.

Every request gets 200 with the body "port=P sni=NAME client=SUBJECT" (keep-alive); each
handshake's SNI (or "-") is appended to SNI_LOG as "P NAME". Runs until killed.
"""
import http.server
import socket
import ssl
import struct
import sys
import threading


def serve(spec, sni_log):
    opts = dict(part.split("=", 1) for part in spec.split(","))
    port = int(opts["port"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(opts["cert"], opts["key"])
    if opts.get("max") == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if opts.get("min") == "1.3":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    if opts.get("tickets") == "0":
        context.num_tickets = 0
    if "client_ca" in opts:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(opts["client_ca"])

    def on_sni(sock, name, _context):
        sock.edge_sni = name or "-"
        with open(sni_log, "a") as log:
            log.write(f"{port} {name or '-'}\n")

    context.sni_callback = on_sni

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            peer = self.connection.getpeercert() or {}
            subject = dict(item[0] for item in peer.get("subject", ())).get("commonName", "-")
            body = f"port={port} sni={getattr(self.connection, 'edge_sni', '-')} client={subject}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.do_GET()

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self):
            # The handshake runs here, per connection; a failed one is an OSError that
            # socketserver drops, and the server goes on accepting.
            sock, address = self.socket.accept()
            if "reset" in opts:
                sock.recv(4096)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                raise OSError("reset during the handshake")
            return context.wrap_socket(sock, server_side=True), address

    server = Server(("127.0.0.1", port), Handler)
    server.serve_forever()


def main():
    sni_log = sys.argv[1]
    threads = [threading.Thread(target=serve, args=(spec, sni_log), daemon=True) for spec in sys.argv[2:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
