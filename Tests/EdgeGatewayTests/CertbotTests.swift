import EdgeGateway
import EdgeTestSupport
import Foundation
import XCTest

/// The real certbot against the real ACME test server (pebble), both Debian packages, on loopback.
final class CertbotTests: XCTestCase {
    /// A running pebble and a certbot configuration directory pointed at it.
    final class ACME {
        let dir: TemporaryDirectory
        let pki: TestPKI
        let pebble = Process()
        let port = freePort()
        let managementPort = freePort()

        /// With `httpPort`, pebble really validates HTTP-01 challenges, at that port on
        /// 127.0.0.1 (`localhost`); without, every challenge passes unchecked.
        /// `validity`: the lifetime of the certificates pebble issues, in seconds (its default: 5 years).
        init(validatingAt httpPort: Int? = nil, validity: Int? = nil) throws {
            self.dir = TemporaryDirectory()
            self.pki = try TestPKI()
            let api = try self.pki.issue(["localhost"], into: self.dir.path, name: "pebble-api")
            try self.dir.write("pebble.json", """
                { "pebble": { "listenAddress": "127.0.0.1:\(self.port)", "managementListenAddress": "127.0.0.1:\(self.managementPort)",
                  "certificate": "\(api.fullchain)", "privateKey": "\(api.key)", "httpPort": \(httpPort ?? freePort()), "tlsPort": \(freePort()),
                  "ocspResponderURL": "", "externalAccountBindingRequired": false\(validity.map { ", \"certificateValidityPeriod\": \($0)" } ?? "") } }
                """)
            self.pebble.executableURL = URL(fileURLWithPath: "/usr/bin/pebble")
            self.pebble.arguments = ["-config", self.dir.file("pebble.json")]
            // No validation delay, no nonce rejections; without a port every challenge passes.
            self.pebble.environment = ["PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"]
            if httpPort == nil {
                self.pebble.environment?["PEBBLE_VA_ALWAYS_VALID"] = "1"
            } else {
                self.pebble.environment?["PEBBLE_AUTHZREUSE"] = "0"  // renewals validated anew (but for 1 %: see the webroot test)
            }
            let log = FileHandle(forWritingAtPath: self.dir.file("pebble.log")) ?? {
                _ = FileManager.default.createFile(atPath: self.dir.file("pebble.log"), contents: nil)
                return FileHandle(forWritingAtPath: self.dir.file("pebble.log"))!
            }()
            self.pebble.standardOutput = log
            self.pebble.standardError = log
            try self.pebble.run()
            guard GatewayProcess.Probe.wait(port: self.port, timeout: 20) else { throw NSError(domain: "pebble did not start", code: 1) }
        }

        var configDir: String { self.dir.file("letsencrypt") }

        /// Runs certbot with its own directories, trusting pebble's API certificate.
        func certbot(_ arguments: [String]) throws -> ProcessResult {
            let common = ["--non-interactive", "--config-dir", self.configDir, "--work-dir", self.dir.file("work"), "--logs-dir", self.dir.file("logs")]
            let result = try Shell.run(["certbot"] + arguments + common, timeout: 120,
                                       environment: ["REQUESTS_CA_BUNDLE": self.pki.caPath, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                                                     "EDGE_GATEWAY_GROUP": Self.hookGroup])
            return result
        }

        /// The group the shipped deploy hook gives read access to (one every Debian host has).
        static let hookGroup = "daemon"

        /// Issues `name`; with `webroot`, certbot's webroot plugin answers the challenge
        /// (files under that directory, which something must serve on the HTTP port), and
        /// with `deployHook` certbot runs the shipped deploy hook after it and every renewal.
        func issue(_ name: String, webroot: String? = nil, deployHook: Bool = false) throws {
            var authenticator = webroot.map { ["--webroot", "-w", $0] } ?? ["--manual", "--manual-auth-hook", "/bin/true", "--preferred-challenges", "http"]
            if deployHook { authenticator += ["--deploy-hook", repositoryRoot() + "/deploy/certbot/edge-gateway-deploy-hook.sh"] }
            // The README's command with the webroot and deploy hook (the webroot test), against
            // pebble, with the test's directories and the hook as deploy/ holds it (the package
            // installs it at /usr/share/edge-gateway/certbot-deploy-hook.sh):
            // doc-command: certbot certonly --webroot -w /var/lib/edge-gateway/acme -d example.com --deploy-hook /usr/share/edge-gateway/certbot-deploy-hook.sh
            // doc-command: certbot certonly
            let result = try self.certbot(["certonly", "--agree-tos", "--register-unsafely-without-email", "--server", "https://localhost:\(self.port)/dir"]
                                          + authenticator + ["-d", name, "--cert-name", name])
            guard result.status == 0 else { throw NSError(domain: "certbot certonly \(name): \(result.stdout)\(result.stderr)", code: 1) }
        }

        /// Sets `renew_before_expiry` in the lineage's renewal file, where certbot's own
        /// comment says to (the first line).
        func setRenewBeforeExpiry(_ name: String, _ value: String) throws {
            let path = "\(self.configDir)/renewal/\(name).conf"
            let text = try String(contentsOfFile: path, encoding: .utf8)
            try ("renew_before_expiry = \(value)\n" + text).write(toFile: path, atomically: true, encoding: .utf8)
        }

        func renew(reuseKey: Bool) throws {
            // doc-command: certbot renew
            let result = try self.certbot(["renew", "--force-renewal", "--no-random-sleep-on-renew"] + (reuseKey ? ["--reuse-key"] : []))
            guard result.status == 0 else { throw NSError(domain: "certbot renew: \(result.stdout)\(result.stderr)", code: 1) }
        }

        /// The serial certbot's live/ link points at now.
        func liveSerial(_ name: String) throws -> String {
            try Shell.run(["openssl", "x509", "-in", "\(self.configDir)/live/\(name)/cert.pem", "-noout", "-serial"]).stdout
                .trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "serial=", with: "")
        }

        /// pebble's root, which issued every certificate (for clients that verify).
        func root() throws -> String {
            let path = self.dir.file("pebble-root.pem")
            let result = try Shell.run(["curl", "-sS", "--cacert", self.pki.caPath, "-o", path, "https://localhost:\(self.managementPort)/roots/0"])
            guard result.status == 0 else { throw NSError(domain: "pebble root: \(result.stderr)", code: 1) }
            return path
        }

        func stop() {
            if self.pebble.isRunning { self.pebble.terminate() }
            self.pebble.waitUntilExit()
        }
    }

    func testRenewalsAndANewLineageUnderLoadFailNothing() async throws {
        let acme = try ACME()
        defer { acme.stop() }
        try acme.issue("a.example.test")
        try acme.issue("b.example.test")
        let root = try acme.root()
        let harness = try await GatewayHarness.start { port in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: {}
            certificates:
              sources:
                - certbot: \(acme.configDir)/live
              default: a.example.test
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let port = harness.port("https")
        XCTAssertEqual(servedSerial(port: port, serverName: "a.example.test"), try acme.liveSerial("a.example.test"))
        XCTAssertEqual(servedSerial(port: port, serverName: "b.example.test"), try acme.liveSerial("b.example.test"))
        let load = try TLSLoad(port: port, caFile: root, directory: harness.directory, serverName: "a.example.test")
        var serials = Set<String>()
        for round in 0..<10 {
            try acme.renew(reuseKey: round % 2 == 1)
            let expected = try acme.liveSerial("a.example.test")
            let expectedB = try acme.liveSerial("b.example.test")
            XCTAssertTrue(serials.insert(expected).inserted, "certbot issued a new certificate")
            XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: port, serverName: "a.example.test") == expected },
                          "round \(round): the renewed certificate is served")
            XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: port, serverName: "b.example.test") == expectedB })
        }
        // A lineage issued while serving is served by SNI as soon as certbot finishes.
        try acme.issue("c.example.test")
        let issuedC = try acme.liveSerial("c.example.test")
        XCTAssertTrue(eventually(timeout: 3) { servedSerial(port: port, serverName: "c.example.test") == issuedC })
        let stats = try load.finish()
        // `edge-gateway certs` reads certbot's directory as `certbot certificates` does: the
        // same lineages, expiring at the same minute.
        // doc-command: certbot certificates
        let certbotList = try acme.certbot(["certificates"])
        let expiries = certbotList.stdout.split(separator: "\n").compactMap { line -> String? in
            guard let range = line.range(of: "Expiry Date: ") else { return nil }
            return String(line[range.upperBound...].prefix(16))  // 2027-03-05 19:10
        }
        let ours = try Shell.run([gatewayBinary(), "certs", acme.configDir + "/live"]).stdout
        XCTAssertEqual(expiries.count, 3, certbotList.stdout)
        for expiry in expiries { XCTAssertTrue(ours.contains(expiry), "\(expiry) (certbot certificates) not in:\n\(ours)") }
        XCTAssertEqual(stats.keepAliveErrors, [], "no request failed during 10 renewals")
        XCTAssertEqual(stats.handshakeErrors, [], "no handshake failed during 10 renewals")
        XCTAssertGreaterThan(stats.keepAliveOK, 100)
        XCTAssertGreaterThan(stats.handshakesOK, 20)
        XCTAssertGreaterThan(stats.certificates.count, 5, "handshakes saw the renewed certificates")
        XCTAssertFalse(harness.logs.contains("certificate rejected"), harness.logs.all.filter { $0.contains("rejected") }.joined(separator: "\n"))
        await harness.shutdown()
    }
    /// The renewal watchdog against the real certbot: a lineage whose renewal file says to
    /// renew 100 s before expiry, on 2-minute certificates from pebble, is due about 20 s after
    /// issuance and overdue 5 s (`renewal_grace`) later, when nothing renewed it. The
    /// status views, the metric, the log and `certs` say so; then `certbot renew`, without
    /// --force-renewal, renews it (certbot agrees it was due) and the warning clears.
    func testAnOverdueRenewalIsReportedAndTheRenewalClearsIt() throws {
        let acme = try ACME(validity: 120)
        defer { acme.stop() }
        try acme.issue("late.example.test")
        try acme.setRenewBeforeExpiry("late.example.test", "100 seconds")
        let issued = try acme.liveSerial("late.example.test")
        let dir = TemporaryDirectory()
        let (https, admin) = (freePort(), freePort())
        // No expiry warnings at all, so that the exit code of `certs` is the watchdog's
        // alone; a grace of 5 s (the least by default is 26 h, the longest gap between two
        // runs of Debian's certbot timer).
        try dir.write("gateway.yaml", """
            listeners: [ { name: https, address: "127.0.0.1:\(https)", tls: {} } ]
            certificates: { sources: [ { certbot: \(acme.configDir) } ] }
            expiry: { warning_remaining: 0, critical_remaining: 0, warning_floor: 0s, critical_floor: 0s, check_interval: 1s, renewal_grace: 5s }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        let gateway = try GatewayProcess(config: dir.file("gateway.yaml"), logPath: dir.file("log"))
        defer { _ = gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        func certificate() -> [String: Any]? {
            guard let body = try? Shell.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:\(admin)/status/certificates"]).stdout,
                  let json = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else { return nil }
            return (json["certificates"] as? [[String: Any]])?.first
        }
        func renewal() -> [String: Any]? { certificate()?["renewal"] as? [String: Any] }
        let served = try XCTUnwrap(certificate())
        let first = try XCTUnwrap(served["renewal"] as? [String: Any], "\(served)")
        let notAfter = try XCTUnwrap(served["not_after"] as? Int)
        XCTAssertEqual(first["expected_at"] as? Int, notAfter - 100, "\(first)")
        XCTAssertEqual(first["grace_seconds"] as? Int, 5)
        XCTAssertEqual(first["state"] as? String, "scheduled", "\(first)")
        XCTAssertEqual(try Shell.run([gatewayBinary(), "certs", "-c", dir.file("gateway.yaml")]).status, 0)
        XCTAssertEqual(first["basis"] as? String, "renew_before_expiry = 100 seconds in \(acme.configDir)/renewal/late.example.test.conf")
        XCTAssertTrue(eventually(timeout: 60, interval: 0.5) { renewal()?["state"] as? String == "overdue" }, "\(renewal() ?? [:])")
        let overdue = try XCTUnwrap(renewal())
        XCTAssertTrue((overdue["message"] as? String ?? "").hasPrefix("certbot should have renewed late.example.test "), "\(overdue)")
        XCTAssertEqual(metricSum("edge_certificate_renewal_overdue", admin: admin), 1)
        XCTAssertEqual(metricSum("edge_certificate_renewal_expected_timestamp_seconds", admin: admin).map(Int.init), notAfter - 100)
        let page = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/"]).stdout
        XCTAssertTrue(page.contains("RENEWAL OVERDUE: certbot should have renewed late.example.test "), page)
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("certbot should have renewed late.example.test") }, gateway.log)
        // doc-command: edge-gateway certs -c FILE
        let certs = try Shell.run([gatewayBinary(), "certs", "-c", dir.file("gateway.yaml")])
        XCTAssertEqual(certs.status, 1, "an overdue renewal is a warning: " + certs.stdout + certs.stderr)
        XCTAssertTrue(certs.stdout.contains("OVERDUE"), certs.stdout)
        XCTAssertTrue(certs.stdout.contains("check `certbot renew --dry-run` and the timer"), certs.stdout)

        // What the message says to run works against this lineage, and changes nothing
        // (pebble named: a dry run otherwise goes to Let's Encrypt's staging server).
        // doc-command: certbot renew --dry-run
        let dryRun = try acme.certbot(["renew", "--dry-run", "--no-random-sleep-on-renew", "--server", "https://localhost:\(acme.port)/dir"])
        XCTAssertEqual(dryRun.status, 0, dryRun.stdout + dryRun.stderr)
        XCTAssertEqual(try acme.liveSerial("late.example.test"), issued)
        // certbot itself finds the lineage due (no --force-renewal) and renews it.
        let renewed = try acme.certbot(["renew", "--no-random-sleep-on-renew"])
        XCTAssertEqual(renewed.status, 0, renewed.stdout + renewed.stderr)
        XCTAssertNotEqual(try acme.liveSerial("late.example.test"), issued, "certbot renewed it: " + renewed.stdout)
        XCTAssertTrue(eventually(timeout: 5) { (renewal()?["state"] as? String).map { $0 != "overdue" } ?? false }, "\(renewal() ?? [:])")
        let after = try XCTUnwrap(certificate())
        XCTAssertEqual((after["renewal"] as? [String: Any])?["expected_at"] as? Int, (after["not_after"] as? Int ?? 0) - 100, "the renewed certificate's own schedule")
        XCTAssertEqual(metricSum("edge_certificate_renewal_overdue", admin: admin), 0)
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("late.example.test renewed (serial") }, gateway.log)
        XCTAssertEqual(try Shell.run([gatewayBinary(), "certs", "-c", dir.file("gateway.yaml")]).status, 0)
    }

    /// certbot's webroot plugin with the gateway serving the challenge directory on its
    /// plain listener and redirecting everything else there to HTTPS (what an nginx
    /// `listen 80` server block does for certbot); pebble really fetches every challenge
    /// through the gateway. The issued certificate, and then its renewal, obtained the
    /// same way, are served on the HTTPS listener without a restart.
    func testWebrootChallengesAreAnsweredByTheGatewayAndTheIssuedCertificateIsServed() async throws {
        let httpPort = freePort()
        let acme = try ACME(validatingAt: httpPort)
        defer { acme.stop() }
        let dir = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir.file("webroot"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(acme.configDir)/live", withIntermediateDirectories: true)
        // Until certbot's first certificate, the HTTPS listener serves a placeholder (nginx needs one too).
        let placeholder = try acme.pki.issue(["placeholder.example.test"], into: dir.path, name: "placeholder")
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners:
              - { name: http, address: "127.0.0.1:\(httpPort)" }
              - { name: https, address: "127.0.0.1:0", tls: {} }
            certificates:
              sources:
                - certbot: \(acme.configDir)/live
                - { certificate: \(placeholder.fullchain), key: \(placeholder.key), name: placeholder }
              default: placeholder
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes:
              - { listener: http, path_prefix: /.well-known/acme-challenge/, root: webroot }
              - { listener: http, redirect: {} }
              - { upstream: app }
            admin: { address: "127.0.0.1:0" }
            """
        }
        let https = harness.port("https")
        XCTAssertEqual(servedSerial(port: https, serverName: "localhost"), placeholder.serial)
        let pebbleLog = { (try? String(contentsOfFile: acme.dir.file("pebble.log"), encoding: .utf8)) ?? "" }
        let fetched = "Attempting to validate w/ HTTP: http://localhost:\(httpPort)/.well-known/acme-challenge/"
        // The README's command: webroot, and the shipped deploy hook (chgrp needs root).
        let hook = getuid() == 0
        try acme.issue("localhost", webroot: dir.file("webroot"), deployHook: hook)
        let modes = { (path: String) in (try? Shell.run(["stat", "-c", "%G %a", acme.configDir + "/" + path]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? "" }
        if hook {
            XCTAssertEqual(modes("live"), "\(ACME.hookGroup) 750", "the deploy hook opened live/ to the group")
            XCTAssertEqual(modes("archive/localhost/privkey1.pem"), "\(ACME.hookGroup) 640", "the deploy hook opened the key to the group")
            XCTAssertEqual(modes("renewal"), "\(ACME.hookGroup) 750", "the deploy hook opened renewal/ to the group")
            XCTAssertEqual(modes("renewal/localhost.conf"), "\(ACME.hookGroup) 640", "and the lineage's renewal settings")
        }
        XCTAssertTrue(pebbleLog().contains(fetched), "pebble fetched the challenge through the gateway:\n\(pebbleLog().suffix(2000))")
        let issued = try acme.liveSerial("localhost")
        XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: https, serverName: "localhost") == issued }, "the issued certificate is served")
        let root = try acme.root()
        let verified = try Shell.run(["curl", "-sS", "--max-time", "10", "--cacert", root, "-o", "/dev/null", "-w", "%{http_code}", "https://localhost:\(https)/"])
        XCTAssertEqual(verified.stdout, "200", "a client trusting the ACME root reaches the upstream: \(verified.stderr)")
        // The renewal uses the webroot again (certbot keeps it in the lineage's renewal configuration).
        // pebble reuses the valid authorization one time in a hundred even with
        // PEBBLE_AUTHZREUSE=0 (it makes a new one only when rand.Intn(100) > 0): then nothing is
        // validated, and it logs no new authorization. Such a renewal is made again.
        let validations = pebbleLog().components(separatedBy: fetched).count
        let newAuthorizations = { pebbleLog().components(separatedBy: "authorizations in the db").count }
        for _ in 0..<3 {
            let before = newAuthorizations()
            try acme.renew(reuseKey: false)
            if newAuthorizations() > before { break }
        }
        XCTAssertGreaterThan(pebbleLog().components(separatedBy: fetched).count, validations,
                             "the renewal was validated through the gateway too:\n\(pebbleLog().suffix(6000))")
        let renewed = try acme.liveSerial("localhost")
        if hook {
            let keys = try FileManager.default.contentsOfDirectory(atPath: acme.configDir + "/archive/localhost").filter { $0.hasPrefix("privkey") }.sorted()
            XCTAssertGreaterThanOrEqual(keys.count, 2, "\(keys)")
            XCTAssertEqual(modes("archive/localhost/" + keys.last!), "\(ACME.hookGroup) 640", "certbot ran the hook on renewal too (\(keys))")
            XCTAssertEqual(modes("renewal/localhost.conf"), "\(ACME.hookGroup) 640", "certbot rewrites it on renewal; the hook opens it again")
            // A lineage issued before the hook (certbot's own modes) gets it by hand, as the README says.
            XCTAssertEqual(try Shell.bash("cd '\(acme.configDir)' && chgrp -R root live archive renewal && chmod 0700 live archive archive/localhost renewal").status, 0)
            XCTAssertEqual(modes("live"), "root 700")
            // doc-command: RENEWED_LINEAGE=/etc/letsencrypt/live/example.com /usr/share/edge-gateway/certbot-deploy-hook.sh
            let byHand = try Shell.run([repositoryRoot() + "/deploy/certbot/edge-gateway-deploy-hook.sh"],
                                       environment: ["RENEWED_LINEAGE": acme.configDir + "/live/localhost", "EDGE_GATEWAY_GROUP": ACME.hookGroup])
            XCTAssertEqual(byHand.status, 0, byHand.stderr)
            XCTAssertEqual(modes("live"), "\(ACME.hookGroup) 750")
            XCTAssertEqual(modes("archive/localhost"), "\(ACME.hookGroup) 750")
            XCTAssertEqual(modes("archive/localhost/" + keys.last!), "\(ACME.hookGroup) 640")
            XCTAssertEqual(modes("renewal"), "\(ACME.hookGroup) 750")
        }
        XCTAssertNotEqual(renewed, issued)
        XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: https, serverName: "localhost") == renewed }, "the renewed certificate is served")
        // Everything else on the plain listener goes to HTTPS; nothing reached the upstream from it.
        let redirect = try Shell.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "http://localhost:\(httpPort)/app?x=1"])
        XCTAssertEqual(redirect.stdout, "301 https://localhost/app?x=1")
        XCTAssertEqual(harness.upstream.requestCount, 1)
        await harness.shutdown()
    }
}
