import EdgeGateway
import EdgeTLS
import EdgeTestSupport
import Foundation
import XCTest

/// HTTP/2 over ALPN and mutual TLS towards clients, with curl, h2load and openssl s_client.
final class DownstreamTLSTests: XCTestCase {
    static let pki = try! TestPKI()
    static let leaf = try! pki.issue(["localhost"])

    func config(upstreamPort: Int, tls: String) -> String {
        """
        listeners:
          - name: https
            address: "127.0.0.1:0"
            tls:
              certificate: \(Self.leaf.fullchain)
              key: \(Self.leaf.key)
        \(tls.split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
        upstreams:
          app:
            backends: ["127.0.0.1:\(upstreamPort)"]
        routes:
          - upstream: app
        admin:
          address: "127.0.0.1:0"
        """
    }

    func curl(_ args: [String]) throws -> ProcessResult {
        try Shell.run(["curl", "-sS", "--max-time", "60", "--cacert", Self.pki.caPath] + args, timeout: 120)
    }

    /// Uploads `body` with nghttp to `path`: the answer (`status`, a body containing
    /// `text`) must arrive whole and the stream then be reset with NO_ERROR (RFC 9113
    /// §8.1), not CANCEL, which clients count as a failed request.
    func assertAnswerBeforeTheBodyEnds(port: Int, body: String, path: String, status: Int, text: String,
                                       file: StaticString = #filePath, line: UInt = #line) throws {
        let frames = try Shell.run(["nghttp", "-v", "-d", body, "https://localhost:\(port)\(path)"], timeout: 60).stdout
        XCTAssertTrue(frames.contains(":status: \(status)"), frames, file: file, line: line)
        XCTAssertTrue(frames.contains(text), "the response body arrived: \(frames)", file: file, line: line)
        let reset = frames.range(of: "recv RST_STREAM frame").map { String(frames[$0.lowerBound...].prefix(120)) } ?? ""
        XCTAssertTrue(reset.contains("error_code=NO_ERROR"), "reset with NO_ERROR after the response: \(frames)", file: file, line: line)
    }

    /// The connection's client and the gateway carry on: a new request over HTTP/2 gets 200.
    func assertServesOverHTTP2(port: Int, path: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let after = try curl(["--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "https://localhost:\(port)\(path)"])
        XCTAssertEqual(after.stdout, "2 200", after.stderr, file: file, line: line)
    }

    func testHTTP2WithCurlAndH2LoadManyStreamsAndLargeBodies() async throws {
        let harness = try await GatewayHarness.start { self.config(upstreamPort: $0, tls: "h2: true") }
        let port = harness.port("https")
        let h2 = try curl(["--http2", "-w", "\n%{http_version} %{http_code}", "https://localhost:\(port)/hello"])
        XCTAssertTrue(h2.stdout.hasPrefix("hello from the demo upstream: GET /hello host=localhost:\(port)"), h2.stdout + h2.stderr)
        XCTAssertTrue(h2.stdout.hasSuffix("\n2 200"), h2.stdout)
        // Forwarded headers are right and nothing HTTP/1-specific leaks either way.
        let headers = try curl(["--http2", "https://localhost:\(port)/headers"]).stdout
        XCTAssertTrue(headers.contains("x-forwarded-proto: https"), headers)
        XCTAssertTrue(headers.contains("host: localhost:\(port)"), headers)
        // Cookie crumbs become one HTTP/1.1 field (RFC 9113 §8.2.3); HEAD has no body.
        let cookies = try curl(["--http2", "-H", "cookie: a=1", "-H", "cookie: b=2", "https://localhost:\(port)/headers"]).stdout
        XCTAssertTrue(cookies.lowercased().contains("cookie: a=1; b=2"), cookies)
        let trace = try curl(["--http2", "-X", "TRACE", "-o", "/dev/null", "-w", "%{http_code}", "https://localhost:\(port)/"])
        XCTAssertEqual(trace.stdout, "405", "TRACE is refused over HTTP/2 as over HTTP/1.1")
        let head = try curl(["--http2", "-I", "-w", "%{http_code}", "https://localhost:\(port)/hello"])
        XCTAssertTrue(head.stdout.hasSuffix("200"), head.stdout + head.stderr)
        // A short response is HEADERS and one DATA frame that ends the stream, with no
        // empty DATA frame after it (a frame more to encode, encrypt and parse per request).
        let frames = try Shell.run(["nghttp", "-v", "https://localhost:\(port)/hello"], timeout: 60).stdout
        let data = frames.split(separator: "\n").filter { $0.contains("recv DATA frame") }
        XCTAssertEqual(data.count, 1, frames)
        XCTAssertTrue(data.first?.contains("flags=0x01") ?? false, "END_STREAM on the DATA frame: \(frames)")
        XCTAssertTrue(frames.contains("hello from the demo upstream"), frames)
        // HTTP/1.1 still works on the same listener.
        let h1 = try curl(["--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "https://localhost:\(port)/"])
        XCTAssertEqual(h1.stdout, "1.1 200")

        // Many concurrent streams on one connection.
        let load = try Shell.run(["h2load", "-n", "2000", "-c", "1", "-m", "100", "https://127.0.0.1:\(port)/"], timeout: 120)
        XCTAssertTrue(load.stdout.contains("2000 succeeded, 0 failed, 0 errored"), load.stdout + load.stderr)
        XCTAssertTrue(load.stdout.contains("Application protocol: h2"), load.stdout)

        // 64 MiB up and down over one HTTP/2 stream each, intact.
        XCTAssertEqual(try largeBodyProblems(port: port, caFile: Self.pki.caPath, directory: harness.directory, flags: "--http2"), [])
        await harness.shutdown()
    }

    /// `Expect: 100-continue` over HTTP/2 gets an informational HEADERS frame (before,
    /// nothing: clients sent the body after their own timeout, curl's 1 s); an upstream
    /// that answers before the request body ends leaves a complete response and a
    /// RST_STREAM with NO_ERROR (RFC 9113 §8.1; before: CANCEL, a failed request).
    func testHTTP2ContinueAndAnAnswerBeforeTheRequestBodyEnds() async throws {
        let harness = try await GatewayHarness.start { self.config(upstreamPort: $0, tls: "h2: true") }
        let port = harness.port("https")
        let body = harness.directory.file("body.bin")
        try Shell.run(["bash", "-c", "head -c 4000000 /dev/urandom > '\(body)'"])
        let expected = try Shell.bash("sha256sum '\(body)' | cut -c1-64").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        // curl waits 30 s for the 100 here, so an answer in time means the 100 came.
        let continued = try curl(["--http2", "-v", "-H", "Expect: 100-continue", "--expect100-timeout", "30", "--data-binary", "@\(body)",
                                  "https://localhost:\(port)/sha256"])
        XCTAssertTrue(continued.stderr.contains("< HTTP/2 100"), continued.stderr)
        XCTAssertTrue(continued.stderr.contains("< HTTP/2 200"), continued.stderr)
        XCTAssertEqual(continued.stdout.trimmingCharacters(in: .whitespacesAndNewlines), expected)
        // The upstream refuses the upload at once (/reject answers without reading the body).
        try assertAnswerBeforeTheBodyEnds(port: port, body: body, path: "/reject?code=413", status: 413, text: "rejected 413")
        // The connection and the gateway carry on.
        try assertServesOverHTTP2(port: port, path: "/")
        await harness.shutdown()
    }

    /// The upstream read timeout holds for each HTTP/2 stream: a late answer is 504, a
    /// body that stops half way resets the stream, and the connection carries on.
    func testHTTP2StreamsHaveTheUpstreamReadTimeout() async throws {
        let harness = try await GatewayHarness.start {
            self.config(upstreamPort: $0, tls: "h2: true").replacingOccurrences(of: "    backends: [", with: "    timeouts: { read: 1s }\n    backends: [")
        }
        let port = harness.port("https")
        let late = try curl(["--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "https://localhost:\(port)/slow?ms=4000"])
        XCTAssertEqual(late.stdout, "2 504", late.stderr)
        let stalled = try Shell.run(["nghttp", "-v", "https://localhost:\(port)/stall?ms=4000"], timeout: 20).stdout
        XCTAssertTrue(stalled.contains("first ten"), stalled)
        XCTAssertFalse(stalled.contains("last ten"), stalled)
        XCTAssertTrue(stalled.contains("recv RST_STREAM frame"), "a cut-off response resets its stream: \(stalled)")
        // Both in one connection with a stream that finishes in time.
        let mixed = try Shell.run(["nghttp", "-v", "https://localhost:\(port)/slow?ms=4000", "https://localhost:\(port)/hello"], timeout: 20).stdout
        XCTAssertTrue(mixed.contains(":status: 504"), mixed)
        XCTAssertTrue(mixed.contains("hello from the demo upstream"), mixed)
        await harness.shutdown()
    }

    /// The gateway's own answer to an upload it will not take (no route here) ends the
    /// stream with RST_STREAM NO_ERROR after the whole response, as an upstream's early
    /// answer does; before, closing the stream reset it with CANCEL.
    func testHTTP2LocalAnswerBeforeTheRequestBodyEndsResetsWithNoError() async throws {
        let harness = try await GatewayHarness.start {
            self.config(upstreamPort: $0, tls: "h2: true").replacingOccurrences(of: "  - upstream: app", with: "  - path_prefix: /hello\n    upstream: app")
        }
        let port = harness.port("https")
        let body = harness.directory.file("body.bin")
        try Shell.run(["bash", "-c", "head -c 4000000 /dev/urandom > '\(body)'"])
        try assertAnswerBeforeTheBodyEnds(port: port, body: body, path: "/nowhere", status: 404, text: "no route for this host and path")
        try assertServesOverHTTP2(port: port, path: "/hello")
        await harness.shutdown()
    }

    /// `max_request_body_bytes` over HTTP/2: a declared length over it and a body without
    /// one that passes it both get 413 and RST_STREAM NO_ERROR; the connection carries on.
    func testHTTP2RequestBodiesOverTheLimitGet413() async throws {
        let harness = try await GatewayHarness.start {
            self.config(upstreamPort: $0, tls: "h2: true").replacingOccurrences(of: "    address: ", with: "    max_request_body_bytes: 1000000\n    address: ")
        }
        let port = harness.port("https")
        let big = harness.directory.file("big.bin")
        try Shell.bash("head -c 3000000 /dev/urandom > '\(big)'")
        // nghttp declares the length.
        try assertAnswerBeforeTheBodyEnds(port: port, body: big, path: "/sha256", status: 413, text: "request body larger than 1000000 bytes")
        // curl uploading from a pipe cannot declare one: counted as it streams.
        let streamed = try Shell.bash("cat '\(big)' | curl -sS --http2 --max-time 30 --cacert '\(Self.pki.caPath)' -T - https://localhost:\(port)/sha256", timeout: 40)
        XCTAssertTrue(streamed.stdout.hasPrefix("413 Content Too Large"), streamed.stdout + streamed.stderr)
        try assertServesOverHTTP2(port: port, path: "/")
        await harness.shutdown()
    }

    /// `tls.hsts`: every response of the listener carries the one configured field,
    /// proxied or the gateway's own, over HTTP/1.1 and HTTP/2; an upstream's is replaced.
    func testHSTSOnEveryResponseInPlaceOfTheUpstreams() async throws {
        let harness = try await GatewayHarness.start {
            self.config(upstreamPort: $0, tls: "h2: true\nhsts: { max_age: 365d, include_subdomains: true }")
                .replacingOccurrences(of: "  - upstream: app", with: "  - { path_prefix: /moved, redirect: {} }\n  - upstream: app")
        }
        let port = harness.port("https")
        let expected = "strict-transport-security: max-age=31536000; includeSubDomains\r\n"
        for version in ["--http1.1", "--http2"] {
            for path in ["/", "/status?code=503&sts=max-age=5", "/moved"] {
                let head = try curl([version, "-s", "-D", "-", "-o", "/dev/null", "https://localhost:\(port)\(path)"]).stdout
                XCTAssertEqual(head.components(separatedBy: "strict-transport-security").count - 1, 1, "\(version) \(path): one field\n\(head)")
                XCTAssertTrue(head.contains(expected), "\(version) \(path):\n\(head)")
            }
        }
        // Without hsts the upstream's own passes through.
        let plain = try await GatewayHarness.start { self.config(upstreamPort: $0, tls: "h2: true") }
        let own = try curl(["-s", "-D", "-", "-o", "/dev/null", "https://localhost:\(plain.port("https"))/status?code=200&sts=max-age=5"]).stdout
        XCTAssertTrue(own.contains("strict-transport-security: max-age=5\r\n"), own)
        await plain.shutdown()
        await harness.shutdown()
    }

    func testWithoutH2OnlyHTTP11IsNegotiated() async throws {
        let harness = try await GatewayHarness.start { self.config(upstreamPort: $0, tls: "") }
        let port = harness.port("https")
        let result = try curl(["--http2", "-o", "/dev/null", "-w", "%{http_version}", "https://localhost:\(port)/"])
        XCTAssertEqual(result.stdout, "1.1")
        await harness.shutdown()
    }

    func testMutualTLSAllowListRefusalsAndIdentityHeaders() async throws {
        let pki = Self.pki
        let dir = TemporaryDirectory()
        let allowed = try pki.issue(["allowed.client"], into: dir.path, name: "allowed")
        let other = try pki.issue(["other.client"], into: dir.path, name: "other")
        let now = Int64(Date().timeIntervalSince1970)
        let expired = try pki.issue(["allowed.client"], notBefore: now - 30 * 86400, notAfter: now - 3600, into: dir.path, name: "expired")
        let foreignPKI = try TestPKI()
        let foreign = try foreignPKI.issue(["allowed.client"], into: dir.path, name: "foreign")
        let harness = try await GatewayHarness.start { port in
            self.config(upstreamPort: port, tls: """
                h2: true
                client_auth: { ca_file: \(pki.caPath), mode: required, allow: { dns: [allowed.client] } }
                """)
        }
        let port = harness.port("https")
        func withCert(_ leaf: TestPKI.Leaf, _ extra: [String] = []) throws -> ProcessResult {
            try curl(["--cert", leaf.fullchain, "--key", leaf.key] + extra + ["https://localhost:\(port)/headers"])
        }
        for version in ["--http1.1", "--http2"] {
            let ok = try withCert(allowed, [version, "-H", "X-Forwarded-Client-Cert: Hash=forged", "-H", "X-Client-Verify: SUCCESS-forged"])
            XCTAssertEqual(ok.status, 0, ok.stderr)
            let lines = ok.stdout.split(separator: "\n")
            let xfcc = lines.filter { $0.hasPrefix("x-forwarded-client-cert:") }
            XCTAssertEqual(xfcc.count, 1, "one identity header, ours: \(ok.stdout)")
            XCTAssertTrue(xfcc.first?.contains("DNS=allowed.client") ?? false, ok.stdout)
            XCTAssertFalse(ok.stdout.contains("forged"), "spoofed identity headers never reach the upstream")
            XCTAssertTrue(lines.contains("x-client-verify: SUCCESS"), ok.stdout)
        }
        let fingerprint = try Shell.bash("openssl x509 -in '\(allowed.certificate)' -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr A-F a-f")
            .stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(try withCert(allowed).stdout.contains("Hash=\(fingerprint)"))

        let refusals: [(String, ProcessResult, String)] = [
            ("outside the allow list", try withCert(other), "not in client_auth.allow"),
            ("unknown CA", try withCert(foreign), "client certificate refused"),
            ("expired", try withCert(expired), "client certificate refused"),
            ("no certificate", try curl(["https://localhost:\(port)/headers"]), "certificate"),
        ]
        for (what, result, logged) in refusals {
            XCTAssertNotEqual(result.status, 0, "\(what) must be refused: \(result.stdout)")
            XCTAssertFalse(result.stdout.contains("hello") || result.stdout.contains("host:"), what)
            XCTAssertTrue(harness.logs.contains(logged), "\(what): no log line with '\(logged)':\n\(harness.logs.all.suffix(4).joined(separator: "\n"))")
        }
        XCTAssertTrue(harness.logs.contains("subject CN=other.client"), "the refused certificate is named")
        // openssl s_client: the allowed pair completes a request, the other one gets an alert.
        let good = try Shell.run(["bash", "-c", "printf 'GET / HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:\(port) -servername localhost -CAfile '\(pki.caPath)' -cert '\(allowed.fullchain)' -cert_chain '\(pki.intermediatePath)' -key '\(allowed.key)' 2>&1"])
        XCTAssertTrue(good.stdout.contains("HTTP/1.1 200"), good.stdout)
        let bad = try Shell.run(["bash", "-c", "printf 'GET / HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:\(port) -servername localhost -CAfile '\(pki.caPath)' -cert '\(other.fullchain)' -cert_chain '\(pki.intermediatePath)' -key '\(other.key)' 2>&1"])
        XCTAssertFalse(bad.stdout.contains("HTTP/1.1 200"), bad.stdout)
        XCTAssertTrue(bad.stdout.contains("alert"), "the refusal is a TLS alert: \(bad.stdout)")
        await harness.shutdown()
        withExtendedLifetime(foreignPKI) {}
    }

    func testANewClientCABundleAppliesWithoutARestart() async throws {
        let dir = TemporaryDirectory()
        let otherPKI = try TestPKI()
        let client = try otherPKI.issue(["partner.client"], into: dir.path, name: "partner")
        try Shell.run(["cp", Self.pki.caPath, dir.file("clients.pem")])
        let harness = try await GatewayHarness.start(directory: dir) { port in
            self.config(upstreamPort: port, tls: "client_auth: { ca_file: clients.pem }")
        }
        let port = harness.port("https")
        func attempt() throws -> Int32 {
            try curl(["-o", "/dev/null", "--cert", client.fullchain, "--key", client.key, "https://localhost:\(port)/"]).status
        }
        XCTAssertNotEqual(try attempt(), 0, "a partner CA not yet trusted")
        // The bundle gains the partner's root (written elsewhere, moved in place).
        try Shell.bash("cat '\(Self.pki.caPath)' '\(otherPKI.caPath)' > '\(dir.file("clients.tmp"))' && mv '\(dir.file("clients.tmp"))' '\(dir.file("clients.pem"))'")
        XCTAssertTrue(eventually(timeout: 10, interval: 0.2) { (try? attempt()) == 0 }, harness.logs.all.suffix(5).joined(separator: "\n"))
        XCTAssertTrue(harness.logs.contains("client CA bundle"))
        // A broken bundle keeps the last good one.
        try dir.write("clients.pem", "not a certificate\n")
        XCTAssertTrue(eventually(timeout: 10, interval: 0.2) { harness.logs.contains("contexts not rebuilt; keeping the current ones") })
        XCTAssertEqual(try attempt(), 0)
        await harness.shutdown()
        withExtendedLifetime(otherPKI) {}
    }

    func testClientAuthPerSNINameAndNoResumptionAcrossPolicies() async throws {
        let pki = Self.pki
        let dir = TemporaryDirectory()
        _ = try pki.issue(["localhost", "secure.test"], into: dir.path, name: "site")
        let client = try pki.issue(["allowed.client"], into: dir.path, name: "client")
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls:
                  certificate: site.crt
                  key: site.key
                  client_auth_by_name: { secure.test: { ca_file: \(pki.caPath), allow: { dns: [allowed.client] } } }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let port = harness.port("https")
        let resolve = ["--resolve", "secure.test:\(port):127.0.0.1"]
        XCTAssertEqual(try curl(["-o", "/dev/null", "-w", "%{http_code}", "https://localhost:\(port)/"]).stdout, "200", "no client certificate for localhost")
        XCTAssertNotEqual(try curl(resolve + ["-o", "/dev/null", "https://secure.test:\(port)/"]).status, 0, "secure.test requires one")
        let ok = try curl(resolve + ["--cert", client.fullchain, "--key", client.key, "https://secure.test:\(port)/headers"])
        XCTAssertTrue(ok.stdout.contains("x-forwarded-client-cert: Hash="), ok.stdout + ok.stderr)
        // A session made for localhost (no client certificate) never resumes on secure.test.
        for version in ["-tls1_3", "-tls1_2"] {
            let file = dir.file("s\(version)")
            let first = try sClient(port: port, "-servername localhost \(version)", sessionOut: file)
            XCTAssertTrue(first.contains("New,"), first)
            let again = try sClient(port: port, "-servername localhost \(version)", sessionIn: file)
            XCTAssertTrue(again.contains("Reused,"), "\(version) resumes on the same name")
            let cross = try sClient(port: port, "-servername secure.test \(version)", sessionIn: file)
            XCTAssertFalse(cross.contains("Reused,"), "\(version): resumption must not skip client authentication:\n\(cross.prefix(500))")
        }
        await harness.shutdown()
    }

    func testOptionalClientAuthForwardsNoneWithoutACertificate() async throws {
        let harness = try await GatewayHarness.start { port in
            self.config(upstreamPort: port, tls: "client_auth: { ca_file: \(Self.pki.caPath), mode: optional }")
        }
        let port = harness.port("https")
        let anonymous = try curl(["https://localhost:\(port)/headers"])
        XCTAssertEqual(anonymous.status, 0, anonymous.stderr)
        XCTAssertTrue(anonymous.stdout.contains("x-client-verify: NONE"), anonymous.stdout)
        XCTAssertFalse(anonymous.stdout.contains("x-forwarded-client-cert"), anonymous.stdout)
        await harness.shutdown()
    }
}

/// Session resumption across instances that share a ticket-key file, and across key rotations.
final class SessionTicketTests: XCTestCase {
    func startGateway(_ dir: TemporaryDirectory, name: String, leaf: TestPKI.Leaf, upstream: Int,
                      tickets: String = "{ key_file: ticket.keys }") throws -> (GatewayProcess, Int) {
        let https = freePort(), admin = freePort()
        try dir.write("\(name).yaml", """
            listeners:
              - name: https
                address: "127.0.0.1:\(https)"
                tls:
                  certificate: \(leaf.fullchain)
                  key: \(leaf.key)
                  session_tickets: \(tickets)
            upstreams: { app: { backends: ["127.0.0.1:\(upstream)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        let gateway = try GatewayProcess(config: dir.file("\(name).yaml"), logPath: dir.file("\(name).log"))
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        return (gateway, https)
    }

    func session(_ port: Int, _ version: String, out: String? = nil, in input: String? = nil) throws -> String {
        try sClient(port: port, "-servername localhost \(version)", sessionOut: out, sessionIn: input)
    }

    func testInstancesSharingAKeyFileResumeEachOthersSessionsAndFollowRotation() throws {
        let pki = try TestPKI()
        let dir = TemporaryDirectory()
        let leaf = try pki.issue(["localhost"], into: dir.path, name: "site")
        // doc-command: openssl rand 80 | base64 -w0
        let keyA = try Shell.bash("openssl rand 80 | base64 -w0").stdout
        let keyB = try Shell.bash("openssl rand 80 | base64 -w0").stdout
        try dir.write("ticket.keys", keyA + "\n")
        let (first, portA) = try startGateway(dir, name: "a", leaf: leaf, upstream: freePort())
        let (second, portB) = try startGateway(dir, name: "b", leaf: leaf, upstream: freePort())
        defer { first.stop(); second.stop() }
        for version in ["-tls1_3", "-tls1_2"] {
            let file = dir.file("session\(version)")
            XCTAssertTrue(try session(portA, version, out: file).contains("New,"))
            let resumed = try session(portB, version, in: file)
            XCTAssertTrue(resumed.contains("Reused,"), "\(version): a ticket from instance A resumes on instance B:\n\(resumed.prefix(400))")
        }
        // Rotation by the key file: a new key first, the old one still decrypts.
        let old = dir.file("session-old")
        XCTAssertTrue(try session(portA, "-tls1_3", out: old).contains("New,"))
        try dir.write("ticket.keys.tmp", keyB + "\n" + keyA + "\n")
        try Shell.run(["mv", dir.file("ticket.keys.tmp"), dir.file("ticket.keys")])
        XCTAssertTrue(eventually(timeout: 5) { first.log.contains("session ticket keys reloaded") && second.log.contains("session ticket keys reloaded") })
        XCTAssertTrue(try session(portB, "-tls1_3", in: old).contains("Reused,"), "the previous key still decrypts")
        // The old key removed: its tickets no longer resume (full handshake, not an error).
        try dir.write("ticket.keys.tmp", keyB + "\n")
        try Shell.run(["mv", dir.file("ticket.keys.tmp"), dir.file("ticket.keys")])
        XCTAssertTrue(eventually(timeout: 5) { first.log.components(separatedBy: "session ticket keys reloaded").count == 3 })
        let refused = try session(portA, "-tls1_3", in: old)
        XCTAssertTrue(refused.contains("New,"), "a retired key's ticket gets a full handshake: \(refused.prefix(300))")
        // A broken key file keeps the current keys and says why.
        try dir.write("ticket.keys", "not base64 at all\n")
        XCTAssertTrue(eventually(timeout: 5) { first.log.contains("session ticket key file rejected") }, first.log)
        XCTAssertTrue(first.log.contains("80 bytes"), first.log)
        XCTAssertFalse(first.log.contains(keyA) || first.log.contains(keyB), "key material never reaches the log")
    }

    /// One TLS 1.3 ticket per handshake by default (each costs CPU); `num_tickets` sends more.
    func testOneTicketPerHandshakeUnlessNumTicketsAsksForMore() throws {
        let pki = try TestPKI()
        let dir = TemporaryDirectory()
        let leaf = try pki.issue(["localhost"], into: dir.path, name: "site")
        let (byDefault, portA) = try startGateway(dir, name: "a", leaf: leaf, upstream: freePort(), tickets: "{}")
        let (three, portB) = try startGateway(dir, name: "b", leaf: leaf, upstream: freePort(), tickets: "{ num_tickets: 3 }")
        defer { byDefault.stop(); three.stop() }
        func tickets(_ port: Int) throws -> Int {
            try session(port, "-tls1_3").components(separatedBy: "Post-Handshake New Session Ticket arrived").count - 1
        }
        XCTAssertEqual(try tickets(portA), 1)
        XCTAssertEqual(try tickets(portB), 3)
    }
}

/// HTTP/2 protection: rapid reset, oversized header lists and malformed header blocks, with raw frames.
final class HTTP2AbuseTests: XCTestCase {
    func abuse(_ mode: String, port: Int, _ n: Int) throws -> [String: Any] {
        let result = try Shell.run(["python3", repositoryRoot() + "/Tests/tools/h2_abuse.py", mode, "\(port)", "\(n)"], timeout: 60)
        let line = result.stdout.split(separator: "\n").last.map(String.init) ?? ""
        return (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? ["error": result.stderr]
    }

    /// A gateway with one h2 listener; `listener` adds keys to it, `tls` to its `tls:` map.
    func h2Gateway(_ pki: TestPKI, listener: String, tls: String = "") async throws -> GatewayHarness {
        let leaf = try pki.issue(["localhost"])
        return try await GatewayHarness.start { port in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                \(listener)
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true\(tls) }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
    }

    /// A gRPC call (grpcio, a real client) that the gateway cannot pass on gets a gRPC
    /// answer, as Envoy gives: a trailers-only response (HTTP 200, one HEADERS frame with
    /// END_STREAM) whose `grpc-status` is gRPC's mapping of the HTTP error and whose
    /// `grpc-message` is the gateway's reason. Before, the client got the 502's HTML-less
    /// text body and made up "Received http2 header with status: 502".
    func testAGRPCCallTheGatewayCannotPassOnGetsAGRPCStatus() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dead = freePort()
        let harness = try await GatewayHarness.start { port in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
            upstreams:
              app: { backends: ["127.0.0.1:\(port)"] }
              # Never ejected: each call here meets the refused connect, not "no healthy backend".
              gone: { backends: ["127.0.0.1:\(dead)"], passive_health: { max_fails: 0 } }
            routes:
              - { path_prefix: /dead., upstream: gone }
              - { path_prefix: /hello, upstream: app }
              - { path_prefix: /slow, upstream: app }
            admin: { address: "127.0.0.1:0" }
            """
        }
        let port = harness.port("https")
        func call(_ method: String) throws -> [String: Any] {
            let result = try Shell.run(["/usr/bin/python3", repositoryRoot() + "/Tests/tools/grpc_call.py", "\(port)", pki.caPath, method], timeout: 60)
            let line = result.stdout.split(separator: "\n").last.map(String.init) ?? ""
            return (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? ["error": result.stderr]
        }
        let unavailable = try call("/dead.Service/Get")
        XCTAssertEqual(unavailable["code"] as? String, "UNAVAILABLE", "\(unavailable)")
        XCTAssertEqual(unavailable["details"] as? String, "upstream unavailable", "the gateway's reason: \(unavailable)")
        let unimplemented = try call("/nowhere.Service/Get")
        XCTAssertEqual(unimplemented["code"] as? String, "UNIMPLEMENTED", "\(unimplemented)")
        XCTAssertEqual(unimplemented["details"] as? String, "no route for this host and path", "\(unimplemented)")

        // On the wire: one HEADERS frame that ends the stream, no DATA.
        let frames = try Shell.run(["nghttp", "-v", "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", "/dev/null",
                                    "https://localhost:\(port)/dead.Service/Get"], timeout: 60).stdout
        XCTAssertTrue(frames.contains(":status: 200") && frames.contains("grpc-status: 14"), frames)
        XCTAssertTrue(frames.contains("recv HEADERS frame") && frames.contains("; END_STREAM | END_HEADERS"), "trailers-only: \(frames)")
        XCTAssertFalse(frames.contains("recv DATA frame"), frames)
        // A call whose deadline (grpc-timeout, 300 ms) passes while the upstream takes 3 s:
        // DEADLINE_EXCEEDED from the gateway, not the upstream's answer when it comes.
        let late = try Shell.run(["nghttp", "-v", "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", "grpc-timeout: 300m",
                                  "-d", "/dev/null", "https://localhost:\(port)/slow?ms=3000"], timeout: 60).stdout
        XCTAssertTrue(late.contains(":status: 200") && late.contains("grpc-status: 4"), "DEADLINE_EXCEEDED: \(late)")
        XCTAssertTrue(late.contains("grpc-message: deadline exceeded (grpc-timeout)"), late)
        // Anything that is not gRPC still gets the HTTP error.
        let plain = try Shell.run(["curl", "-sS", "--max-time", "60", "--cacert", pki.caPath, "--http2", "-w", "\n%{http_code}",
                                   "https://localhost:\(port)/dead.Service/Get"], timeout: 120)
        XCTAssertTrue(plain.stdout.hasSuffix("502 Bad Gateway: upstream unavailable\n\n502"), plain.stdout + plain.stderr)
        // Counted as the errors they stand for, not as the 200s on the wire.
        let admin = harness.gateway.adminPort!
        XCTAssertEqual(metricSum(#"edge_requests_total{listener="https",class="5xx"}"#, admin: admin), 4)
        XCTAssertEqual(metricSum(#"edge_requests_total{listener="https",class="4xx"}"#, admin: admin), 1)
        XCTAssertEqual(metricSum(#"edge_requests_total{listener="https",class="2xx"}"#, admin: admin) ?? 0, 0)
        await harness.shutdown()
    }

    /// Trailers end to end (gRPC's status travels in them): a chunked request's trailers
    /// reach the upstream and the upstream's response trailers reach the client, over
    /// HTTP/2 (nghttp: a trailer HEADERS frame each way) and HTTP/1.1 (a raw client: the
    /// trailer section of the last chunk each way). Before, both were dropped.
    func testTrailersGoThroughBothWaysOverHTTP2AndHTTP11() async throws {
        let pki = try TestPKI()
        let harness = try await h2Gateway(pki, listener: "")
        let port = harness.port("https")
        // nghttp sends a content-length and `trailer: x-checksum`: the announced trailers
        // take the body upstream chunked, which carries them.
        let h2 = try Shell.bash("printf hello | nghttp -v -d - --trailer 'x-checksum: abc' https://localhost:\(port)/echo", timeout: 60).stdout
        // nghttp prints a frame's fields before the frame's own line.
        let received = h2.components(separatedBy: "recv HEADERS frame").dropFirst()
        XCTAssertEqual(received.count, 2, "the head, then the trailers: \(h2)")
        let trailerFrame = received.last?.split(separator: "\n").first ?? ""
        XCTAssertTrue(trailerFrame.contains("flags=0x05"), "the trailers' HEADERS frame ends the stream (END_STREAM | END_HEADERS): \(h2)")
        XCTAssertTrue(received.first?.contains(") x-checksum: abc") == true && received.first?.contains(") x-echo-body-bytes: 5") == true,
                      "the request's trailers came back, after the body: \(h2)")

        let h1 = try Shell.run(["/usr/bin/python3", "-c", """
            import socket, ssl, sys
            ctx = ssl.create_default_context(cafile=sys.argv[2])
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="localhost")
            s.sendall(b"POST /echo HTTP/1.1\\r\\nHost: localhost\\r\\nTransfer-Encoding: chunked\\r\\nConnection: close\\r\\n\\r\\n"
                      b"5\\r\\nhello\\r\\n0\\r\\nX-Checksum: def\\r\\n\\r\\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            sys.stdout.write(data.decode("latin-1"))
            """, "\(port)", pki.caPath], timeout: 60).stdout
        XCTAssertTrue(h1.hasPrefix("HTTP/1.1 200 OK\r\n"), h1)
        XCTAssertTrue(h1.hasSuffix("\r\n0\r\nX-Checksum: def\r\nx-echo-body-bytes: 5\r\n\r\n"), "the trailer section came back: \(h1.debugDescription)")
        await harness.shutdown()
    }

    func testRapidResetIsCutOffAndHugeHeaderListsAreRefused() async throws {
        let pki = try TestPKI()
        let harness = try await h2Gateway(pki, listener: "max_request_head_bytes: 16384", tls: ", http2: { max_resets_per_30s: 100 }")
        let port = harness.port("https")
        let reset = try abuse("rapid-reset", port: port, 1000)
        XCTAssertEqual(reset["goaway"] as? Int, 11, "ENHANCE_YOUR_CALM ends a rapid-reset connection: \(reset)")
        XCTAssertEqual(reset["closed"] as? Bool, true, "\(reset)")
        XCTAssertLessThan(reset["closed_after"] as? Double ?? 99, 3, "closed after its GOAWAY, not left open to answer more frames: \(reset)")
        // A flood of PINGs (200 control frames in 30 s pass): ENHANCE_YOUR_CALM too.
        let pings = try abuse("ping-flood", port: port, 300)
        XCTAssertEqual(pings["goaway"] as? Int, 11, "\(pings)")
        XCTAssertEqual(pings["closed"] as? Bool, true, "\(pings)")
        let big = try abuse("big-header", port: port, 64 * 1024)
        XCTAssertEqual(big["responses"] as? Int, 0, "a 64 KiB header list is never proxied: \(big)")
        XCTAssertTrue(big["goaway"] is Int || !((big["rst_codes"] as? [Int]) ?? []).isEmpty || big["closed"] as? Bool == true, "\(big)")
        // Other clients are still served.
        let ok = try Shell.run(["curl", "-sS", "--http2", "--cacert", pki.caPath, "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "https://localhost:\(port)/"])
        XCTAssertEqual(ok.stdout, "2 200")
        XCTAssertLessThan(harness.upstream.requestCount, 1000, "reset streams were not all proxied")
        await harness.shutdown()
    }

    /// A request declaring an empty body (`content-length: 0`) whose client never ends
    /// the stream: answered, then the stream is ended with RST_STREAM(NO_ERROR). Before, it
    /// stayed half open with no deadline, and its connection never idled out.
    func testAnEmptyRequestLeftOpenIsEndedAfterItsResponse() async throws {
        let harness = try await h2Gateway(try TestPKI(), listener: "")
        let result = try abuse("open-empty", port: harness.port("https"), 0)
        XCTAssertEqual(result["ended"] as? Bool, true, "the whole response: \(result)")
        XCTAssertEqual((result["rst_streams"] as? [String: Int])?["1"], 0, "then NO_ERROR: \(result)")
        await harness.shutdown()
    }

    /// A request whose method is not a token gets `400`; its body still arriving, the
    /// stream is then reset with NO_ERROR, so the client keeps the answer (RFC 9113
    /// §8.1), as after any other early answer. It was reset with CANCEL, which clients
    /// report as a failed request instead of the 400.
    func testABadRequestWithItsBodyArrivingEndsWithNoError() async throws {
        let harness = try await h2Gateway(try TestPKI(), listener: "")
        let result = try abuse("bad-method", port: harness.port("https"), 0)
        XCTAssertEqual(result["responses"] as? Int, 1, "\(result)")
        XCTAssertEqual(result["ended"] as? Bool, true, "the whole 400: \(result)")
        XCTAssertEqual((result["rst_streams"] as? [String: Int])?["1"], 0, "then NO_ERROR: \(result)")
        XCTAssertEqual(harness.upstream.requestCount, 0)
        await harness.shutdown()
    }

    /// A client that never opens its stream's window (SETTINGS_INITIAL_WINDOW_SIZE 0, no
    /// WINDOW_UPDATE): the whole 50 kB response is read from the upstream into NIO, the
    /// exchange is over, and the stream waits for the window. Before, it waited for ever,
    /// holding the response (64 KiB per stream, a hundred streams a connection) and keeping
    /// the connection from idling out. Now a stream whose response moved not at all for the
    /// idle timeout (2 s here) is reset with CANCEL, as an HTTP/1.1 connection whose client
    /// reads nothing is closed at its idle timeout.
    func testAStreamWhoseClientNeverOpensItsWindowIsResetAtTheIdleTimeout() async throws {
        let harness = try await h2Gateway(try TestPKI(), listener: "timeouts: { idle: 2s }")
        let result = try abuse("no-window", port: harness.port("https"), 50_000)
        XCTAssertEqual(result["responses"] as? Int, 1, "the head went out (HEADERS are not flow-controlled): \(result)")
        XCTAssertEqual(result["rst_codes"] as? [Int], [8], "then CANCEL: \(result)")
        let after = result["rst_after"] as? Double ?? 99
        XCTAssertTrue(after >= 1.9 && after < 4.5, "after the idle timeout and at most half of it more: \(result)")
        XCTAssertEqual(result["body"] as? String, "", "\(result)")
        await harness.shutdown()
    }

    /// A slow reader is not a stalled one: a client that opens its window by 1 KiB every
    /// 200 ms takes a 60 kB response at 5 kB/s, so a response piece NIO writes in one go
    /// takes longer than the idle timeout (2 s) to go out, but each WINDOW_UPDATE is
    /// progress, and the stream is not reset.
    func testASlowReaderWhoseWindowOpensNowAndThenIsNotReset() async throws {
        let harness = try await h2Gateway(try TestPKI(), listener: "timeouts: { idle: 2s }")
        let result = try abuse("slow-window", port: harness.port("https"), 60_000)
        XCTAssertEqual(result["rst_codes"] as? [Int], [], "\(result["rst_codes"] ?? "?")")
        XCTAssertGreaterThan((result["body"] as? String)?.count ?? 0, 20_000, "6 s at 5 kB/s")
        await harness.shutdown()
    }

    /// RFC 9113 §8.1.1: the gateway checks request header blocks itself (NIO's check is
    /// off), and a malformed one is a stream error that never reaches the upstream.
    func testMalformedRequestHeaderBlocksAreResetAndNeverProxied() async throws {
        let harness = try await h2Gateway(try TestPKI(), listener: "")
        let result = try abuse("malformed", port: harness.port("https"), 0)
        let resets = result["rst_streams"] as? [String: Int] ?? [:]
        for stream in stride(from: 1, through: 45, by: 2) {
            XCTAssertEqual(resets["\(stream)"], 1, "stream \(stream) is reset with PROTOCOL_ERROR: \(result)")
        }
        XCTAssertEqual(result["response_streams"] as? [Int], [47], "only the valid request (TE: trailers, a cookie) is answered: \(result)")
        XCTAssertNil(result["goaway"] as? Int, "stream errors leave the connection open: \(result)")
        XCTAssertEqual(harness.upstream.requestCount, 1, "no malformed request reached the upstream")
        await harness.shutdown()
    }

    /// A request body without content-length (sent upstream chunked) that ends with a
    /// trailer HEADERS frame: the trailers end the body, which arrives whole, and go on to
    /// the upstream, whose echo ends with them: a second HEADERS frame, with END_STREAM.
    func testHTTP2RequestBodyEndedByTrailers() async throws {
        let harness = try await h2Gateway(try TestPKI(), listener: "")
        let result = try abuse("trailers", port: harness.port("https"), 0)
        XCTAssertEqual(result["response_streams"] as? [Int], [1, 1], "the response's head and its trailers: \(result)")
        XCTAssertEqual(result["body"] as? String, "hello trailers", "\(result)")
        XCTAssertEqual(result["ended"] as? Bool, true, "\(result)")
        XCTAssertEqual(result["rst_codes"] as? [Int], [], "\(result)")
        await harness.shutdown()
    }

    /// A draining gateway (shutdown, a restart's handoff) sends GOAWAY with NO_ERROR at once,
    /// answers the stream in flight, and closes the connection then, not when the grace
    /// period ends (before: no GOAWAY, and the client kept opening streams until then).
    func testDrainingSendsGoAwayAndClosesOnceTheStreamInFlightIsAnswered() async throws {
        let harness = try await h2Gateway(try TestPKI(), listener: "")
        let client = Process()
        let output = Pipe()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        client.arguments = [repositoryRoot() + "/Tests/tools/h2_abuse.py", "drain", "\(harness.port("https"))", "1500"]
        client.standardOutput = output
        try client.run()
        defer { if client.isRunning { client.terminate() } }
        XCTAssertTrue(eventually { harness.upstream.requestCount == 1 }, "the request reached the upstream")
        let started = Date()
        await harness.gateway.shutdown(grace: .seconds(10))
        let drained = Date().timeIntervalSince(started)
        client.waitUntilExit()
        let line = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let result = (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? [:]
        XCTAssertEqual(result["goaway"] as? Int, 0, "GOAWAY with NO_ERROR: \(line)")
        XCTAssertEqual(result["goaway_last_streams"] as? [Int], [2_147_483_647, 1],
                       "GOAWAY in two steps (RFC 9113 §6.8): first the largest stream ID, then stream 1 as the last one answered: \(line)")
        XCTAssertEqual(result["ended"] as? Bool, true, "the stream in flight is answered in full: \(line)")
        XCTAssertEqual(result["response_streams"] as? [Int], [1], "\(line)")
        XCTAssertEqual(result["closed"] as? Bool, true, "\(line)")
        XCTAssertLessThan(drained, 6, "the connection closed with its last stream, not at the end of the 10 s grace period")
        XCTAssertTrue(harness.logs.contains("drained: every connection finished"), harness.logs.all.joined(separator: "\n"))
        await harness.shutdown()
    }

    /// A connection that has sent nothing when the gateway drains is closed after the
    /// quiet period (`drain_quiet_period`, 1 s), on an `h2` listener as on others, not
    /// kept until the grace period ends.
    func testDrainingClosesConnectionsStillInTheHandshake() async throws {
        let harness = try await h2Gateway(try TestPKI(), listener: "")
        let drain = await harness.drainWithSilentConnection(port: harness.port("https"))
        XCTAssertLessThan(drain.seconds, 6, "closed at the drain, not at the end of the 10 s grace period")
        XCTAssertTrue(drain.closed, "the connection is closed")
        await harness.shutdown()
    }

    func testIdleHTTP2ConnectionsGetGoAwayAndClose() async throws {
        let harness = try await h2Gateway(try TestPKI(), listener: "timeouts: { idle: 1s }")
        let idle = try abuse("idle", port: harness.port("https"), 8)
        XCTAssertEqual(idle["responses"] as? Int, 1, "\(idle)")
        XCTAssertEqual(idle["goaway"] as? Int, 0, "GOAWAY with NO_ERROR: \(idle)")
        XCTAssertEqual(idle["closed"] as? Bool, true, "\(idle)")
        let after = idle["idle_closed_after"] as? Double ?? -1
        XCTAssertTrue((0.8...4).contains(after), "closed about 1 s after the last stream ended: \(idle)")
        await harness.shutdown()
    }
}

/// The allow-list kinds of client_auth, on real certificates made by the openssl CLI.
final class ClientAllowListTests: XCTestCase {
    func testDNSURICommonNameAndSPKIPinsEachAdmitAndNothingElseDoes() throws {
        let dir = TemporaryDirectory()
        try Shell.bash("""
            cd '\(dir.path)' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem -out c.pem -days 1 \
              -subj /CN=web-frontend -addext 'subjectAltName=URI:spiffe://example.org/web,DNS:web.svc.internal' 2>/dev/null
            """)
        let pin = try Shell.bash("openssl x509 -in '\(dir.file("c.pem"))' -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -c1-64")
            .stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let certificate = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("c.pem"))))).certificates[0]
        XCTAssertEqual(certificate.spkiSHA256, pin, "the pin is the SHA-256 of the DER SubjectPublicKeyInfo, as openssl computes it")
        func list(_ configure: (inout ClientAllowList) -> Void) -> ClientAllowList {
            var list = ClientAllowList()
            configure(&list)
            return list
        }
        XCTAssertTrue(list { $0.uris = ["spiffe://example.org/web"] }.admits(certificate))
        XCTAssertFalse(list { $0.uris = ["spiffe://example.org/db"] }.admits(certificate))
        XCTAssertTrue(list { $0.dnsNames = ["WEB.svc.internal"] }.admits(certificate), "DNS names compare case-insensitively")
        XCTAssertFalse(list { $0.dnsNames = ["svc.internal"] }.admits(certificate))
        XCTAssertTrue(list { $0.commonNames = ["web-frontend"] }.admits(certificate))
        XCTAssertFalse(list { $0.commonNames = ["web"] }.admits(certificate))
        let colonPin = stride(from: 0, to: pin.count, by: 2).map { String(Array(pin)[$0..<$0 + 2]).uppercased() }.joined(separator: ":")
        XCTAssertTrue(list { $0.spkiSHA256 = [colonPin] }.admits(certificate), "pins may be written with colons, in either case")
        XCTAssertFalse(list { $0.spkiSHA256 = [String(repeating: "0", count: 64)] }.admits(certificate))
        XCTAssertTrue(ClientAllowList().admits(certificate), "an empty allow list admits every verified certificate")
        XCTAssertTrue(certificate.forwardedClientCert.contains("URI=spiffe://example.org/web;DNS=web.svc.internal"), certificate.forwardedClientCert)
    }
}
