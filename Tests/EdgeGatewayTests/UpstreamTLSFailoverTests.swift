import EdgeGateway
import EdgeProxy
import EdgeTLS
import EdgeTestSupport
import Foundation
import NIOPosix
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Upstream TLS (#35): a failed handshake fails over and shows; every accepted name is
/// accepted on its own; client certificates are checked as what they are. Against real
/// TLS upstreams: Python `ssl` servers (`Tests/tools/tls_upstream.py`) and nginx.
final class UpstreamTLSFailoverTests: XCTestCase {
    static let pki = try! TestPKI()

    /// Python HTTPS upstreams, one per spec (`port=P,cert=...,key=...[,max=1.2][,client_ca=...]`),
    /// in one process; returns it and the file each handshake's SNI is logged to.
    func upstreams(_ specs: [String], dir: TemporaryDirectory) throws -> (process: Process, sniLog: String) {
        let sniLog = dir.file("sni.log")
        FileManager.default.createFile(atPath: sniLog, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [repositoryRoot() + "/Tests/tools/tls_upstream.py", sniLog] + specs
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        for spec in specs {
            let port = Int(spec.split(separator: ",")[0].dropFirst("port=".count))!
            XCTAssertTrue(GatewayProcess.Probe.wait(port: port, timeout: 10) { process.isRunning }, "upstream \(spec) did not start")
        }
        return (process, sniLog)
    }

    func spec(_ port: Int, _ leaf: TestPKI.Leaf, _ extra: String = "") -> String {
        "port=\(port),cert=\(leaf.fullchain),key=\(leaf.key)" + (extra.isEmpty ? "" : "," + extra)
    }

    func start(_ yaml: String, dir: TemporaryDirectory, logs: LogCapture) async throws -> (Gateway, MultiThreadedEventLoopGroup, http: Int, admin: Int) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let gateway = try Gateway.prepare(config: try GatewayConfig.parse(yaml: yaml), baseDirectory: dir.path, logger: logs.logger())
        try await gateway.start(group: group)
        return (gateway, group, gateway.boundPort(listener: "http")!, gateway.adminPort!)
    }

    /// The gateway in front of one group `app` of two TLS backends, [bad, good], that ejects a
    /// backend after 3 failures; `tls` holds the group's extra TLS options.
    func startFailover(bad: Int, good: Int, tls: String = "", dir: TemporaryDirectory, logs: LogCapture) async throws
        -> (Gateway, MultiThreadedEventLoopGroup, http: Int, admin: Int) {
        try await start("""
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
              app:
                backends: ["127.0.0.1:\(bad)", "127.0.0.1:\(good)"]
                tls: { sni: app.internal, ca_file: \(Self.pki.caPath)\(tls) }
                passive_health: { max_fails: 3, fail_timeout: 60s }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """, dir: dir, logs: logs)
    }

    func stop(_ gateway: Gateway, _ group: MultiThreadedEventLoopGroup) async throws {
        await gateway.shutdown(grace: .seconds(1))
        try await group.shutdownGracefully()
    }

    /// curl, which never retries: (status, body).
    func fetch(_ port: Int, _ path: String = "/", host: String? = nil, post: Bool = false) throws -> (code: String, body: String) {
        var arguments = ["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}"]
        if let host { arguments += ["-H", "Host: \(host)"] }
        if post { arguments += ["-d", "payload"] }
        let result = try Shell.run(arguments + ["http://127.0.0.1:\(port)\(path)"])
        let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (String(lines.last ?? ""), lines.dropLast().joined(separator: "\n"))
    }

    /// `count` requests from curl, GET and POST in turn: those not answered 200 by the
    /// backend on port `good` (curl never retries, so each failure is one a client saw).
    func notAnsweredBy(_ good: Int, http: Int, count: Int, host: String? = nil) throws -> [String] {
        var failed: [String] = []
        for index in 0..<count {
            let answer = try fetch(http, host: host, post: index % 2 == 1)
            if answer.code != "200" || !answer.body.contains("port=\(good)") { failed.append("\(answer.code) \(answer.body)") }
        }
        return failed
    }

    /// A server certificate for app.internal and a client certificate for gateway.client.
    func serverAndClient(_ dir: TemporaryDirectory) throws -> (server: TestPKI.Leaf, client: TestPKI.Leaf) {
        (try Self.pki.issue(subjectAltNames: ["DNS:app.internal"], commonName: "app.internal", into: dir.path, name: "server"),
         try Self.pki.issue(subjectAltNames: ["DNS:gateway.client"], commonName: "gateway.client", into: dir.path, name: "client"))
    }

    func json(_ port: Int, _ path: String) throws -> [String: Any] {
        let body = try fetch(port, path).body
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any], body)
    }

    func backends(_ admin: Int, upstream: String) throws -> [[String: Any]] {
        let groups = try XCTUnwrap(try json(admin, "/status/upstreams")["upstreams"] as? [[String: Any]])
        let group = try XCTUnwrap(groups.first { $0["name"] as? String == upstream })
        return try XCTUnwrap(group["backends"] as? [[String: Any]])
    }

    /// Backends [expired certificate, valid]: before, every other request was a 502 and the
    /// broken backend showed "up" with no error. Now every request (GET and POST, from a
    /// client that never retries) is answered by the valid one, and the broken one shows
    /// why, is counted by reason and is ejected.
    func testAFailedHandshakeMovesOnCountsAndEjects() async throws {
        let dir = TemporaryDirectory()
        let now = Int64(Date().timeIntervalSince1970)
        let expired = try Self.pki.issue(["app.internal"], notBefore: now - 90 * 86400, notAfter: now - 86400, into: dir.path, name: "expired")
        let valid = try Self.pki.issue(["app.internal"], into: dir.path, name: "valid")
        let (broken, good) = (freePort(), freePort())
        let (python, _) = try upstreams([spec(broken, expired), spec(good, valid)], dir: dir)
        defer { RequestHardeningTests.stop(python) }
        let logs = LogCapture()
        let (gateway, group, http, admin) = try await startFailover(bad: broken, good: good, dir: dir, logs: logs)

        var failed = 0
        for index in 0..<20 {
            let answer = try fetch(http, "/", post: index % 2 == 1)
            if answer.code != "200" { failed += 1 }
            XCTAssertTrue(answer.code != "200" || answer.body.contains("port=\(good)"), answer.body)
        }
        XCTAssertEqual(failed, 0, "requests failed with one broken-certificate backend out of two\n" + logs.all.suffix(8).joined(separator: "\n"))

        let states = try backends(admin, upstream: "app")
        let bad = try XCTUnwrap(states.first { ($0["address"] as? String) == "127.0.0.1:\(broken)" })
        XCTAssertEqual(bad["health"] as? String, "ejected", "\(bad)")
        XCTAssertTrue((bad["last_error"] as? String ?? "").contains("certificate has expired"), "\(bad)")
        XCTAssertGreaterThanOrEqual(bad["connect_failures"] as? Int ?? 0, 3, "\(bad)")
        let byReason = try XCTUnwrap(bad["tls_handshake_failures"] as? [String: Int], "\(bad)")
        XCTAssertGreaterThanOrEqual(byReason["certificate_expired"] ?? 0, 3, "\(bad)")
        let metrics = try fetch(admin, "/metrics").body
        XCTAssertTrue(metrics.contains("edge_upstream_tls_handshake_failures_total{upstream=\"app\",backend=\"127.0.0.1:\(broken)\",reason=\"certificate_expired\"}"),
                      metrics.split(separator: "\n").filter { $0.contains("handshake") }.joined(separator: "\n"))
        XCTAssertTrue(logs.all.contains { $0.contains("trying another backend") && $0.contains("certificate has expired") })
        XCTAssertTrue(logs.all.contains { $0.contains("backend ejected") && $0.contains("127.0.0.1:\(broken)") })
        try await stop(gateway, group)
    }

    /// Each name of `sni` and `alternative_cn` is accepted on its own, DNS or IP, and the CN
    /// of a certificate without subject alternative names only with `allow_common_name`.
    func testEveryAcceptedNameIsAcceptedOnItsOwn() async throws {
        let dir = TemporaryDirectory()
        let dnsOnly = try Self.pki.issue(subjectAltNames: ["DNS:app.internal"], commonName: "app.internal", into: dir.path, name: "dns")
        let ipOnly = try Self.pki.issue(subjectAltNames: ["IP:127.0.0.1"], commonName: "ip", into: dir.path, name: "ip")
        let cnOnly = try Self.pki.issue(subjectAltNames: [], commonName: "app.internal", into: dir.path, name: "cn")
        let (dnsPort, ipPort, cnPort) = (freePort(), freePort(), freePort())
        let (python, sniLog) = try upstreams([spec(dnsPort, dnsOnly), spec(ipPort, ipOnly), spec(cnPort, cnOnly)], dir: dir)
        defer { RequestHardeningTests.stop(python) }
        let cases: [(name: String, port: Int, tls: String, accepted: Bool)] = [
            ("ip-then-dns", dnsPort, "sni: 127.0.0.1, alternative_cn: app.internal", true),
            ("dns-then-ip", dnsPort, "sni: app.internal, alternative_cn: 127.0.0.1", true),
            ("dns-then-ip-on-ip", ipPort, "sni: app.internal, alternative_cn: 127.0.0.1", true),
            ("two-ips", ipPort, "sni: 127.0.0.1, alternative_cn: \"::1\"", true),
            ("two-ips-reversed", ipPort, "sni: \"::1\", alternative_cn: 127.0.0.1", true),
            ("a-list", dnsPort, "sni: other.internal, alternative_cn: [\"::1\", app.internal]", true),
            ("none-match", ipPort, "sni: app.internal, alternative_cn: other.internal", false),
            ("cn-only", cnPort, "sni: app.internal", false),
            ("cn-allowed", cnPort, "sni: app.internal, allow_common_name: true", true),
        ]
        let upstreamsYAML = cases.map {
            "  \($0.name): { backends: [\"127.0.0.1:\($0.port)\"], tls: { \($0.tls), ca_file: \(Self.pki.caPath) } }"
        }.joined(separator: "\n")
        let routes = cases.map { "  - { host: \($0.name).test, upstream: \($0.name) }" }.joined(separator: "\n")
        let logs = LogCapture()
        let (gateway, group, http, _) = try await start("""
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
            \(upstreamsYAML)
            routes:
            \(routes)
            admin: { address: "127.0.0.1:0" }
            """, dir: dir, logs: logs)
        for item in cases {
            let answer = try fetch(http, "/", host: "\(item.name).test")
            XCTAssertEqual(answer.code, item.accepted ? "200" : "502", "\(item.name): \(answer.body)")
        }
        XCTAssertTrue(logs.all.contains {
            $0.contains("hostname mismatch (checked app.internal, then other.internal against the certificate's subject alternative names; it holds 127.0.0.1)")
        }, logs.all.filter { $0.contains("mismatch") }.joined(separator: "\n"))
        XCTAssertTrue(logs.all.contains { $0.contains("it holds no subject alternative names (CN app.internal)") },
                      logs.all.filter { $0.contains("mismatch") }.joined(separator: "\n"))
        XCTAssertTrue(logs.all.contains { $0.contains("accepted by their CN") && $0.contains("cn-allowed") })
        // An IP literal is never sent as SNI; a DNS name is.
        let seen = try String(contentsOfFile: sniLog, encoding: .utf8)
        XCTAssertTrue(seen.contains("\(dnsPort) -"), seen)
        XCTAssertTrue(seen.contains("\(dnsPort) app.internal"), seen)
        try await stop(gateway, group)
    }

    /// Without `sni`, each backend gets its own host as SNI and must hold it (or an
    /// alternative_cn name), as the README says; before, several hosts sent no SNI at all.
    func testEachBackendGetsItsOwnHostAsSNI() async throws {
        let dir = TemporaryDirectory()
        let local = try Self.pki.issue(subjectAltNames: ["DNS:localhost"], commonName: "localhost", into: dir.path, name: "local")
        let service = try Self.pki.issue(subjectAltNames: ["DNS:app.internal"], commonName: "app.internal", into: dir.path, name: "service")
        let (a, b) = (freePort(), freePort())
        let (python, sniLog) = try upstreams([spec(a, local), spec(b, service)], dir: dir)
        defer { RequestHardeningTests.stop(python) }
        let logs = LogCapture()
        let (gateway, group, http, _) = try await start("""
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
              app:
                backends: ["localhost:\(a)", "127.0.0.1:\(b)"]
                tls: { alternative_cn: app.internal, ca_file: \(Self.pki.caPath) }
                passive_health: { max_fails: 0 }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """, dir: dir, logs: logs)
        var answeredBy: Set<String> = []
        for _ in 0..<4 {
            let answer = try fetch(http)
            XCTAssertEqual(answer.code, "200", answer.body)
            answeredBy.insert(String(answer.body.split(separator: " ")[0]))
        }
        XCTAssertEqual(answeredBy, ["port=\(a)", "port=\(b)"])
        let seen = try String(contentsOfFile: sniLog, encoding: .utf8)
        XCTAssertTrue(seen.contains("\(a) localhost"), seen)
        XCTAssertTrue(seen.contains("\(b) -"), seen)
        try await stop(gateway, group)
    }

    /// Backends `localhost:P` and `127.0.0.1:P` are two entries with their own pool and
    /// figures; before, they shared one idle stack and showed 2 and -1 idle connections.
    func testTwoEntriesOnOneAddressKeepTheirOwnFigures() async throws {
        let dir = TemporaryDirectory()
        let upstream = try DemoUpstreamProcess()
        defer { upstream.stop() }
        let logs = LogCapture()
        let (gateway, group, http, admin) = try await start("""
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
              app:
                backends: ["localhost:\(upstream.port)", "127.0.0.1:\(upstream.port)"]
                timeouts: { idle: 1s }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """, dir: dir, logs: logs)
        for _ in 0..<4 { XCTAssertEqual(try fetch(http).code, "200") }
        var states = try backends(admin, upstream: "app")
        XCTAssertEqual(states.map { $0["requests"] as? Int }, [2, 2], "\(states)")
        XCTAssertEqual(states.map { $0["connections_opened"] as? Int }, [1, 1], "\(states)")
        XCTAssertEqual(states.map { $0["idle_connections"] as? Int }, [1, 1], "\(states)")
        XCTAssertTrue(eventually(timeout: 10) {
            states = (try? self.backends(admin, upstream: "app")) ?? []
            return states.map { $0["idle_connections"] as? Int } == [0, 0]
        }, "\(states)")
        try await stop(gateway, group)
    }

    /// A client certificate from a private CA is "not checked" without client_ca_file (no
    /// false broken-chain alarm), verified with one, and shown on /status/upstreams; nginx
    /// with ssl_verify_client sees it.
    func testClientCertificatesAreCheckedOnlyAgainstTheirCA() async throws {
        let dir = TemporaryDirectory()
        let (server, client) = try serverAndClient(dir)
        let nginxPort = freePort()
        let nginx = try NginxUpstream(directory: dir, port: nginxPort, certificate: server.fullchain, key: server.key, clientCA: Self.pki.caPath)
        defer { nginx.stop() }
        let otherPKI = try TestPKI()
        for (caFile, expected) in [(nil, "null"), (Self.pki.caPath, "true"), (otherPKI.caPath, "false")] as [(String?, String)] {
            let logs = LogCapture()
            let ca = caFile.map { ", client_ca_file: \($0)" } ?? ""
            let (gateway, group, http, admin) = try await start("""
                listeners: [ { name: http, address: "127.0.0.1:0" } ]
                upstreams:
                  app:
                    backends: ["127.0.0.1:\(nginxPort)"]
                    tls: { sni: app.internal, ca_file: \(Self.pki.caPath), client_certificate: \(client.fullchain), client_key: \(client.key)\(ca) }
                routes: [ { upstream: app } ]
                admin: { address: "127.0.0.1:0" }
                """, dir: dir, logs: logs)
            let answer = try fetch(http)
            XCTAssertEqual(answer.code, "200", answer.body)
            XCTAssertTrue(answer.body.contains("client=CN=gateway.client") && answer.body.contains("sni=app.internal"), answer.body)
            let certificates = try XCTUnwrap(try json(admin, "/status/certificates")["certificates"] as? [[String: Any]])
            let entry = try XCTUnwrap(certificates.first { $0["name"] as? String == "upstream-app-client" })
            let valid = entry["chain_valid"]
            XCTAssertEqual(valid is NSNull ? "null" : "\((valid as? Bool) ?? false)", expected, "\(caFile ?? "none"): \(entry)")
            XCTAssertEqual(entry["chain_checked"] as? Bool, caFile != nil)
            let metrics = try fetch(admin, "/metrics").body
            XCTAssertEqual(metrics.contains("edge_certificate_chain_valid{name=\"upstream-app-client\"}"), caFile != nil)
            if caFile == nil { XCTAssertFalse(metrics.contains("edge_certificate_chain_valid{name=\"upstream-app-client\"} 0")) }
            let groups = try XCTUnwrap(try json(admin, "/status/upstreams")["upstreams"] as? [[String: Any]])
            let shown = try XCTUnwrap(groups.first?["client_certificate"] as? [String: Any])
            let fingerprint = try Shell.run(["openssl", "x509", "-in", client.certificate, "-noout", "-fingerprint", "-sha256"]).stdout
            XCTAssertTrue(fingerprint.contains(shown["sha256_fingerprint"] as? String ?? "?"), "\(shown) vs \(fingerprint)")
            XCTAssertNotNil(shown["not_after"] as? Int)
            try await stop(gateway, group)
        }
        withExtendedLifetime(otherPKI) {}
    }

    /// An expired client certificate fails `check` (it passed before) and shows in
    /// `certs -c` (which ignored client certificates, or said no -c was given).
    func testExpiredClientCertificatesFailCheckAndShowInCerts() throws {
        let dir = TemporaryDirectory()
        let now = Int64(Date().timeIntervalSince1970)
        let expired = try Self.pki.issue(["gateway.client"], notBefore: now - 90 * 86400, notAfter: now - 86400, into: dir.path, name: "client")
        try dir.write("config.yaml", """
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
              app:
                backends: ["127.0.0.1:9"]
                tls: { sni: app.internal, client_certificate: \(expired.fullchain), client_key: \(expired.key) }
            routes: [ { upstream: app } ]
            """)
        let check = try Shell.run([gatewayBinary(), "check", "-c", dir.file("config.yaml")])
        XCTAssertEqual(check.status, 1, check.stdout + check.stderr)
        XCTAssertTrue(check.stderr.contains("upstreams.app.tls.client_certificate: \(expired.fullchain) expired on"), check.stderr)
        XCTAssertEqual(check.stderr.components(separatedBy: "expired on").count, 2, "said once: \(check.stderr)")
        // doc-command: edge-gateway certs -c
        let certs = try Shell.run([gatewayBinary(), "certs", "-c", dir.file("config.yaml")])
        XCTAssertEqual(certs.status, 2, certs.stdout + certs.stderr)
        XCTAssertTrue(certs.stdout.contains("upstream-app-client") && certs.stdout.contains("EXPIRED") && certs.stdout.contains("not checked"), certs.stdout)
    }

    /// TLS 1.3 checks our client certificate after our side of the handshake ended: the
    /// refusal (an alert) is the first thing read. Before, that was a 502 for every other
    /// request, counted nowhere; now it is a failed handshake like any other: the request
    /// (GET or POST: the upstream read none of it) goes to the next backend, and the
    /// refusing backend is counted by reason and ejected.
    func testTLS13ClientCertificateRefusalsMoveOn() async throws {
        let dir = TemporaryDirectory()
        let (leaf, client) = try serverAndClient(dir)
        let otherPKI = try TestPKI()
        defer { withExtendedLifetime(otherPKI) {} }
        let (refusing, good) = (freePort(), freePort())
        let (python, _) = try upstreams([spec(refusing, leaf, "min=1.3,client_ca=\(otherPKI.caPath)"), spec(good, leaf)], dir: dir)
        defer { RequestHardeningTests.stop(python) }
        let logs = LogCapture()
        let (gateway, group, http, admin) = try await start("""
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
              none:
                backends: ["127.0.0.1:\(refusing)", "127.0.0.1:\(good)"]
                tls: { sni: app.internal, ca_file: \(Self.pki.caPath) }
                passive_health: { max_fails: 3, fail_timeout: 60s }
              wrong:
                backends: ["127.0.0.1:\(refusing)", "127.0.0.1:\(good)"]
                tls: { sni: app.internal, ca_file: \(Self.pki.caPath), client_certificate: \(client.fullchain), client_key: \(client.key) }
                passive_health: { max_fails: 3, fail_timeout: 60s }
            routes: [ { host: none.test, upstream: none }, { host: wrong.test, upstream: wrong } ]
            admin: { address: "127.0.0.1:0" }
            """, dir: dir, logs: logs)
        for (host, reason) in [("none.test", "client_certificate_required"), ("wrong.test", "client_certificate_refused")] {
            let failed = try notAnsweredBy(good, http: http, count: 12, host: host)
            XCTAssertEqual(failed, [], "\(host): requests failed with one refusing backend out of two\n" + logs.all.suffix(6).joined(separator: "\n"))
            let states = try backends(admin, upstream: String(host.prefix { $0 != "." }))
            let bad = try XCTUnwrap(states.first { ($0["address"] as? String) == "127.0.0.1:\(refusing)" })
            XCTAssertEqual(bad["health"] as? String, "ejected", "\(host): \(bad)")
            XCTAssertGreaterThanOrEqual((bad["tls_handshake_failures"] as? [String: Int])?[reason] ?? 0, 3, "\(host): \(bad)")
        }
        let metrics = try fetch(admin, "/metrics").body
        let series = metrics.split(separator: "\n").filter { $0.hasPrefix("edge_upstream_tls_handshake_failures_total{") }
        // Every reason of a TLS backend is a series from the start, so the first failure is an increase.
        XCTAssertEqual(series.count, 2 * 2 * UpstreamHandshakeFailure.allCases.count, series.joined(separator: "\n"))
        XCTAssertTrue(series.contains { $0.hasPrefix("edge_upstream_tls_handshake_failures_total{upstream=\"wrong\",backend=\"127.0.0.1:\(good)\",reason=\"timeout\"} 0") },
                      series.joined(separator: "\n"))
        XCTAssertTrue(logs.all.contains { $0.contains("trying another backend") && $0.contains("refused our client certificate") }, logs.all.suffix(10).joined(separator: "\n"))
        try await stop(gateway, group)
    }

    /// A refusal by the upstream's verify callback (an allow list: OpenSSL then sends
    /// handshake_failure, not a certificate alert) is a refusal too. The refusing upstream is
    /// this gateway itself, with mutual TLS and an allow list that does not name our client.
    func testAnAllowListRefusalMovesOn() async throws {
        let dir = TemporaryDirectory()
        let (leaf, client) = try serverAndClient(dir)
        let good = freePort()
        let (python, _) = try upstreams([spec(good, leaf)], dir: dir)
        defer { RequestHardeningTests.stop(python) }
        let upstreamLogs = LogCapture()
        let (refusing, refusingGroup, refusingPort, _) = try await start("""
            listeners:
              - name: http
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), client_auth: { ca_file: \(Self.pki.caPath), allow: { dns: [someone.else] } } }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """, dir: dir, logs: upstreamLogs)
        let logs = LogCapture()
        let (gateway, group, http, admin) = try await startFailover(bad: refusingPort, good: good, tls: ", client_certificate: \(client.fullchain), client_key: \(client.key)",
                                                                    dir: dir, logs: logs)
        let failed = try notAnsweredBy(good, http: http, count: 8)
        XCTAssertEqual(failed, [], logs.all.suffix(6).joined(separator: "\n"))
        XCTAssertTrue(upstreamLogs.all.contains { $0.contains("not in client_auth.allow") }, upstreamLogs.all.suffix(5).joined(separator: "\n"))
        let bad = try XCTUnwrap(try backends(admin, upstream: "app").first { ($0["address"] as? String) == "127.0.0.1:\(refusingPort)" })
        XCTAssertGreaterThanOrEqual((bad["tls_handshake_failures"] as? [String: Int])?["client_certificate_refused"] ?? 0, 3, "\(bad)")
        try await stop(gateway, group)
        try await stop(refusing, refusingGroup)
    }

    /// A `tls` health check sees what TLS 1.3 says after the handshake: an upstream that
    /// refuses our client certificate is down (before, the check passed on the handshake and
    /// the backend took traffic again after each ejection); one that accepts it stays up.
    func testTheTLSHealthCheckSeesATLS13Refusal() async throws {
        let dir = TemporaryDirectory()
        let (leaf, client) = try serverAndClient(dir)
        let otherPKI = try TestPKI()
        defer { withExtendedLifetime(otherPKI) {} }
        let (refusing, accepting, silent) = (freePort(), freePort(), freePort())
        let (python, handshakes) = try upstreams([spec(refusing, leaf, "min=1.3,client_ca=\(otherPKI.caPath)"), spec(accepting, leaf, "min=1.3,client_ca=\(Self.pki.caPath)"),
                                         spec(silent, leaf, "min=1.3,client_ca=\(Self.pki.caPath),tickets=0")], dir: dir)
        defer { RequestHardeningTests.stop(python) }
        let logs = LogCapture()
        let (gateway, group, _, admin) = try await start("""
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
              app:
                backends: ["127.0.0.1:\(refusing)", "127.0.0.1:\(accepting)", "127.0.0.1:\(silent)"]
                tls: { sni: app.internal, ca_file: \(Self.pki.caPath), client_certificate: \(client.fullchain), client_key: \(client.key) }
                health_check: { kind: tls, interval: 100ms, timeout: 800ms, unhealthy_after: 2, healthy_after: 1 }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """, dir: dir, logs: logs)
        var states: [[String: Any]] = []
        let down = eventually(timeout: 10) {
            states = (try? self.backends(admin, upstream: "app")) ?? []
            return states.first { ($0["address"] as? String) == "127.0.0.1:\(refusing)" }?["health"] as? String == "down"
        }
        XCTAssertTrue(down, "the refusing backend is down: \(states)")
        // Six more probes of the silent backend (each handshake is a line of the upstreams'
        // SNI log): had they outlasted the check's timeout, two in a row would have taken it down.
        func probes(_ port: Int) -> Int {
            ((try? String(contentsOfFile: handshakes, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("\(port) ") }.count
        }
        let probed = probes(silent)
        XCTAssertTrue(eventually(timeout: 20) { probes(silent) >= probed + 6 }, "the silent backend was probed \(probes(silent) - probed) more times")
        states = try backends(admin, upstream: "app")
        func health(_ port: Int) -> String? { states.first { ($0["address"] as? String) == "127.0.0.1:\(port)" }?["health"] as? String }
        XCTAssertEqual(health(refusing), "down", "it stays down: \(states)")
        XCTAssertEqual(health(accepting), "up", "a session ticket says it accepted us: \(states)")
        // No ticket and no alert: up after a wait that stays within the check's 800 ms timeout.
        XCTAssertEqual(health(silent), "up", "\(states)")
        XCTAssertTrue(logs.all.contains { $0.contains("refused our client certificate") || $0.contains("unknown ca") }, logs.all.suffix(5).joined(separator: "\n"))
        try await stop(gateway, group)
    }

    /// An upstream that resets the connection in the middle of the handshake (a TLS port
    /// behind something that is not TLS, a crashing backend) is a failed handshake too.
    /// Before, the reset was a broken connection: a 502, no failover, not counted.
    func testAResetDuringTheHandshakeMovesOn() async throws {
        let dir = TemporaryDirectory()
        let leaf = try Self.pki.issue(subjectAltNames: ["DNS:app.internal"], commonName: "app.internal", into: dir.path, name: "server")
        let (resetting, good) = (freePort(), freePort())
        let (python, _) = try upstreams([spec(resetting, leaf, "reset=1"), spec(good, leaf)], dir: dir)
        defer { RequestHardeningTests.stop(python) }
        let logs = LogCapture()
        let (gateway, group, http, admin) = try await startFailover(bad: resetting, good: good, dir: dir, logs: logs)
        let failed = try notAnsweredBy(good, http: http, count: 8)
        XCTAssertEqual(failed, [], logs.all.suffix(6).joined(separator: "\n"))
        let bad = try XCTUnwrap(try backends(admin, upstream: "app").first { ($0["address"] as? String) == "127.0.0.1:\(resetting)" })
        XCTAssertGreaterThanOrEqual((bad["tls_handshake_failures"] as? [String: Int])?["closed"] ?? 0, 3, "\(bad)")
        XCTAssertTrue((bad["last_error"] as? String ?? "").contains("during the TLS handshake"), "\(bad)")
        try await stop(gateway, group)
    }

    /// What was offered and refused: a TLS 1.2 upstream that requires a client certificate,
    /// and one that speaks no version we offer.
    func testRefusalsSayWhatWasOfferedAndRefused() async throws {
        let dir = TemporaryDirectory()
        let leaf = try Self.pki.issue(subjectAltNames: ["DNS:app.internal"], commonName: "app.internal", into: dir.path, name: "server")
        let (mtls, old) = (freePort(), freePort())
        let (python, _) = try upstreams([spec(mtls, leaf, "max=1.2,client_ca=\(Self.pki.caPath)"), spec(old, leaf, "max=1.2")], dir: dir)
        defer { RequestHardeningTests.stop(python) }
        let logs = LogCapture()
        let (gateway, group, http, admin) = try await start("""
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
              mtls: { backends: ["127.0.0.1:\(mtls)"], tls: { sni: app.internal, ca_file: \(Self.pki.caPath) } }
              old: { backends: ["127.0.0.1:\(old)"], tls: { sni: app.internal, ca_file: \(Self.pki.caPath), min_version: TLSv1.3 } }
            routes: [ { host: mtls.test, upstream: mtls }, { host: old.test, upstream: old } ]
            admin: { address: "127.0.0.1:0" }
            """, dir: dir, logs: logs)
        XCTAssertEqual(try fetch(http, host: "mtls.test").code, "502")
        XCTAssertEqual(try fetch(http, host: "old.test").code, "502")
        let lines = logs.all.filter { $0.contains("upstream request failed") }.joined(separator: "\n")
        XCTAssertTrue(lines.contains("the upstream requires a client certificate and none is configured") && lines.contains("offered TLSv1.2 and TLSv1.3"), lines)
        XCTAssertTrue(lines.contains("the upstream accepts none of the TLS versions offered (TLSv1.3 only"), lines)
        let mtlsState = try XCTUnwrap(try backends(admin, upstream: "mtls").first)
        XCTAssertEqual((mtlsState["tls_handshake_failures"] as? [String: Int])?["client_certificate_required"], 1, "\(mtlsState)")
        let oldState = try XCTUnwrap(try backends(admin, upstream: "old").first)
        XCTAssertEqual((oldState["tls_handshake_failures"] as? [String: Int])?["protocol_version"], 1, "\(oldState)")
        try await stop(gateway, group)
    }
}

/// nginx from Debian as an upstream: by default an HTTPS one that requires client
/// certificates (`ssl_verify_client on`) and answers with the SNI and client subject it
/// saw; or the `servers` given (HTTP/2 upstream tests).
final class NginxUpstream {
    private let process = Process()

    convenience init(directory: TemporaryDirectory, port: Int, certificate: String, key: String, clientCA: String) throws {
        try self.init(directory: directory, port: port, servers: """
            server {
              listen 127.0.0.1:\(port) ssl;
              ssl_certificate \(certificate);
              ssl_certificate_key \(key);
              ssl_client_certificate \(clientCA);
              ssl_verify_client on;
              location / { return 200 "sni=$ssl_server_name client=$ssl_client_s_dn"; }
            }
            """)
    }

    /// nginx with `servers` (server blocks) in its http block; started once `port` accepts.
    init(directory: TemporaryDirectory, port: Int, servers: String) throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx") else {
            throw XCTSkip("nginx is not installed (scripts/test.sh installs nginx-light)")
        }
        let work = directory.file("nginx")
        try FileManager.default.createDirectory(atPath: work + "/logs", withIntermediateDirectories: true)
        try directory.write("nginx/nginx.conf", """
            daemon off;
            master_process off;
            worker_processes 1;
            pid \(work)/nginx.pid;
            error_log \(work)/logs/error.log warn;
            events { worker_connections 64; }
            http {
              access_log off;
              client_body_temp_path \(work)/body;
              proxy_temp_path \(work)/proxy;
              fastcgi_temp_path \(work)/fastcgi;
              uwsgi_temp_path \(work)/uwsgi;
              scgi_temp_path \(work)/scgi;
            \(servers)
            }
            """)
        self.process.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
        self.process.arguments = ["-c", work + "/nginx.conf", "-p", work]
        self.process.standardOutput = FileHandle.nullDevice
        self.process.standardError = FileHandle.nullDevice
        try self.process.run()
        guard GatewayProcess.Probe.wait(port: port, timeout: 10, alive: { self.process.isRunning }) else {
            let log = (try? String(contentsOfFile: work + "/logs/error.log", encoding: .utf8)) ?? ""
            self.stop()
            throw NSError(domain: "nginx", code: 1, userInfo: [NSLocalizedDescriptionKey: "nginx did not start: \(log)"])
        }
    }

    func stop() {
        guard self.process.isRunning else { return }
        kill(self.process.processIdentifier, SIGKILL)
        self.process.waitUntilExit()
    }
}

/// The names sent and accepted per backend, without sockets.
final class UpstreamNamesTests: XCTestCase {
    func tls(sni: String?, alternatives: [String] = [], verifies: Bool = true) throws -> UpstreamTLS {
        UpstreamTLS(context: try TLSContext.client(configuration: TLSClientConfiguration()), serverName: sni,
                    alternativeNames: alternatives, verifiesNames: verifies)
    }

    func testSNIAndAcceptedNamesPerBackend() throws {
        let host = try Backend(host: "localhost", port: 443)
        let address = try Backend(host: "127.0.0.1", port: 443)
        let v6 = try Backend(host: "::1", port: 443)
        // Without sni: each backend's own host, never an IP literal as SNI.
        let plain = try tls(sni: nil, alternatives: ["app.internal"])
        XCTAssertEqual(plain.serverName(for: host), "localhost")
        XCTAssertNil(plain.serverName(for: address))
        XCTAssertNil(plain.serverName(for: v6))
        XCTAssertEqual(plain.verifyNames(for: host), ["localhost", "app.internal"])
        XCTAssertEqual(plain.verifyNames(for: address), ["127.0.0.1", "app.internal"])
        // With sni: sent to every backend and accepted first; "" sends none.
        let named = try tls(sni: "app.internal", alternatives: ["127.0.0.1", "app.internal"])
        XCTAssertEqual(named.serverName(for: address), "app.internal")
        XCTAssertEqual(named.verifyNames(for: host), ["app.internal", "127.0.0.1"])
        let none = try tls(sni: "")
        XCTAssertNil(none.serverName(for: host))
        XCTAssertEqual(none.verifyNames(for: host), ["localhost"], "an empty sni never turns the name check off")
        XCTAssertEqual(try tls(sni: "app.internal", verifies: false).verifyNames(for: host), [])
    }
}
