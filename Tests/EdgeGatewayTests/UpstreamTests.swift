import CSocketShims
import EdgeGateway
@testable import EdgeProxy
import EdgeTLS
import EdgeTestSupport
import Foundation
import NIOCore
import NIOPosix
import XCTest

/// Upstream TLS peer options, the pool, failover and health checks, against real upstreams on loopback.
final class UpstreamTests: XCTestCase {
    static let pki = try! TestPKI()

    func serverContext(_ leaf: TestPKI.Leaf, clientCA: String? = nil) throws -> TLSContext {
        let chain = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: leaf.fullchain))))
        let key = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: leaf.key)))).key!
        var policy = TLSServerPolicy()
        policy.clientCAFile = clientCA
        return try TLSContext.server(chain: chain.certificates, key: key, policy: policy)
    }

    func config(upstreams: String, routes: String) -> String {
        """
        listeners:
          - name: http
            address: "127.0.0.1:0"
        upstreams:
        \(upstreams)
        routes:
        \(routes)
        admin:
          address: "127.0.0.1:0"
        """
    }

    func get(_ port: Int, _ path: String, host: String? = nil) throws -> (code: String, body: String) {
        let hostHeader = host.map { ["-H", "Host: \($0)"] } ?? []
        let result = try Shell.run(["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}"] + hostHeader + ["http://127.0.0.1:\(port)\(path)"])
        let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (String(lines.last ?? ""), lines.dropLast().joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines))
    }

    func testUpstreamCertificatesAreVerifiedAndFailuresNameTheReason() async throws {
        let pki = Self.pki
        let dir = TemporaryDirectory()
        let now = Int64(Date().timeIntervalSince1970)
        let valid = try pki.issue(["app.internal"])
        let expired = try pki.issue(["app.internal"], notBefore: now - 90 * 86400, notAfter: now - 86400, into: dir.path, name: "expired")
        let otherName = try pki.issue(["api.internal"])
        let otherPKI = try TestPKI()  // kept alive: its directory holds the files
        let foreign = try otherPKI.issue(["app.internal"])
        let client = try pki.issue(["gateway.client"], into: dir.path, name: "client")
        try Shell.bash("""
            cd '\(dir.path)' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout self.key -out self.crt \
              -days 30 -subj /CN=app.internal -addext subjectAltName=DNS:app.internal 2>/dev/null
            """)
        let selfSigned = TestPKI.Leaf(certificate: dir.file("self.crt"), fullchain: dir.file("self.crt"), key: dir.file("self.key"), serial: "")

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var upstreams: [String: DemoUpstream] = [:]
        for (name, leaf, clientCA) in [("valid", valid, nil), ("expired", expired, nil), ("othername", otherName, nil),
                                       ("foreign", foreign, nil), ("selfsigned", selfSigned, nil), ("mtls", valid, pki.caPath)] as [(String, TestPKI.Leaf, String?)] {
            upstreams[name] = try await DemoUpstream.start(tls: try serverContext(leaf, clientCA: clientCA), group: group)
        }
        func upstream(_ name: String, _ backend: String, _ tls: String) -> String {
            "  \(name):\n    backends: [\"127.0.0.1:\(upstreams[backend]!.port)\"]\n    tls: { \(tls) }\n"
        }
        let ca = "ca_file: \(pki.caPath)"
        let yaml = config(upstreams: [
            upstream("valid", "valid", "sni: app.internal, \(ca)"),
            upstream("expired", "expired", "sni: app.internal, \(ca)"),
            upstream("wrongname", "othername", "sni: app.internal, \(ca)"),
            upstream("altcn", "othername", "sni: app.internal, alternative_cn: api.internal, \(ca)"),
            upstream("foreign", "foreign", "sni: app.internal, \(ca)"),
            upstream("selfsigned", "selfsigned", "sni: app.internal, \(ca)"),
            upstream("mtls", "mtls", "sni: app.internal, \(ca), client_certificate: \(client.fullchain), client_key: \(client.key)"),
            upstream("nocert", "mtls", "sni: app.internal, \(ca)"),
        ].joined(), routes: ["valid", "expired", "wrongname", "altcn", "foreign", "selfsigned", "mtls", "nocert"].map {
            "  - host: \($0).test\n    upstream: \($0)"
        }.joined(separator: "\n"))
        try dir.write("gateway.yaml", yaml)
        let logs = LogCapture()
        let gateway = try Gateway.prepare(config: try GatewayConfig.parse(yaml: yaml), baseDirectory: dir.path, logger: logs.logger())
        try await gateway.start(group: group)
        let port = gateway.boundPort(listener: "http")!

        XCTAssertEqual(try get(port, "/", host: "valid.test").code, "200")
        XCTAssertEqual(try get(port, "/", host: "altcn.test").code, "200", "alternative_cn accepts the other name")
        let mtls = try get(port, "/client-cert", host: "mtls.test")
        XCTAssertEqual(mtls.code, "200")
        XCTAssertEqual(mtls.body, "client-cert=\(client.serial)", "the upstream saw our client certificate")
        let expectations: [(String, String)] = [
            ("expired", "certificate has expired"),
            ("wrongname", "hostname mismatch (checked app.internal against the certificate's subject alternative names; it holds api.internal, 127.0.0.1)"),
            ("foreign", "unable to get local issuer certificate"),
            ("selfsigned", "self-signed certificate"),
            ("nocert", "the upstream requires a client certificate and none is configured"),
        ]
        for (path, reason) in expectations {
            let answer = try get(port, "/", host: "\(path).test")
            XCTAssertEqual(answer.code, "502", path)
            XCTAssertTrue(answer.body.contains("upstream unavailable"), answer.body)
            XCTAssertTrue(logs.all.contains { $0.contains("upstream request failed") && $0.contains(reason) },
                          "\(path): no log line with '\(reason)':\n\(logs.all.suffix(5).joined(separator: "\n"))")
        }
        await gateway.shutdown(grace: .seconds(1))
        for upstream in upstreams.values { await upstream.close() }
        withExtendedLifetime(otherPKI) {}
        try await group.shutdownGracefully()
    }

    /// The upstream closes keep-alive connections idle for 1 s; a client asks about once a second, 50 times.
    func testUpstreamClosingIdleConnectionsNeverReachesTheClient() async throws {
        let harness = try await GatewayHarness.start(upstreamIdleClose: .seconds(1)) { port in
            self.config(upstreams: "  app:\n    backends: [\"127.0.0.1:\(port)\"]", routes: "  - upstream: app")
        }
        let port = harness.port("http")
        var failures: [String] = []
        // Fifty requests, however long a loaded machine takes for each (a minute's worth
        // counted by the clock could be fewer).
        for request in 0..<50 {
            let answer = try get(port, "/?n=\(request)")
            if answer.code != "200" { failures.append("\(answer.code) \(answer.body)") }
            // About a second, jittered across the upstream's close so some requests race it.
            pause(Double.random(in: 0.9...1.1))
        }
        XCTAssertEqual(failures, [], "errors reached the client")
        let state = harness.gateway.groups[0].states[0]
        XCTAssertGreaterThan(state.connectionsOpened.load(ordering: .relaxed), 10, "the upstream really closed idle connections")
        await harness.shutdown()
    }

    func testBackendKilledUnderLoadFailsOverThenComesBack() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let b = try await DemoUpstream.start(group: group)
        let c = try await DemoUpstream.start(group: group)
        let bPort = b.port
        let harness = try await GatewayHarness.start { port in
            self.config(upstreams: """
                  app:
                    backends: ["127.0.0.1:\(port)", "127.0.0.1:\(bPort)", "127.0.0.1:\(c.port)"]
                    health_check: { kind: http, path: /status?code=204, interval: 200ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }
                """, routes: "  - upstream: app")
        }
        let port = harness.port("http")
        let app = harness.gateway.groups[0]
        let load = try HTTPLoad(port: port, threads: 4, directory: harness.directory)
        XCTAssertTrue(load.waitForSuccesses(100), "the load is under way on the three backends")
        XCTAssertGreaterThan(app.states[1].requests.load(ordering: .relaxed), 0, "the backend about to be killed has its share")
        await b.kill()
        XCTAssertTrue(eventually(timeout: 10) { !app.states[1].isHealthyByCheck }, "the health check marks the killed backend down")
        let markedDown = Date().timeIntervalSince1970
        XCTAssertTrue(harness.logs.contains("backend is down"))
        XCTAssertTrue(load.waitForSuccesses(load.successes + 100), "a hundred more requests while the backend is down")
        let proxiedBefore = app.states[1].requests.load(ordering: .relaxed)
        let restarted = try await DemoUpstream.start(port: bPort, group: group)
        XCTAssertTrue(eventually(timeout: 10) { app.states[1].isHealthyByCheck }, "the backend comes back after it recovers")
        XCTAssertTrue(harness.logs.contains("backend is up again"))
        // Proxied requests, not the health checks (which the upstream counts too).
        XCTAssertTrue(eventually(timeout: 10) { app.states[1].requests.load(ordering: .relaxed) > proxiedBefore + 10 }, "traffic returns to the recovered backend")
        let result = try load.finish()
        XCTAssertGreaterThan(result.ok, 200)
        XCTAssertLessThanOrEqual(result.errors.count, 4, "at most the requests in flight on the killed backend: \(result.errors)")
        XCTAssertTrue(result.errors.allSatisfy { $0.time < markedDown }, "no error after the health check marked it down: \(result.errors)")
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/upstreams"]).stdout
        XCTAssertTrue(status.contains("\"health\":\"up\""), status)
        await harness.shutdown()
        await restarted.close()
        await c.close()
        try await group.shutdownGracefully()
    }

    func testAllBackendsDownAnswers503AndPassiveHealthEjects() async throws {
        let dead1 = freePort(), dead2 = freePort()
        let harness = try await GatewayHarness.start { _ in
            self.config(upstreams: """
                  gone:
                    backends: ["127.0.0.1:\(dead1)", "127.0.0.1:\(dead2)"]
                    passive_health: { max_fails: 2, fail_timeout: 30s }
                """, routes: "  - upstream: gone")
        }
        let port = harness.port("http")
        XCTAssertEqual(try get(port, "/").code, "502", "both connects refused")
        XCTAssertEqual(try get(port, "/").code, "502")
        // Two consecutive failures each: both ejected, so the next request finds no backend.
        let answer = try get(port, "/")
        XCTAssertEqual(answer.code, "503")
        XCTAssertTrue(answer.body.contains("no healthy backend in upstream 'gone'"), answer.body)
        XCTAssertTrue(harness.logs.contains("backend ejected after consecutive connect failures"))
        await harness.shutdown()
    }

    func testWeightsAndConsistentHashingThroughTheGateway() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let heavy = try await DemoUpstream.start(group: group)
        let harness = try await GatewayHarness.start { port in
            self.config(upstreams: """
                  weighted:
                    backends: ["127.0.0.1:\(port)", { address: "127.0.0.1:\(heavy.port)", weight: 3 }]
                  sticky:
                    backends: ["127.0.0.1:\(port)", "127.0.0.1:\(heavy.port)"]
                    balance: consistent_hash
                    hash_key: header:X-User
                """, routes: "  - path_prefix: /sticky\n    upstream: sticky\n  - upstream: weighted")
        }
        let port = harness.port("http")
        for i in 0..<40 { XCTAssertEqual(try get(port, "/w\(i)").code, "200") }
        XCTAssertEqual(harness.upstream.requestCount, 10)
        XCTAssertEqual(heavy.requestCount, 30)
        // The same user always reaches the same backend.
        for user in ["alice", "bob", "carol", "dave"] {
            let before = (harness.upstream.requestCount, heavy.requestCount)
            for _ in 0..<5 {
                _ = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-H", "X-User: \(user)", "http://127.0.0.1:\(port)/sticky"])
            }
            let delta = (harness.upstream.requestCount - before.0, heavy.requestCount - before.1)
            XCTAssertTrue(delta == (5, 0) || delta == (0, 5), "\(user) was spread: \(delta)")
        }
        await harness.shutdown()
        await heavy.close()
        try await group.shutdownGracefully()
    }

    /// Every closed upstream connection's objects are freed. Its handler kept its channel
    /// context, which holds the handler: both, with the response head's storage, stayed
    /// in memory for every connection ever closed (1.6 KB each; found by the soak once
    /// HTTP/2 clients churned the pool). Without pooling every request opens and closes one.
    func testClosedUpstreamConnectionsAreFreed() async throws {
        let before = UpstreamHandler.live.load(ordering: .relaxed)
        let harness = try await GatewayHarness.start { port in
            self.config(upstreams: """
                  app:
                    backends: ["127.0.0.1:\(port)"]
                    pool: { max_idle_per_backend: 0 }
                """, routes: "  - upstream: app")
        }
        let port = harness.port("http")
        let urls = (0..<20).flatMap { ["-o", "/dev/null", "http://127.0.0.1:\(port)/bytes?n=\($0 * 100)"] }
        let result = try Shell.run(["curl", "-sS", "--max-time", "20", "-w", "%{http_code} "] + urls)
        XCTAssertEqual(result.stdout, String(repeating: "200 ", count: 20), result.stderr)
        XCTAssertEqual(harness.gateway.groups[0].states[0].connectionsOpened.load(ordering: .relaxed), 20)
        XCTAssertTrue(eventually(timeout: 5) { UpstreamHandler.live.load(ordering: .relaxed) <= before },
                      "\(UpstreamHandler.live.load(ordering: .relaxed) - before) upstream handlers outlived their connections")
        await harness.shutdown()
    }

    /// A backend that takes a request and breaks the connection without answering (it
    /// died or restarted with the request in it): an idempotent request goes to another
    /// backend, as nginx's default `proxy_next_upstream error` does; a POST is not
    /// repeated (502), and neither is a request with no other backend to go to.
    func testIdempotentRequestsOnABrokenConnectionMoveToAnotherBackend() async throws {
        let breaker = Process()
        breaker.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        let breakerPort = freePort()
        breaker.arguments = ["-c", """
            import socket, struct, sys
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", int(sys.argv[1])))
            server.listen(64)
            while True:
                conn, _ = server.accept()
                data = b""
                while b"\\r\\n\\r\\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if b" /reset" in data:  # an RST instead of a FIN
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            """, "\(breakerPort)"]
        try breaker.run()
        // SIGKILL: the test process ignores SIGTERM (the gateway's signal handling), and
        // a child inherits that.
        defer { kill(breaker.processIdentifier, SIGKILL); breaker.waitUntilExit() }
        XCTAssertTrue(GatewayProcess.Probe.wait(port: breakerPort), "the breaking backend did not start")
        let harness = try await GatewayHarness.start { port in
            self.config(upstreams: """
                  app:
                    backends: ["127.0.0.1:\(port)", "127.0.0.1:\(breakerPort)"]
                  alone:
                    backends: ["127.0.0.1:\(breakerPort)"]
                """, routes: "  - path_prefix: /alone\n    upstream: alone\n  - upstream: app")
        }
        let port = harness.port("http")
        for path in ["/close", "/close", "/reset", "/reset", "/close", "/close", "/reset", "/reset"] {  // each kind reaches the breaking backend
            let (code, body) = try get(port, path)
            XCTAssertEqual(code, "200", "\(path): \(body)")
        }
        XCTAssertTrue(harness.logs.contains("upstream connection broke before the response; trying another backend"), harness.logs.all.joined(separator: "\n"))
        let app = try XCTUnwrap(harness.gateway.groups.first { $0.name == "app" })
        XCTAssertGreaterThanOrEqual(app.states[1].requests.load(ordering: .relaxed), 3, "the breaking backend got its share")
        var posts: [String] = []
        for _ in 0..<4 {
            posts.append(try Shell.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", "-d", "x=1",
                                        "http://127.0.0.1:\(port)/close"]).stdout)
        }
        XCTAssertTrue(posts.contains("502") && posts.allSatisfy { $0 == "200" || $0 == "502" }, "\(posts)")
        XCTAssertEqual(try get(port, "/alone/close").code, "502", "no other backend: the broken connection's 502")
        await harness.shutdown()
    }

    /// TLS upstream connections keep OpenSSL's record buffers (about 34 KB each) while
    /// records move and give them back once quiet for a second or two: forty connections
    /// waiting for slow answers release theirs before the answers come, and again once
    /// they idle in the pool; they still serve after that without new connections.
    func testQuietTLSUpstreamConnectionsGiveBackTheirRecordBuffers() async throws {
        let pki = Self.pki
        let dir = TemporaryDirectory()
        let upstreamContext = try serverContext(try pki.issue(["app.internal"]))
        let harness = try await GatewayHarness.start(directory: dir, upstreamTLS: upstreamContext) { port in
            self.config(upstreams: """
                  app:
                    backends: ["127.0.0.1:\(port)"]
                    tls: { sni: app.internal, ca_file: \(pki.caPath) }
                """, routes: "  - upstream: app")
        }
        let port = harness.port("http")
        let state = harness.gateway.groups[0].states[0]
        // Forty requests at once, each on an upstream connection of its own, answered
        // after eight seconds (the connections sit quiet in their exchanges meanwhile).
        let count = 40
        let urls = (0..<count).flatMap { _ in ["-o", "/dev/null", "http://127.0.0.1:\(port)/slow?ms=8000"] }
        let requests = Task.detached {
            try Shell.run(["curl", "-sS", "--parallel", "--parallel-immediate", "--parallel-max", "\(count)", "--max-time", "30",
                           "-w", "%{http_code} "] + urls)
        }
        XCTAssertTrue(eventually(timeout: 5) { state.connectionsOpened.load(ordering: .relaxed) == count }, "one upstream connection per request")
        // Exactly: each connection gave its buffers back. Roughly, from the heap (shared with
        // whatever else the test process does): that giving them back freed memory.
        let waiting = heapInUse(), releasesBefore = OpenSSLHandler.recordBufferReleases
        XCTAssertTrue(eventually(timeout: 5) { OpenSSLHandler.recordBufferReleases >= releasesBefore + count },
                      "\(OpenSSLHandler.recordBufferReleases - releasesBefore) of \(count) connections waiting for an answer gave their record buffers back")
        var released = 0
        XCTAssertTrue(eventually(timeout: 5, interval: 0.2) {
            released = waiting - heapInUse()
            return released > count * 8_000
        }, "\(released) bytes of heap given back by \(count) TLS upstream connections waiting for an answer (their record buffers are about 34 KB each)")
        let result = try await requests.value
        XCTAssertEqual(result.stdout, String(repeating: "200 ", count: count), result.stderr)
        // Reading the answers took the buffers again; idle in the pool, they go back.
        XCTAssertEqual(state.idleConnections.load(ordering: .relaxed), count)
        let answered = heapInUse(), answeredReleases = OpenSSLHandler.recordBufferReleases
        XCTAssertTrue(eventually(timeout: 5) { OpenSSLHandler.recordBufferReleases >= answeredReleases + count },
                      "\(OpenSSLHandler.recordBufferReleases - answeredReleases) of \(count) idle pooled connections gave their record buffers back")
        XCTAssertTrue(eventually(timeout: 5, interval: 0.2) {
            released = answered - heapInUse()
            return released > count * 8_000
        }, "\(released) bytes of heap given back by \(count) idle pooled TLS upstream connections")
        // The pooled connections read and write again (OpenSSL allocates the buffers anew).
        for _ in 0..<5 { XCTAssertEqual(try get(port, "/bytes?n=20000").code, "200") }
        XCTAssertEqual(state.connectionsOpened.load(ordering: .relaxed), count, "the pooled connections were reused")
        await harness.shutdown()
    }

    /// Bytes malloc has handed out, over every arena (mallinfo2 counts only the main
    /// arena; the event loops allocate in their own): from malloc_info, the system's
    /// bytes less the free ones (fast bins, the other bins and each arena's top).
    func heapInUse() -> Int {
        var text: UnsafeMutablePointer<CChar>? = nil
        var length = 0
        guard let stream = open_memstream(&text, &length) else { return 0 }
        _ = edge_malloc_info(UnsafeMutableRawPointer(stream))
        fclose(stream)
        defer { free(text) }
        guard let text else { return 0 }
        let xml = String(cString: text)
        // The totals follow the last heap: <total type="fast" .. size="N"/>, <total type="rest" ..>, <system type="current" size="N"/>.
        guard let totals = xml.range(of: "</heap>", options: .backwards).map({ xml[$0.upperBound...] }) else { return 0 }
        func size(_ tag: String) -> Int {
            guard let start = totals.range(of: tag), let attribute = totals[start.upperBound...].range(of: "size=\"") else { return 0 }
            return Int(totals[attribute.upperBound...].prefix { $0.isNumber }) ?? 0
        }
        return size("<system type=\"current\"") - size("<total type=\"fast\"") - size("<total type=\"rest\"")
    }

    func testUpstreamTLSSessionsResumeAndTheClientCertificateIsHotReloaded() async throws {
        let pki = Self.pki
        let dir = TemporaryDirectory()
        let client = try pki.issue(["gateway.client"], into: dir.path, name: "client")
        let upstreamContext = try serverContext(try pki.issue(["app.internal"]), clientCA: pki.caPath)
        let harness = try await GatewayHarness.start(directory: dir, upstreamTLS: upstreamContext) { port in
            self.config(upstreams: """
                  app:
                    backends: ["127.0.0.1:\(port)"]
                    tls: { sni: app.internal, ca_file: \(pki.caPath), client_certificate: client.crt, client_key: client.key }
                    pool: { max_idle_per_backend: 0 }
                """, routes: "  - upstream: app")
        }
        let port = harness.port("http")
        for _ in 0..<6 { XCTAssertEqual(try get(port, "/client-cert").body, "client-cert=\(client.serial)") }
        let state = harness.gateway.groups[0].states[0]
        XCTAssertEqual(state.connectionsOpened.load(ordering: .relaxed), 6, "max_idle_per_backend: 0 opens a connection per request")
        XCTAssertGreaterThanOrEqual(state.tlsResumed.load(ordering: .relaxed), 4, "new connections resume the previous session")
        // The client certificate is watched: a renewed pair is used without a restart.
        let renewed = try pki.issue(["gateway.client"], into: dir.path, name: "client")
        XCTAssertNotEqual(renewed.serial, client.serial)
        XCTAssertTrue(eventually(timeout: 10, interval: 0.2) { (try? self.get(port, "/client-cert").body) == "client-cert=\(renewed.serial)" },
                      "the renewed client certificate reaches the upstream")
        XCTAssertTrue(harness.logs.contains("upstream client certificate rotated"))
        let certificates = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/certificates"]).stdout
        XCTAssertTrue(certificates.contains("upstream-app-client"), "the client certificate's expiry is reported too")
        await harness.shutdown()
    }

    func testBalancingAndHealthCheckSettingsAreValidated() throws {
        let yaml = config(upstreams: """
              a:
                backends: ["127.0.0.1:1", { address: "127.0.0.1:2", weight: 0 }]
                balance: fastest
              b:
                backends: ["127.0.0.1:1"]
                balance: consistent_hash
                hash_key: cookie
                health_check: { kind: udp }
              c:
                backends: ["127.0.0.1:1"]
                health_check: { kind: tls, expected_status: "299-200" }
            """, routes: "  - upstream: a")
        // Loaded as `check` and `run` load it: a word outside a key's choices (`balance`) is
        // reported with the gateway's own checks, not instead of them.
        let dir = TemporaryDirectory()
        try dir.write("config.yaml", yaml)
        let loaded = try GatewayConfig.load(path: dir.path + "/config.yaml")
        XCTAssertThrowsError(try Gateway.prepare(config: loaded.config, baseDirectory: "/", logger: LogCapture().logger())) { error in
            let text = "\(error)"
            for expected in ["upstreams.a.backends[1]: weight must be at least 1",
                             "upstreams.a.balance: 'fastest' is not one of",
                             "upstreams.b.hash_key: 'cookie' is not one of client_ip, path, header:NAME",
                             "upstreams.b.health_check.kind: 'udp' is not one of tcp, tls, http, grpc",
                             "upstreams.c.health_check.kind: a tls check needs the upstream's tls settings"] {
                XCTAssertTrue(text.contains(expected), "missing '\(expected)' in:\n\(text)")
            }
        }
    }

    /// An upstream that accepts connections and then never reads or answers.
    func silentUpstream() throws -> (Process, Int) {
        let port = freePort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", """
            import socket, sys, time
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16); held = []
            while True:
                c, _ = s.accept(); c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096); held.append(c)
            """, "\(port)"]
        try process.run()
        XCTAssertTrue(GatewayProcess.Probe.wait(port: port))
        return (process, port)
    }

    func testTotalConnectionAndWriteTimeoutsAnswer504() async throws {
        let (silent, port) = try silentUpstream()
        // SIGKILL: a child of the test process may inherit a blocked SIGTERM.
        defer { kill(silent.processIdentifier, SIGKILL); silent.waitUntilExit() }
        let harness = try await GatewayHarness.start { _ in
            self.config(upstreams: """
                  handshake:
                    backends: ["127.0.0.1:\(port)"]
                    tls: { sni: app.internal }
                    timeouts: { connect: 1s, total_connection: 1s }
                  writes:
                    backends: ["127.0.0.1:\(port)"]
                    timeouts: { write: 1s, read: 30s }
                """, routes: "  - path_prefix: /tls\n    upstream: handshake\n  - upstream: writes")
        }
        let gatewayPort = harness.port("http")
        let started = Date()
        let tls = try get(gatewayPort, "/tls")
        XCTAssertEqual(tls.code, "504", "a TLS handshake that never completes: \(tls.body)")
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        XCTAssertTrue(harness.logs.contains("TLS handshake not done within the total connection timeout"), harness.logs.all.suffix(3).joined(separator: "\n"))
        // An upstream that stops reading the request body.
        let body = harness.directory.file("body.bin")
        try Shell.run(["bash", "-c", "head -c 33554432 /dev/zero > '\(body)'"])
        let upload = try Shell.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "@\(body)",
                                    "http://127.0.0.1:\(gatewayPort)/upload"])
        XCTAssertEqual(upload.stdout, "504", upload.stderr)
        XCTAssertTrue(harness.logs.contains("the upstream stopped reading the request body"))
        await harness.shutdown()
    }

    func testTurningVerificationOffIsWarnedAtStartupAndByCheck() throws {
        let dir = TemporaryDirectory()
        try dir.write("config.yaml", config(upstreams: """
              insecure:
                backends: ["127.0.0.1:8443"]
                tls: { verify_cert: false }
              nameless:
                backends: ["127.0.0.1:8444"]
                tls: { verify_hostname: false }
            """, routes: "  - upstream: insecure"))
        let check = try Shell.run([gatewayBinary(), "check", "-c", dir.file("config.yaml")])
        XCTAssertEqual(check.status, 0, check.stderr)
        let output = check.stdout + check.stderr
        XCTAssertTrue(output.contains("upstream certificate verification is OFF") && output.contains("upstreams.insecure.tls.verify_cert"), output)
        XCTAssertTrue(output.contains("upstream hostname verification is OFF") && output.contains("upstreams.nameless.tls.verify_hostname"), output)
    }

    func testTCPAndTLSHealthCheckKinds() async throws {
        let pki = Self.pki
        let leaf = try pki.issue(["app.internal"])
        let dead = freePort()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let plain = try await DemoUpstream.start(group: group)
        let harness = try await GatewayHarness.start(upstreamTLS: try serverContext(leaf)) { tlsPort in
            self.config(upstreams: """
                  tcp:
                    backends: ["127.0.0.1:\(plain.port)", "127.0.0.1:\(dead)"]
                    health_check: { kind: tcp, interval: 100ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1 }
                  tls:
                    backends: ["127.0.0.1:\(tlsPort)", "127.0.0.1:\(plain.port)"]
                    tls: { sni: app.internal, ca_file: \(pki.caPath) }
                    health_check: { kind: tls, interval: 100ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1 }
                """, routes: "  - upstream: tcp")
        }
        let tcp = harness.gateway.groups.first { $0.name == "tcp" }!
        let tls = harness.gateway.groups.first { $0.name == "tls" }!
        XCTAssertTrue(eventually(timeout: 5) { !tcp.states[1].isHealthyByCheck }, "a refused connect fails the tcp check")
        XCTAssertTrue(eventually(timeout: 5) { !tls.states[1].isHealthyByCheck }, "a plaintext server fails the tls check")
        // Three more rounds on each good backend, every one passed.
        let tcpPassed = tcp.states[0].healthChecksPassed.load(ordering: .relaxed), tlsPassed = tls.states[0].healthChecksPassed.load(ordering: .relaxed)
        XCTAssertTrue(eventually(timeout: 5) {
            tcp.states[0].healthChecksPassed.load(ordering: .relaxed) >= tcpPassed + 3 && tls.states[0].healthChecksPassed.load(ordering: .relaxed) >= tlsPassed + 3
        }, "the checks go on")
        XCTAssertEqual(tcp.states[0].healthChecksFailed.load(ordering: .relaxed), 0)
        XCTAssertEqual(tls.states[0].healthChecksFailed.load(ordering: .relaxed), 0, "a verified handshake never fails the check")
        XCTAssertGreaterThan(tls.states[1].healthChecksFailed.load(ordering: .relaxed), 0)
        XCTAssertTrue(tcp.states[0].isHealthyByCheck)
        XCTAssertTrue(tls.states[0].isHealthyByCheck, "a verified handshake passes")
        XCTAssertTrue(tls.states[1].lastErrorDescription?.contains("health check") ?? false)
        await harness.shutdown()
        await plain.close()
        try await group.shutdownGracefully()
    }
}
