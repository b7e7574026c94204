import EdgeGateway
import EdgeTLS
import EdgeTestSupport
import Foundation
import XCTest

/// The HTTPS reverse proxy with real clients on loopback.
final class ProxyTests: XCTestCase {
    static let pki = try! TestPKI()
    static let leaf = try! pki.issue(["localhost", "a.example.test"])

    func baseConfig(upstreamPort: Int, extraListener: String = "", extraUpstream: String = "", routes: String? = nil) -> String {
        """
        listeners:
          - name: https
            address: "127.0.0.1:0"
            tls:
              certificate: \(Self.leaf.fullchain)
              key: \(Self.leaf.key)
          - name: http
            address: "127.0.0.1:0"
            timeouts: { header: 1s }
        \(extraListener)
        upstreams:
          app:
            backends: ["127.0.0.1:\(upstreamPort)"]
            timeouts: { read: 2s }
        \(extraUpstream)
        routes:
        \(routes ?? "  - upstream: app")
        admin:
          address: "127.0.0.1:0"
        """
    }

    func curl(_ args: [String]) throws -> ProcessResult {
        try Shell.run(["curl", "-sS", "--max-time", "30", "--cacert", Self.pki.caPath] + args)
    }

    /// Per-listener connection, handshake and request metrics, exactly counted.
    func testListenerMetricsCountConnectionsHandshakesAndRequests() async throws {
        let harness = try await GatewayHarness.start { self.baseConfig(upstreamPort: $0) }
        let port = harness.port("https"), admin = harness.gateway.adminPort!
        // The served proof's own handshakes (one TLS listener, one lineage of two names, each
        // asked for) count too: a connection and a handshake each, no request.
        XCTAssertTrue(eventually { harness.gateway.servedProof.allChecks.values.joined().contains { $0.matches == true } })
        for _ in 0..<3 { XCTAssertEqual(try curl(["-o", "/dev/null", "-w", "%{http_code}", "https://localhost:\(port)/"]).stdout, "200") }
        XCTAssertEqual(try curl(["-o", "/dev/null", "-w", "%{http_code}", "https://localhost:\(port)/status?code=404"]).stdout, "404")
        // A client that does not trust the certificate: a failed handshake.
        XCTAssertNotEqual(try Shell.run(["curl", "-sS", "--max-time", "10", "https://localhost:\(port)/"]).status, 0)
        func value(_ series: String) -> Double? {
            let text = (try? Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout) ?? ""
            return text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        XCTAssertTrue(eventually(timeout: 5) { value(#"edge_connections_open{listener="https"}"#) == 0 }, "every connection closed")
        XCTAssertEqual(value(#"edge_connections_total{listener="https"}"#), 7)
        // Open while held, closed once: the TLS handler reports the close on a TLS
        // listener, the proxy on a plain one.
        let held = [port, port, harness.port("http"), harness.port("http"), harness.port("http")].map { connectedSocket(port: $0) }
        XCTAssertFalse(held.contains(-1))
        XCTAssertTrue(eventually(timeout: 5) {
            value(#"edge_connections_open{listener="https"}"#) == 2 && value(#"edge_connections_open{listener="http"}"#) == 3
        }, "held connections are open")
        held.forEach { close($0) }
        XCTAssertTrue(eventually(timeout: 5) {
            value(#"edge_connections_open{listener="https"}"#) == 0 && value(#"edge_connections_open{listener="http"}"#) == 0
        }, "closed connections are counted closed")
        XCTAssertEqual(value(#"edge_connections_total{listener="https"}"#), 9)
        XCTAssertEqual(value(#"edge_connections_total{listener="http"}"#), 3)
        XCTAssertEqual(value(#"edge_tls_handshakes_total{listener="https",result="ok"}"#), 6)
        XCTAssertEqual(value(#"edge_tls_handshakes_total{listener="https",result="failed"}"#), 1)
        XCTAssertEqual(value(#"edge_requests_total{listener="https",class="2xx"}"#), 3)
        XCTAssertEqual(value(#"edge_requests_total{listener="https",class="4xx"}"#), 1)
        await harness.shutdown()
    }

    func testTLS13AndTheConfiguredCertificateWithOpenSSLClient() async throws {
        let harness = try await GatewayHarness.start { self.baseConfig(upstreamPort: $0) }
        let port = harness.port("https")
        let result = try Shell.run(
            ["openssl", "s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-CAfile", Self.pki.caPath, "-verify_return_error", "-ign_eof"],
            input: "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", timeout: 20
        )
        XCTAssertTrue(result.stdout.contains("New, TLSv1.3"), result.stdout)
        XCTAssertTrue(result.stdout.contains("Verify return code: 0 (ok)"), result.stdout)
        let served = try Shell.bash("openssl s_client -connect 127.0.0.1:\(port) -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial")
        XCTAssertEqual(served.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "serial=\(Self.leaf.serial)")
        XCTAssertTrue(result.stdout.contains("HTTP/1.1 200 OK"), result.stdout)
        XCTAssertTrue(result.stdout.contains("hello from the demo upstream"), result.stdout)
        // TLS 1.2 is accepted too, TLS 1.1 is not.
        let tls12 = try Shell.run(["openssl", "s_client", "-connect", "127.0.0.1:\(port)", "-tls1_2", "-servername", "localhost"], input: "", timeout: 20)
        XCTAssertTrue(tls12.stdout.contains("TLSv1.2"), tls12.stdout)
        let tls11 = try Shell.run(["openssl", "s_client", "-connect", "127.0.0.1:\(port)", "-tls1_1", "-servername", "localhost"], input: "", timeout: 20)
        XCTAssertNotEqual(tls11.status, 0)
        await harness.shutdown()
    }

    func testCurlGetsTheUpstreamBodyWithForwardedHeaders() async throws {
        let harness = try await GatewayHarness.start { self.baseConfig(upstreamPort: $0) }
        let port = harness.port("https")
        let result = try curl(["https://localhost:\(port)/headers", "-H", "Connection: keep-alive, X-Secret", "-H", "X-Secret: hop", "-H", "X-Forwarded-For: 10.9.9.9"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("x-forwarded-proto: https"), result.stdout)
        XCTAssertTrue(result.stdout.contains("x-forwarded-for: 10.9.9.9, 127.0.0.1"), result.stdout)
        XCTAssertTrue(result.stdout.contains("x-forwarded-host: localhost:\(port)"), result.stdout)
        XCTAssertTrue(result.stdout.contains("host: localhost:\(port)"), "Host is preserved: \(result.stdout)")
        XCTAssertFalse(result.stdout.contains("x-secret"), "headers named by Connection are hop-by-hop: \(result.stdout)")
        XCTAssertFalse(result.stdout.contains("connection:"), result.stdout)
        let plain = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.port("http"))/headers"])
        XCTAssertTrue(plain.stdout.contains("x-forwarded-proto: http"), plain.stdout)
        await harness.shutdown()
    }

    func testHostHeaderCanBeSetPerUpstream() async throws {
        let harness = try await GatewayHarness.start { port in
            self.baseConfig(upstreamPort: port, extraUpstream: """
                  rewritten:
                    backends: ["127.0.0.1:\(port)"]
                    host_header: internal.service
                """, routes: "  - path_prefix: /rw\n    upstream: rewritten\n  - upstream: app")
        }
        let result = try curl(["https://localhost:\(harness.port("https"))/rw/headers"])
        XCTAssertTrue(result.stdout.contains("host=internal.service"), result.stdout)
        await harness.shutdown()
    }

    func testRoutesByExactAndWildcardHostAndPathPrefix() async throws {
        let harness = try await GatewayHarness.start { port in
            self.baseConfig(upstreamPort: port, extraUpstream: """
                  rewritten:
                    backends: ["127.0.0.1:\(port)"]
                    host_header: wildcard.internal
                  exact:
                    backends: ["127.0.0.1:\(port)"]
                    host_header: exact.internal
                """, routes: """
                  - host: "*.example.test"
                    path_prefix: /api
                    upstream: rewritten
                  - host: "a.example.test"
                    upstream: exact
                """)
        }
        let port = harness.port("http")
        func hostSeen(_ host: String, _ path: String) throws -> String {
            try Shell.run(["curl", "-sS", "-H", "Host: \(host)", "http://127.0.0.1:\(port)\(path)"]).stdout
        }
        XCTAssertTrue(try hostSeen("a.example.test", "/api/x").contains("host=wildcard.internal"))
        XCTAssertTrue(try hostSeen("a.example.test:8080", "/other").contains("host=exact.internal"))
        XCTAssertTrue(try hostSeen("x.y.example.test", "/api/headers").contains("404"), "wildcard covers one label only")
        XCTAssertTrue(try hostSeen("nothing.test", "/").contains("404 Not Found"))
        await harness.shutdown()
    }

    func testLargeUploadAndDownloadStreamIntact() async throws {
        let harness = try await GatewayHarness.start { self.baseConfig(upstreamPort: $0) }
        let port = harness.port("https")
        XCTAssertEqual(try largeBodyProblems(port: port, caFile: Self.pki.caPath, directory: harness.directory), [])
        await harness.shutdown()
    }

    func testThousandKeepAliveRequestsReuseOneUpstreamConnection() async throws {
        let harness = try await GatewayHarness.start { self.baseConfig(upstreamPort: $0) }
        let port = harness.port("https")
        let before = harness.upstream.connectionCount
        let urls = (0..<1000).map { "url = \"https://localhost:\(port)/n\($0)\"\noutput = \"/dev/null\"" }.joined(separator: "\n")
        try harness.directory.write("curl.cfg", urls)
        let result = try Shell.run(["curl", "-sS", "--cacert", Self.pki.caPath, "-K", harness.directory.file("curl.cfg"), "-w", "%{http_code} %{num_connects}\n"], timeout: 120)
        let lines = result.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 1000)
        XCTAssertTrue(lines.allSatisfy { $0.hasPrefix("200") }, result.stderr)
        XCTAssertEqual(lines.filter { $0.hasSuffix(" 1") }.count, 1, "curl opened one client connection")
        XCTAssertEqual(harness.upstream.connectionCount - before, 1, "one upstream connection served all 1,000 requests")
        XCTAssertEqual(harness.upstream.requestCount, 1000)
        await harness.shutdown()
    }

    /// An upstream that answers before the request body has arrived (`/reject`): the
    /// client gets the answer and can finish sending, because the gateway reads and drops
    /// the rest of the body before it closes (lingering close). Closed at once, the
    /// connection was reset under the client after ~2.7 MB of 20.
    func testAnAnswerBeforeTheRequestBodyEndsReachesAClientStillSending() async throws {
        // /reject goes to the upstream, which answers at once; anything else has no route
        // and the gateway answers 404 itself. Either way the body is still coming.
        let harness = try await GatewayHarness.start { self.baseConfig(upstreamPort: $0, routes: "  - path_prefix: /reject\n    upstream: app") }
        let script = """
            import json, socket, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
            size, path, ending = 20_000_000, sys.argv[2], sys.argv[3].encode()
            s.sendall(b"POST %s HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n\\r\\n" % (path.encode(), size))
            chunk, sent, error = b"x" * 65536, 0, None
            try:
                while sent < size:
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError as e:
                error = type(e).__name__
            answer = b""
            try:
                while not answer.endswith(ending):
                    data = s.recv(65536)
                    if not data:
                        break
                    answer += data
            except OSError as e:
                error = (error or "") + " recv " + type(e).__name__
            print(json.dumps({"sent": min(sent, size), "error": error, "status": answer[:12].decode(errors="replace")}))
            """
        for (path, ending, status) in [("/reject?code=413", "rejected 413\n", "HTTP/1.1 413"),
                                       ("/nowhere", "no route for this host and path\n", "HTTP/1.1 404")] {
            let result = try Shell.run(["python3", "-c", script, "\(harness.port("http"))", path, ending], timeout: 60)
            let line = result.stdout.split(separator: "\n").last.map(String.init) ?? ""
            let json = (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? ["error": result.stderr]
            XCTAssertEqual(json["status"] as? String, status, "\(path): \(json)")
            XCTAssertEqual(json["sent"] as? Int, 20_000_000, "\(path): the whole body could be sent: \(json)")
            XCTAssertTrue(json["error"] is NSNull, "\(path): no reset under the client: \(json)")
        }
        await harness.shutdown()
    }

    /// `max_request_body_bytes` (nginx's client_max_body_size): a declared length over it
    /// is refused before any of the body is read (and without `100 Continue`); a chunked
    /// body is cut off when it passes it; bodies within it go through.
    func testRequestBodiesOverTheLimitGet413() async throws {
        let harness = try await GatewayHarness.start {
            self.baseConfig(upstreamPort: $0).replacingOccurrences(of: "    address: ", with: "    max_request_body_bytes: 1000000\n    address: ")
        }
        let port = harness.port("http")
        let big = harness.directory.file("big.bin"), small = harness.directory.file("small.bin")
        try Shell.bash("head -c 3000000 /dev/urandom > '\(big)'; head -c 1000000 /dev/urandom > '\(small)'")
        let smallSum = try Shell.bash("sha256sum '\(small)' | cut -c1-64").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        func post(_ file: String, _ extra: [String]) throws -> ProcessResult {
            try Shell.run(["curl", "-sS", "--max-time", "30", "-v", "--data-binary", "@\(file)"] + extra + ["http://127.0.0.1:\(port)/sha256"], timeout: 40)
        }
        // Declared too long: 413 at once; curl asked for 100-continue and never got it.
        let declared = try post(big, ["--expect100-timeout", "20"])
        XCTAssertTrue(declared.stdout.hasPrefix("413 Content Too Large: request body larger than 1000000 bytes"), declared.stdout + declared.stderr)
        XCTAssertFalse(declared.stderr.contains("HTTP/1.1 100"), declared.stderr)
        // Chunked and too long: cut off once past the limit, the client still gets the 413.
        let chunked = try post(big, ["-H", "Transfer-Encoding: chunked", "-H", "Expect:"])
        XCTAssertTrue(chunked.stdout.hasPrefix("413 Content Too Large"), chunked.stdout + chunked.stderr)
        // At the limit, both ways: through to the upstream, intact.
        XCTAssertEqual(try post(small, []).stdout.trimmingCharacters(in: .whitespacesAndNewlines), smallSum)
        XCTAssertEqual(try post(small, ["-H", "Transfer-Encoding: chunked"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines), smallSum)
        await harness.shutdown()
    }

    /// Routes that answer without an upstream (a redirect, files under a root, as an
    /// nginx `server { listen 80; }` block for certbot's webroot does), scoped to a
    /// listener, and a body limit per route.
    func testRedirectAndStaticRootRoutesPerListenerAndABodyLimitPerRoute() async throws {
        let dir = TemporaryDirectory()
        try dir.write("www/.well-known/acme-challenge/token-1", "token-1.thumbprint")
        try dir.write("www/.well-known/acme-challenge/sub/index.html", "<p>hi</p>")
        try Shell.bash("head -c 1100000 /dev/zero > '\(dir.file("www/big.bin"))'")
        let harness = try await GatewayHarness.start(directory: dir) {
            self.baseConfig(upstreamPort: $0, routes: """
                  - { listener: http, path_prefix: /.well-known/acme-challenge/, root: www }
                  - { listener: http, path_prefix: /big.bin, root: www/ }
                  - { listener: http, redirect: { port: 8443 } }
                  - { listener: https, host: a.example.test, redirect: { host: b.example.test, status: 308 } }
                  - { path_prefix: /small/, upstream: app, max_request_body_bytes: 100 }
                  - { upstream: app }
                """).replacingOccurrences(of: "      key: \(Self.leaf.key)", with: "      key: \(Self.leaf.key)\n      h2: true")
        }
        let http = harness.port("http"), https = harness.port("https")
        let acme = "http://127.0.0.1:\(http)/.well-known/acme-challenge"
        // The file, byte for byte, with nginx's default type; HEAD has its length and no body.
        let token = try curl(["-i", "\(acme)/token-1"])
        XCTAssertTrue(token.stdout.hasPrefix("HTTP/1.1 200 OK\r\n"), token.stdout)
        XCTAssertTrue(token.stdout.contains("content-type: application/octet-stream\r\n"), token.stdout)
        XCTAssertTrue(token.stdout.hasSuffix("\r\n\r\ntoken-1.thumbprint"), token.stdout)
        let head = try curl(["-I", "\(acme)/token-1"])
        XCTAssertTrue(head.stdout.contains("content-length: 18\r\n"), head.stdout)
        XCTAssertEqual(try curl(["\(acme)/sub/index.html", "-o", "/dev/null", "-w", "%{content_type}"]).stdout, "text/html; charset=utf-8")
        // Nothing outside the root, nothing but regular files, nothing but GET and HEAD.
        func status(_ args: [String]) throws -> String { try curl(["-o", "/dev/null", "-w", "%{http_code}"] + args).stdout }
        XCTAssertEqual(try status(["\(acme)/missing"]), "404")
        XCTAssertEqual(try status(["\(acme)/sub"]), "404", "a directory")
        // Normalised to /config.yaml, which the root route does not match: the listener's redirect answers.
        XCTAssertEqual(try status(["--path-as-is", "\(acme)/../../config.yaml"]), "301")
        XCTAssertEqual(try status(["\(acme)/..%2F..%2Fconfig.yaml"]), "400", "a .. behind %2F, which some backends decode")
        XCTAssertEqual(try status(["\(acme)/%zz"]), "400")
        let post = try curl(["-i", "-d", "x", "\(acme)/token-1"])
        XCTAssertTrue(post.stdout.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n") && post.stdout.contains("allow: GET, HEAD\r\n"), post.stdout)
        XCTAssertEqual(try status(["http://127.0.0.1:\(http)/big.bin"]), "403")
        XCTAssertTrue(harness.logs.contains("static file not served"), harness.logs.all.joined(separator: "\n"))
        XCTAssertTrue(harness.logs.all.contains { $0.contains("big.bin: 1100000 bytes") }, harness.logs.all.joined(separator: "\n"))
        // Everything else on the plain listener is redirected, path and query kept, port
        // dropped from the Host and the configured one used; a redirect needs a Host.
        let redirect = try curl(["-i", "-H", "Host: WWW.Example.test:80", "http://127.0.0.1:\(http)/a/b?x=1&y=2"])
        XCTAssertTrue(redirect.stdout.hasPrefix("HTTP/1.1 301 Moved Permanently\r\n"), redirect.stdout)
        XCTAssertTrue(redirect.stdout.contains("location: https://www.example.test:8443/a/b?x=1&y=2\r\n"), redirect.stdout)
        let noHost = rawExchange(port: http, send: Array("GET / HTTP/1.0\r\n\r\n".utf8))
        XCTAssertTrue(noHost.response.hasPrefix("HTTP/1.0 400"), noHost.response)
        XCTAssertEqual(harness.upstream.requestCount, 0, "the plain listener never reached the upstream")
        // The HTTPS listener is not redirected; its own redirect works over HTTP/2 too.
        XCTAssertEqual(try status(["https://localhost:\(https)/a/b"]), "200")
        XCTAssertEqual(try status(["https://localhost:\(https)/.well-known/acme-challenge/token-1"]), "200")
        XCTAssertEqual(harness.upstream.requestCount, 2)
        let moved = try curl(["-i", "--http2", "--resolve", "a.example.test:\(https):127.0.0.1", "https://a.example.test:\(https)/p?q"])
        XCTAssertTrue(moved.stdout.hasPrefix("HTTP/2 308"), moved.stdout)
        XCTAssertTrue(moved.stdout.contains("location: https://b.example.test/p?q\r\n"), moved.stdout)
        // The route's body limit, not the listener's (none).
        let small = harness.directory.file("101.bin")
        try Shell.bash("head -c 101 /dev/zero > '\(small)'")
        XCTAssertEqual(try status(["--data-binary", "@\(small)", "https://localhost:\(https)/small/x"]), "413")
        XCTAssertEqual(try status(["--http2", "--data-binary", "@\(small)", "https://localhost:\(https)/small/x"]), "413")
        XCTAssertEqual(try status(["--data-binary", "@\(small)", "https://localhost:\(https)/elsewhere"]), "200")
        await harness.shutdown()
    }

    /// `access_log`: nginx's combined format byte for byte (with its escaping), JSON with
    /// the listener, protocol, upstream and backend; a renamed file is reopened without a
    /// signal; lines still buffered at shutdown are written, not lost.
    func testAccessLogCombinedAndJSONReopenedAfterARenameAndFlushedAtShutdown() async throws {
        let dir = TemporaryDirectory()
        let harness = try await GatewayHarness.start(directory: dir) {
            self.baseConfig(upstreamPort: $0) + "\naccess_log: { path: access.log }"
        }
        let http = harness.port("http")
        let log = dir.file("access.log")
        func lines(_ path: String) -> [String] {
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }
        XCTAssertEqual(try curl(["-o", "/dev/null", "-w", "%{http_code}", "-A", "ua\"q\\", "-e", "http://ref/", "http://127.0.0.1:\(http)/status?code=404"]).stdout, "404")
        XCTAssertEqual(try curl(["-I", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(http)/"]).stdout, "200")
        let bad = rawExchange(port: http, send: Array("GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".utf8))
        XCTAssertTrue(bad.response.hasPrefix("HTTP/1.1 400"), bad.response)
        XCTAssertTrue(eventually(timeout: 5) { lines(log).count == 3 }, "buffered lines are written within a second: \(lines(log))")
        let written = lines(log)
        let stamp = #"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\]"#
        for (line, pattern) in zip(written, [
            #"^127\.0\.0\.1 - - STAMP "GET /status\?code=404 HTTP/1\.1" 404 11 "http://ref/" "ua\\x22q\\x5C"$"#,
            #"^127\.0\.0\.1 - - STAMP "HEAD / HTTP/1\.1" 200 0 "-" "curl/[^"]+"$"#,
            #"^127\.0\.0\.1 - - STAMP "-" 400 \d+ "-" "-"$"#,  // not a request it could parse: no request line, as for nginx's 400s without one
        ]) {
            XCTAssertNotNil(line.range(of: pattern.replacingOccurrences(of: "STAMP", with: stamp), options: .regularExpression), "\(line) !~ \(pattern)")
        }
        // logrotate's create mode: renamed away, a new file appears with the next batch.
        try FileManager.default.moveItem(atPath: log, toPath: log + ".1")
        try await Task.sleep(nanoseconds: 1_100_000_000)
        XCTAssertEqual(try curl(["-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(http)/after-rename"]).stdout, "200")
        XCTAssertTrue(eventually(timeout: 5) { lines(log).count == 1 }, "a new file after the rename: \(lines(log))")
        XCTAssertEqual(lines(log + ".1").count, 3)
        XCTAssertTrue(harness.logs.contains("access log reopened"))
        // Shutdown writes what is still buffered.
        XCTAssertEqual(try curl(["-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(http)/last"]).stdout, "200")
        await harness.shutdown()
        XCTAssertTrue(lines(log).last?.contains("GET /last HTTP/1.1") ?? false, "\(lines(log))")

        // JSON, over HTTP/1.1 and HTTP/2, proxied and the gateway's own answers.
        let jsonDir = TemporaryDirectory()
        let json = try await GatewayHarness.start(directory: jsonDir) {
            self.baseConfig(upstreamPort: $0, extraUpstream: "  down: { backends: [\"127.0.0.1:\(freePort())\"] }",
                            routes: "  - { path_prefix: /down, upstream: down }\n  - upstream: app")
                .replacingOccurrences(of: "      key: \(Self.leaf.key)", with: "      key: \(Self.leaf.key)\n      h2: true")
                + "\naccess_log: { path: \(jsonDir.file("access.json")), format: json }"
        }
        let https = json.port("https"), upstreamPort = json.upstream.port
        XCTAssertEqual(try curl(["--http2", "-o", "/dev/null", "-w", "%{http_code}", "-A", "a\"b\\c\u{e9}", "https://localhost:\(https)/bytes?n=5000"]).stdout, "200")
        XCTAssertEqual(try curl(["--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "https://localhost:\(https)/down"]).stdout, "502")
        await json.shutdown()
        let records = lines(jsonDir.file("access.json")).compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertEqual(records.count, 2, "\(lines(jsonDir.file("access.json")))")
        guard records.count == 2 else { return }
        XCTAssertEqual(records[0]["protocol"] as? String, "HTTP/2.0")
        XCTAssertEqual(records[0]["listener"] as? String, "https")
        XCTAssertEqual(records[0]["uri"] as? String, "/bytes?n=5000")
        XCTAssertEqual(records[0]["status"] as? Int, 200)
        XCTAssertEqual(records[0]["body_bytes_sent"] as? Int, 5000)
        XCTAssertEqual(records[0]["upstream"] as? String, "app")
        XCTAssertEqual(records[0]["backend"] as? String, "127.0.0.1:\(upstreamPort)")
        XCTAssertEqual(records[0]["client"] as? String, "127.0.0.1")
        // Escaped so the line stays JSON whatever the client sent (bytes above 0x7E one by one).
        XCTAssertEqual(records[0]["user_agent"] as? String, "a\"b\\c\u{c3}\u{a9}")
        XCTAssertTrue(records[1]["referer"] is NSNull)
        XCTAssertNotNil(records[0]["duration_ms"] as? Double)
        XCTAssertNotNil((records[0]["time"] as? String)?.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression))
        XCTAssertEqual(records[1]["protocol"] as? String, "HTTP/1.1")
        XCTAssertEqual(records[1]["status"] as? Int, 502)
        XCTAssertEqual(records[1]["upstream"] as? String, "down")
        XCTAssertTrue(records[1]["backend"] is NSNull)
    }

    /// WebSocket (RFC 6455) through the gateway: the handshake reaches the upstream with
    /// its upgrade fields, its `101` reaches the client, then messages flow both ways
    /// unframed (large ones under back-pressure), over plain HTTP and TLS; the tunnel
    /// closes with either side and after the read timeout without traffic. An upstream
    /// that declines answers as usual.
    func testWebSocketUpgradesAreTunnelledBothWays() async throws {
        let tool = repositoryRoot() + "/Tests/tools/ws_echo.py"
        let wsPort = freePort()
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        server.arguments = [tool, "server", "\(wsPort)"]
        server.standardOutput = FileHandle.nullDevice
        try server.run()
        // SIGKILL: a child of the test runner may inherit SIGTERM ignored.
        defer { kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
        XCTAssertTrue(GatewayProcess.Probe.wait(port: wsPort, timeout: 10), "the echo server listens")
        let dir = TemporaryDirectory()
        let harness = try await GatewayHarness.start(directory: dir) {
            self.baseConfig(upstreamPort: $0, extraUpstream: "  ws: { backends: [\"127.0.0.1:\(wsPort)\"], timeouts: { read: 2s } }",
                            routes: "  - { path_prefix: /ws, upstream: ws }\n  - upstream: app")
                + "\naccess_log: { path: access.json, format: json }"
        }
        let http = harness.port("http"), https = harness.port("https")
        func client(_ args: [String]) throws -> [String: Any] {
            let result = try Shell.run(["python3", tool, "client"] + args, timeout: 60)
            guard let object = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
                XCTFail("ws client: \(result.stdout) \(result.stderr)")
                return [:]
            }
            return object
        }
        // After a chunked response on the same connection, the tunnel's bytes are not
        // chunk-framed (they were, for a moment, when the sink kept its framing).
        let afterChunked = try client(["127.0.0.1", "\(http)", "/ws/chat", "--before", "/echo", "--sizes", "5,70000"])
        XCTAssertEqual(afterChunked["before_chunked"] as? Bool, true, "\(afterChunked)")
        XCTAssertEqual(afterChunked["status"] as? String, "HTTP/1.1 101 Switching Protocols", "\(afterChunked)")
        XCTAssertEqual((afterChunked["echoed"] as? [Bool])?.allSatisfy { $0 }, true, "after a chunked response: \(afterChunked)")
        for (name, args) in [("plain", ["127.0.0.1", "\(http)", "/ws/chat", "--sizes", "5,70000,1000000"]),
                             ("TLS", ["127.0.0.1", "\(https)", "/ws/chat", "--tls", Self.pki.caPath, "localhost", "--sizes", "5,300000"])] {
            let result = try client(args)
            XCTAssertEqual(result["status"] as? String, "HTTP/1.1 101 Switching Protocols", "\(name): \(result)")
            XCTAssertEqual(result["accept_ok"] as? Bool, true, "\(name): the upstream's Sec-WebSocket-Accept reaches the client")
            XCTAssertTrue((result["head"] as? String ?? "").lowercased().contains("x-seen-host: "), "\(name): the upstream's own fields too")
            XCTAssertEqual((result["echoed"] as? [Bool])?.allSatisfy { $0 }, true, "\(name): every message echoed intact: \(result["echoed"] ?? "-")")
            XCTAssertEqual(result["close_echoed"] as? Bool, true, name)
            XCTAssertEqual(result["closed_after"] as? Bool, true, "\(name): the upstream's close closes the client connection")
        }
        // No traffic for the read timeout (2 s): the tunnel is closed.
        let idle = try client(["127.0.0.1", "\(http)", "/ws/idle", "--idle", "8"])
        XCTAssertEqual(idle["closed_when_idle"] as? Bool, true, "\(idle)")
        // An upstream that does not switch answers as usual.
        let declined = try client(["127.0.0.1", "\(http)", "/ws/refuse"])
        XCTAssertEqual(declined["status"] as? String, "HTTP/1.1 403 Forbidden", "\(declined)")
        XCTAssertEqual(try curl(["-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(http)/after"]).stdout, "200")
        await harness.shutdown()
        let lines = ((try? String(contentsOfFile: dir.file("access.json"), encoding: .utf8)) ?? "").split(separator: "\n")
        let tunnels = lines.filter { $0.contains("\"status\":101") && $0.contains("\"upstream\":\"ws\"") }
        XCTAssertEqual(tunnels.count, 4, "each tunnel is logged as a 101 when it ends:\n\(lines.joined(separator: "\n"))")
        // What the upstream sent through each tunnel, frame headers included: 7 + 70,010 + 1,000,010 + a 4-byte close.
        XCTAssertTrue(tunnels.contains { $0.contains("\"uri\":\"/ws/chat\"") && $0.contains("\"body_bytes_sent\":1070031,") }, "\(tunnels)")
        XCTAssertTrue(tunnels.contains { $0.contains("\"uri\":\"/ws/chat\"") && $0.contains("\"body_bytes_sent\":300021,") }, "\(tunnels)")
    }

    func testSmugglingShapesOversizedHeadsAndSlowHeadersGetTheirAnswers() async throws {
        let harness = try await GatewayHarness.start { self.baseConfig(upstreamPort: $0) }
        let port = harness.port("http")
        let both = rawExchange(port: port, send: Array("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".utf8))
        XCTAssertTrue(both.response.hasPrefix("HTTP/1.1 400"), both.response)
        XCTAssertTrue(both.closed)
        let twoLengths = rawExchange(port: port, send: Array("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".utf8))
        XCTAssertTrue(twoLengths.response.hasPrefix("HTTP/1.1 400"), twoLengths.response)
        XCTAssertTrue(twoLengths.closed)
        let big = rawExchange(port: port, send: Array(("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + String(repeating: "a", count: 40_000) + "\r\n\r\n").utf8))
        XCTAssertTrue(big.response.hasPrefix("HTTP/1.1 431"), big.response)
        XCTAssertTrue(big.closed)
        let slow = rawExchange(port: port, send: Array("GET / HTTP/1.1\r\nHo".utf8), timeout: 5)
        XCTAssertTrue(slow.response.hasPrefix("HTTP/1.1 408"), slow.response)
        XCTAssertTrue(slow.closed)
        // CONNECT and TRACE get 405 and never reach the upstream.
        let before = harness.upstream.requestCount
        for method in ["CONNECT example.test:443", "TRACE /"] {
            let refused = rawExchange(port: port, send: Array("\(method) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            XCTAssertTrue(refused.response.hasPrefix("HTTP/1.1 405 Method Not Allowed"), refused.response)
        }
        XCTAssertEqual(harness.upstream.requestCount, before)
        // An absolute-form target is routed and forwarded by its own host, in origin form.
        let absolute = rawExchange(port: port, send: Array("GET http://other.test/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
        XCTAssertTrue(absolute.response.contains("host: other.test"), absolute.response)
        XCTAssertFalse(absolute.response.contains("host: x\r"), absolute.response)
        // HTTP/1.0 without Host: the upstream still gets the Host HTTP/1.1 requires (the group's name, as nginx does).
        let http10 = rawExchange(port: port, send: Array("GET /headers HTTP/1.0\r\n\r\n".utf8))
        XCTAssertTrue(http10.response.hasPrefix("HTTP/1.0 200"), http10.response)
        XCTAssertTrue(http10.response.contains("host: app"), http10.response)
        // Other clients are still served.
        let ok = rawExchange(port: port, send: Array("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
        XCTAssertTrue(ok.response.hasPrefix("HTTP/1.1 200"), ok.response)
        await harness.shutdown()
    }

    func testPipelinedRequestsChunkedBodiesAndFramingPerClientVersion() async throws {
        let harness = try await GatewayHarness.start { self.baseConfig(upstreamPort: $0) }
        let port = harness.port("http")
        // Three requests in one write: answered in order on one connection, the last one closes it.
        let pipelined = rawExchange(port: port, send: Array((
            "GET /headers HTTP/1.1\r\nHost: one\r\n\r\n" +
            "POST /echo HTTP/1.1\r\nHost: two\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n" +
            "GET /headers HTTP/1.1\r\nHost: three\r\nConnection: close\r\n\r\n").utf8))
        XCTAssertTrue(pipelined.closed)
        let statuses = pipelined.response.components(separatedBy: "HTTP/1.1 200").count - 1
        XCTAssertEqual(statuses, 3, pipelined.response)
        let one = pipelined.response.range(of: "host: one")?.lowerBound
        let echoed = pipelined.response.range(of: "hello\r\n")?.lowerBound
        let three = pipelined.response.range(of: "host: three")?.lowerBound
        XCTAssertNotNil(one)
        XCTAssertNotNil(echoed, "the chunked body is echoed back, re-chunked: \(pipelined.response)")
        XCTAssertTrue(pipelined.response.contains(" world\r\n0\r\nX-Trailer: t\r\nx-echo-body-bytes: 11\r\n\r\n"),
                      "the trailer went up and came back: \(pipelined.response)")
        XCTAssertNotNil(three)
        if let one, let echoed, let three { XCTAssertTrue(one < echoed && echoed < three, "in order") }
        XCTAssertTrue(pipelined.response.contains("transfer-encoding: chunked"), "a body without length reaches HTTP/1.1 chunked")
        // HTTP/1.0: never chunked, Connection-less means close after the answer.
        let old = rawExchange(port: port, send: Array("POST /echo HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello".utf8))
        XCTAssertTrue(old.response.hasPrefix("HTTP/1.0 200"), old.response)
        XCTAssertFalse(old.response.contains("transfer-encoding"), old.response)
        XCTAssertTrue(old.response.hasSuffix("hello"), old.response)
        XCTAssertTrue(old.closed)
        // HEAD: the upstream's framing headers, no body, and the connection stays usable.
        let head = rawExchange(port: port, send: Array("HEAD /bytes?n=100 HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
        XCTAssertEqual(head.response.components(separatedBy: "HTTP/1.1 200").count - 1, 2, head.response)
        XCTAssertTrue(head.response.contains("content-length: 100"), head.response)
        XCTAssertTrue(head.closed)
        await harness.shutdown()
    }

    func testUpstreamFailuresMapTo502And504AndNeverHang() async throws {
        let closedPort = freePort()
        let harness = try await GatewayHarness.start { port in
            self.baseConfig(upstreamPort: port, extraUpstream: """
                  dead:
                    backends: ["127.0.0.1:\(closedPort)"]
                """, routes: "  - path_prefix: /dead\n    upstream: dead\n  - upstream: app")
        }
        let port = harness.port("http")
        let refused = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/dead"])
        XCTAssertEqual(refused.stdout, "502")
        let slow = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/slow?ms=4000"], timeout: 20)
        XCTAssertEqual(slow.stdout, "504", "read timeout is 2s")
        // An upstream that stops mid-body: the response is cut off after the read timeout
        // (its length cannot be honoured), not left hanging.
        let stalled = try Shell.run(["curl", "-sS", "--max-time", "15", "http://127.0.0.1:\(port)/stall?ms=6000"], timeout: 20)
        XCTAssertEqual(stalled.stdout, "first ten\n")
        XCTAssertEqual(stalled.status, 18, "curl: transfer closed with bytes remaining; \(stalled.stderr)")
        let fine = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/"])
        XCTAssertEqual(fine.stdout, "200")
        await harness.shutdown()
    }

    func testConnectFailureMovesToTheNextBackend() async throws {
        let closedPort = freePort()
        let harness = try await GatewayHarness.start { port in
            self.baseConfig(upstreamPort: port, extraUpstream: """
                  mixed:
                    backends: ["127.0.0.1:\(closedPort)", "127.0.0.1:\(port)"]
                """, routes: "  - upstream: mixed")
        }
        let port = harness.port("http")
        for _ in 0..<6 {
            let result = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/"])
            XCTAssertEqual(result.stdout, "200")
        }
        await harness.shutdown()
    }

    func testUpstreamTLSIsVerifiedByDefault() async throws {
        let upstreamLeaf = try Self.pki.issue(["app.internal"])
        let chain = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: upstreamLeaf.fullchain))))
        let key = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: upstreamLeaf.key)))).key!
        let upstreamContext = try TLSContext.server(chain: chain.certificates, key: key, policy: TLSServerPolicy())
        let harness = try await GatewayHarness.start(upstreamTLS: upstreamContext) { port in
            self.baseConfig(upstreamPort: port, extraUpstream: """
                  trusted:
                    backends: ["127.0.0.1:\(port)"]
                    tls: { sni: app.internal, ca_file: \(Self.pki.caPath) }
                  system:
                    backends: ["127.0.0.1:\(port)"]
                    tls: { sni: app.internal }
                  wrongname:
                    backends: ["127.0.0.1:\(port)"]
                    tls: { sni: other.internal, ca_file: \(Self.pki.caPath) }
                """, routes: """
                  - path_prefix: /trusted
                    upstream: trusted
                  - path_prefix: /system
                    upstream: system
                  - path_prefix: /wrongname
                    upstream: wrongname
                """)
        }
        let port = harness.port("http")
        func code(_ path: String) throws -> String {
            try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)\(path)"]).stdout
        }
        XCTAssertEqual(try code("/trusted"), "200")
        XCTAssertEqual(try code("/system"), "502", "a private CA is not in the system trust store")
        XCTAssertEqual(try code("/wrongname"), "502", "hostname is verified")
        await harness.shutdown()
    }
}
