import EdgeCertificates
import EdgeGateway
import EdgeTestSupport
import Foundation
import XCTest

/// Expiry states, the status views, metrics and the `certs` command, with short-lived
/// certificates made at test time.
final class ExpiryTests: XCTestCase {
    static let pki = try! TestPKI()
    static let now = Int64(Date().timeIntervalSince1970)

    // MARK: pure policy and monitor (injected clock)

    func testDefaultThresholdsScaleWithTheLifetime() {
        let policy = ExpiryPolicy()
        let day: Int64 = 86_400
        // 90-day certificate: warning at 27 days left, critical at 9.
        XCTAssertEqual(policy.state(notBefore: 0, notAfter: 90 * day, now: 90 * day - 28 * day), .ok)
        XCTAssertEqual(policy.state(notBefore: 0, notAfter: 90 * day, now: 90 * day - 26 * day), .warning)
        XCTAssertEqual(policy.state(notBefore: 0, notAfter: 90 * day, now: 90 * day - 10 * day), .warning)
        XCTAssertEqual(policy.state(notBefore: 0, notAfter: 90 * day, now: 90 * day - 8 * day), .critical)
        // 6-day certificate: warning at about 43 hours left, critical at about 14.
        XCTAssertEqual(policy.state(notBefore: 0, notAfter: 6 * day, now: 6 * day - 44 * 3600), .ok)
        XCTAssertEqual(policy.state(notBefore: 0, notAfter: 6 * day, now: 6 * day - 42 * 3600), .warning)
        XCTAssertEqual(policy.state(notBefore: 0, notAfter: 6 * day, now: 6 * day - 14 * 3600), .critical)
        XCTAssertEqual(policy.state(notBefore: 0, notAfter: 6 * day, now: 6 * day), .expired)
        XCTAssertEqual(policy.state(notBefore: 100, notAfter: 6 * day, now: 50), .notYetValid)
    }

    func testMonitorLogsOncePerChangeThenAtTheRepeatInterval() {
        var monitor = ExpiryMonitor()
        monitor.repeatSeconds = [.warning: 1000, .critical: 100, .expired: 100, .notYetValid: 100]
        func observe(_ state: CertificateState, serial: String = "01") -> [ExpiryMonitor.Observation] {
            [ExpiryMonitor.Observation(name: "site", serial: serial, state: state, notAfter: 10_000)]
        }
        XCTAssertEqual(monitor.evaluate(observe(.ok), now: 0).map(\.state), [.ok], "startup line")
        for t in stride(from: 60, to: 3600, by: 60) {
            XCTAssertTrue(monitor.evaluate(observe(.ok), now: Int64(t)).isEmpty, "ok repeats never")
        }
        XCTAssertEqual(monitor.evaluate(observe(.warning), now: 4000).map(\.changed), [true], "change logged at once")
        XCTAssertTrue(monitor.evaluate(observe(.warning), now: 4060).isEmpty)
        XCTAssertTrue(monitor.evaluate(observe(.warning), now: 4999).isEmpty)
        XCTAssertEqual(monitor.evaluate(observe(.warning), now: 5000).map(\.changed), [false], "repeat after the interval")
        XCTAssertTrue(monitor.evaluate(observe(.warning), now: 5060).isEmpty)
        let critical = monitor.evaluate(observe(.critical), now: 5100)
        XCTAssertEqual(critical.map(\.level), [.error])
        XCTAssertTrue(monitor.evaluate(observe(.critical), now: 5150).isEmpty)
        XCTAssertEqual(monitor.evaluate(observe(.critical), now: 5200).count, 1)
        XCTAssertEqual(monitor.evaluate(observe(.ok, serial: "02"), now: 5300).map(\.state), [.ok], "renewal logged")
        let expired = monitor.evaluate(observe(.expired, serial: "02"), now: 20_000)
        XCTAssertEqual(expired.first?.secondsRemaining, 0, "an expired certificate never shows time left")
        XCTAssertEqual(expired.first?.level, .error)
    }

    // MARK: status JSON, metrics and chain check on a running gateway

    func testStatusFieldsStatesMetricsAndChainCheck() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let now = Self.now
        _ = try Self.pki.issue(["ok.test"], notBefore: now - 86_400, notAfter: now + 89 * 86_400, into: certs, name: "fine")
        _ = try Self.pki.issue(["soon.test"], notBefore: now - 86_400, notAfter: now + 300, into: certs, name: "soon")
        _ = try Self.pki.issue(["old.test"], notBefore: now - 10 * 86_400, notAfter: now - 3600, into: certs, name: "old")
        _ = try Self.pki.issue(["future.test"], notBefore: now + 86_400, notAfter: now + 30 * 86_400, into: certs, name: "future")
        let shortIntermediate = try Self.pki.intermediate(name: "short-intermediate", notBefore: now - 86_400, notAfter: now + 3 * 3600)
        _ = try Self.pki.issue(["inter.test"], notBefore: now - 86_400, notAfter: now + 80 * 86_400, into: certs, name: "inter", issuer: shortIntermediate)
        // The same leaf served without its intermediate: an incomplete chain.
        let lone = try Self.pki.issue(["lone.test"], days: 90, into: dir.file("staging"), name: "lone")
        try Shell.run(["cp", lone.certificate, certs + "/lone.crt"])
        try Shell.run(["cp", lone.key, certs + "/lone.key"])

        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners: [ { name: https, address: "127.0.0.1:0", tls: {} } ]
            certificates:
              sources: [ { directory: certs } ]
              default: fine
              ca_file: \(Self.pki.caPath)
              watch: { debounce: 100ms }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let admin = harness.gateway.adminPort!
        let json = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status/certificates"]).stdout
        let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
        let items = Dictionary(uniqueKeysWithValues: (object["certificates"] as! [[String: Any]]).map { ($0["name"] as! String, $0) })
        XCTAssertEqual(items["fine"]?["state"] as? String, "ok")
        XCTAssertEqual(items["soon"]?["state"] as? String, "critical")
        XCTAssertEqual(items["old"]?["state"] as? String, "expired")
        XCTAssertEqual(items["old"]?["seconds_remaining"] as? Int, 0, "expired never shows time left")
        XCTAssertEqual(items["future"]?["state"] as? String, "not_yet_valid")
        XCTAssertEqual(items["inter"]?["state"] as? String, "critical", "an intermediate expiring first counts")
        let fine = items["fine"]!
        for key in ["source", "server_names", "serial", "subject", "issuer", "subject_alternative_names", "key_type", "sha256_fingerprint",
                    "not_before", "not_after", "seconds_remaining", "lifetime_used", "state", "chain", "loaded_at", "generation", "chain_valid", "rejected_version"] {
            XCTAssertNotNil(fine[key], "field \(key)")
        }
        XCTAssertEqual(fine["key_type"] as? String, "ECDSA P-256")
        XCTAssertEqual(fine["default"] as? Bool, true)
        XCTAssertEqual((fine["chain"] as? [[String: Any]])?.count, 2)
        // Every time in RFC 3339 beside the Unix one.
        XCTAssertTrue((fine["loaded_at_rfc3339"] as? String ?? "").hasSuffix("Z"), "\(fine)")
        XCTAssertTrue(((fine["chain"] as? [[String: Any]])?.first?["not_before_rfc3339"] as? String ?? "").hasSuffix("Z"), "\(fine)")
        XCTAssertEqual(fine["chain_valid"] as? Bool, true, "full chain under the configured CA: \(fine)")
        XCTAssertEqual(items["lone"]?["chain_valid"] as? Bool, false)
        XCTAssertTrue((items["lone"]?["chain_problem"] as? String ?? "").contains("incomplete chain"), "\(items["lone"] ?? [:])")
        XCTAssertFalse(json.contains("PRIVATE KEY"))

        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status"]).stdout
        let statusObject = try JSONSerialization.jsonObject(with: Data(status.utf8)) as! [String: Any]
        let counts = statusObject["certificates_by_state"] as! [String: Int]
        XCTAssertEqual(counts["critical"], 2)
        XCTAssertEqual(counts["expired"], 1)

        // Prometheus exposition passes promtool and names every lineage.
        let metrics = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
        XCTAssertTrue(metrics.contains("edge_certificate_not_after_seconds{name=\"fine\""), metrics)
        XCTAssertTrue(metrics.contains("edge_certificate_remaining_seconds{name=\"old\""), metrics)
        XCTAssertTrue(metrics.contains("edge_certificate_chain_valid{name=\"lone\"} 0"), metrics)
        if FileManager.default.fileExists(atPath: "/usr/bin/promtool") {
            // doc-command: promtool check metrics
            let check = try Shell.run(["promtool", "check", "metrics"], input: metrics)
            XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        }
        let page = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/"]).stdout
        XCTAssertTrue(page.contains("<table>") && page.contains("soon") && page.contains("expired"), page)
        // The page an operator keeps open: each chain certificate's expiry, listeners,
        // upstream health, the publications; it refreshes itself without a reload.
        for section in ["<h2>Latest publications</h2>", "<h2>Listeners</h2>", "<h2>Upstreams</h2>", "<summary class=\"small\">chain (2)</summary>",
                        "<td>loaded</td>", "setTimeout(refresh", "<span class=\"up\">up</span>"] {
            XCTAssertTrue(page.contains(section), "\(section) missing from the page")
        }
        XCTAssertFalse(page.contains("src=\"http") || page.contains("href=\"http"), "no external assets")
        // The page in a real headless browser.
        if FileManager.default.fileExists(atPath: "/usr/bin/chromium") {
            let png = dir.file("status.png")
            let shot = try Shell.run(["bash", repositoryRoot() + "/scripts/status-page-screenshot.sh", "http://127.0.0.1:\(admin)/", png], timeout: 90)
            XCTAssertEqual(shot.status, 0, shot.stderr)
            let bytes = (try? Data(contentsOf: URL(fileURLWithPath: png))) ?? Data()
            XCTAssertEqual(Array(bytes.prefix(4)), [0x89, 0x50, 0x4E, 0x47], "a PNG")
            XCTAssertGreaterThan(bytes.count, 20_000, "a rendered page, not a blank one")
            if let keep = ProcessInfo.processInfo.environment["EDGE_SCREENSHOT_OUT"] {
                try? FileManager.default.removeItem(atPath: keep)
                try FileManager.default.copyItem(atPath: png, toPath: keep)
            }
        }
        await harness.shutdown()
    }

    func testStatusFollowsRotationAndShowsRejectedVersions() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let v1 = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners: [ { name: https, address: "127.0.0.1:0", tls: {} } ]
            certificates: { sources: [ { directory: certs } ], watch: { debounce: 100ms } }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let admin = harness.gateway.adminPort!
        func site() -> [String: Any]? {
            guard let text = try? Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status/certificates"]).stdout,
                  let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return nil }
            return (object["certificates"] as? [[String: Any]])?.first { $0["name"] as? String == "site" }
        }
        XCTAssertEqual(site()?["serial"] as? String, v1.serial)
        XCTAssertEqual(site()?["generation"] as? Int, 1)
        let v2 = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "v2")
        try Shell.run(["mv", v2.key, certs + "/site.key"])
        try Shell.run(["mv", v2.fullchain, certs + "/site.crt"])
        XCTAssertTrue(eventually(timeout: 2) { site()?["serial"] as? String == v2.serial }, "new serial within the debounce")
        XCTAssertEqual(site()?["generation"] as? Int, 2)
        // A broken newer version: its error shows while the good serial is still served.
        try "garbage".write(toFile: certs + "/site.crt", atomically: false, encoding: .utf8)
        XCTAssertTrue(eventually(timeout: 3) { (site()?["rejected_version"] as? [String: Any])?["error"] != nil })
        let rejected = site()?["rejected_version"] as? [String: Any]
        XCTAssertTrue((rejected?["error"] as? String ?? "").contains("no CERTIFICATE block"), "\(rejected ?? [:])")
        XCTAssertEqual(rejected?["serving_previous_version"] as? Bool, true)
        XCTAssertEqual(site()?["serial"] as? String, v2.serial)
        XCTAssertEqual(servedSerial(port: harness.port("https"), serverName: "localhost"), v2.serial)
        // The page's history: the first load, the renewal by a file change, the rejection.
        let page = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/"]).stdout
        let from = try XCTUnwrap(page.range(of: "<h2>Latest publications</h2>"), page).upperBound
        let history = String(page[from...]).components(separatedBy: "<h2>")[0]
        XCTAssertTrue(history.contains("<td>file change</td><td>2</td><td>renewed site"), history)
        XCTAssertTrue(history.contains("<td>loaded</td><td>1</td><td>added site"), history)
        XCTAssertTrue(history.contains("rejected site: ") && history.contains("no CERTIFICATE block"), history)
        XCTAssertLessThan(history.range(of: "rejected site")!.lowerBound, history.range(of: "renewed site")!.lowerBound, "newest first: \(history)")
        await harness.shutdown()
    }

    // MARK: the certs command

    func testCertsCommandExitCodes() throws {
        let now = Self.now
        func dirWith(_ notBefore: Int64, _ notAfter: Int64) throws -> TemporaryDirectory {
            let dir = TemporaryDirectory()
            _ = try Self.pki.issue(["x.test"], notBefore: notBefore, notAfter: notAfter, into: dir.path, name: "x")
            return dir
        }
        let ok = try dirWith(now - 86_400, now + 89 * 86_400)
        let warning = try dirWith(now - 60 * 86_400, now + 20 * 86_400)
        let critical = try dirWith(now - 80 * 86_400, now + 5 * 86_400)
        let expired = try dirWith(now - 90 * 86_400, now - 60)
        let unreadable = TemporaryDirectory()
        try unreadable.write("x.crt", "garbage")
        try unreadable.write("x.key", "garbage")
        for (dir, code, state) in [(ok, 0, "ok"), (warning, 1, "warning"), (critical, 2, "critical"), (expired, 2, "expired"), (unreadable, 2, "unreadable")] {
            // doc-command: edge-gateway certs DIR...
            let result = try Shell.run([gatewayBinary(), "certs", dir.path])
            XCTAssertEqual(result.status, Int32(code), "\(state): \(result.stdout) \(result.stderr)")
            XCTAssertTrue(result.stdout.contains(state), "\(state): \(result.stdout)")
        }
        let json = try Shell.run([gatewayBinary(), "certs", "--json", ok.path])
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(((object?["certificates"] as? [[String: Any]])?.first?["state"]) as? String, "ok")
        // With a configuration file.
        try ok.write("config.yaml", """
            listeners: [ { name: https, address: "127.0.0.1:0", tls: { certificate: x.crt, key: x.key } } ]
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            """)
        // doc-command: edge-gateway certs -c FILE
        let fromConfig = try Shell.run([gatewayBinary(), "certs", "-c", ok.file("config.yaml")])
        XCTAssertEqual(fromConfig.status, 0, fromConfig.stdout + fromConfig.stderr)
        XCTAssertTrue(fromConfig.stdout.contains("https"), fromConfig.stdout)
    }
}
