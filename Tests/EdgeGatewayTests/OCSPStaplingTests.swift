import EdgeGateway
import EdgeTLS
import EdgeTestSupport
import Foundation
import XCTest

/// OCSP stapling against `openssl ocsp` as the responder, with a CA run by `openssl ca`:
/// its index is what the responder answers from, so revoking there is revoking for it.
final class OCSPStaplingTests: XCTestCase {
    /// A CA whose leaves name an OCSP responder on `responderPort` in their AIA.
    struct ResponderCA {
        let dir: String
        let responderPort = freePort()
        var config: String { self.dir + "/openssl.cnf" }
        var certificate: String { self.dir + "/ca.pem" }
        var key: String { self.dir + "/ca.key" }

        init(in parent: TemporaryDirectory, name: String = "ca") throws {
            self.dir = parent.file(name)
            try OpenSSLCA.create(in: self.dir, subject: "/CN=Test OCSP CA \(name)", firstSerial: "2000", settings: "copy_extensions = copy", sections: """
                [ leaf ]
                basicConstraints = CA:FALSE
                keyUsage = critical,digitalSignature
                extendedKeyUsage = serverAuth
                authorityInfoAccess = OCSP;URI:http://127.0.0.1:\(self.responderPort)
                [ must_staple ]
                basicConstraints = CA:FALSE
                keyUsage = critical,digitalSignature
                extendedKeyUsage = serverAuth
                authorityInfoAccess = OCSP;URI:http://127.0.0.1:\(self.responderPort)
                tlsfeature = status_request
                """, keyUsage: "keyCertSign,cRLSign,digitalSignature")
        }

        /// Issues a leaf for `host` into `directory` as `<name>.pem` (leaf, CA, key: one
        /// file of a `directory` source); returns the file.
        func issue(_ host: String, name: String, into directory: String, extensions: String = "leaf") throws -> String {
            let base = self.dir + "/" + name
            try Self.run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout '\(base).key' -out '\(base).csr' "
                         + "-subj '/CN=\(host)' -addext subjectAltName=DNS:\(host)")
            try Self.run("openssl ca -batch -config '\(self.config)' -extensions \(extensions) -in '\(base).csr' -out '\(base).crt' -notext")
            let file = directory + "/" + name + ".pem"
            try Self.run("cat '\(base).crt' '\(self.certificate)' '\(base).key' > '\(file).new' && mv '\(file).new' '\(file)'")
            return base + ".crt"
        }

        /// `openssl ocsp` answering from the CA's index, signing as `signer` (the CA by
        /// default), each response valid for `minutes`.
        func responder(in parent: TemporaryDirectory, signer: (certificate: String, key: String)? = nil, minutes: Int = 1) throws -> GatewayProcess {
            let (certificate, key) = signer ?? (self.certificate, self.key)
            // doc-command: openssl ocsp -index index.txt -port 8888 -rsigner ca.pem -rkey ca.key -CA ca.pem -nmin 60
            let responder = try GatewayProcess(commandLine: ["/usr/bin/openssl", "ocsp", "-index", self.dir + "/index.txt", "-port", "\(self.responderPort)",
                                                             "-rsigner", certificate, "-rkey", key, "-CA", self.certificate, "-nmin", "\(minutes)"],
                                               logPath: parent.file("responder-\(UUID().uuidString.prefix(8)).log"))
            // Not probed by connecting: a connection closed without a request stalls
            // `openssl ocsp`, which serves one connection at a time.
            XCTAssertTrue(eventually(timeout: 10) { responder.log.contains("waiting for OCSP client connections") }, responder.log)
            return responder
        }

        func revoke(_ certificate: String) throws {
            try Self.run("openssl ca -config '\(self.config)' -revoke '\(certificate)' -crl_reason keyCompromise")
        }

        @discardableResult
        static func run(_ command: String) throws -> String { try OpenSSLCA.run(command) }
    }

    /// A gateway serving the `directory` source at `certs`, stapling with `ocsp` settings.
    func startGateway(_ dir: TemporaryDirectory, certs: String, name: String, ocsp: String = "{}") throws -> (GatewayProcess, https: Int, admin: Int) {
        let (https, admin) = (freePort(), freePort())
        try writeConfig(dir, certs: certs, name: name, https: https, admin: admin, ocsp: ocsp)
        let gateway = try GatewayProcess(config: dir.file("\(name).yaml"), logPath: dir.file("\(name).log"))
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        return (gateway, https, admin)
    }

    /// `<name>.yaml`: what `startGateway` runs, and what a reload reads again.
    func writeConfig(_ dir: TemporaryDirectory, certs: String, name: String, https: Int, admin: Int, ocsp: String, listener: String = "") throws {
        try dir.write("\(name).yaml", """
            listeners:
              - name: https
                address: "127.0.0.1:\(https)"
                tls: {}
            \(listener)
            certificates:
              sources: [ { directory: \(certs) } ]
              default: other
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            ocsp: \(ocsp)
            """)
    }

    /// What `openssl s_client -status` says of the staple for `host`: the response status
    /// and certificate status lines, or "none" when no response was stapled.
    func staple(_ port: Int, host: String, caFile: String) throws -> String {
        // doc-command: openssl s_client -connect 127.0.0.1:8443 -servername a.example.com -status
        let out = try Shell.bash("timeout 20 openssl s_client -connect 127.0.0.1:\(port) -servername \(host) -status -CAfile '\(caFile)' < /dev/null 2>&1").stdout
        if out.contains("OCSP response: no response sent") { return "none" }
        guard out.contains("OCSP Response Status: successful") else { return "unexpected: " + out.prefix(800) }
        return out.split(separator: "\n").first { $0.contains("Cert Status:") }.map { $0.trimmingCharacters(in: .whitespaces) } ?? "no status line"
    }

    /// The `certs --check-served` row of lineage `name` (what the listener stapled for it)
    /// and the command's exit code.
    func served(_ config: String, _ name: String) throws -> (row: String, exit: Int32) {
        let result = try Shell.run([gatewayBinary(), "certs", "-c", config, "--check-served"])
        let row = result.stdout.split(separator: "\n").first { $0.hasPrefix(name + " ") && $0.contains(" https ") }.map(String.init) ?? result.stdout
        return (row, result.status)
    }

    /// The `ocsp` object of lineage `name` on `/status/certificates` (nil: none).
    func ocspStatus(_ admin: Int, _ name: String) throws -> [String: Any]? {
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status/certificates"]).stdout
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any], status)
        let lineage = try XCTUnwrap((json["certificates"] as? [[String: Any]])?.first { $0["name"] as? String == name }, status)
        return lineage["ocsp"] as? [String: Any]
    }

    /// The whole path: the response is fetched, verified and stapled; refreshed half-way
    /// through its validity; kept while another lineage rotates and the responder is down;
    /// read back from `ocsp.cache_dir` by a restart that cannot reach the responder. A
    /// certificate without a responder is never mentioned.
    func testAResponseIsStapledRefreshedKeptAcrossARotationAndReadFromTheCache() throws {
        let dir = TemporaryDirectory()
        let ca = try ResponderCA(in: dir)
        let certs = dir.file("certs")
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        _ = try ca.issue("staple.test", name: "staple", into: certs, extensions: "must_staple")
        let pki = try TestPKI()
        let other = try pki.issue(["other.test"], into: dir.path, name: "other")
        try ResponderCA.run("cat '\(other.fullchain)' '\(other.key)' > '\(certs)/other.pem'")
        let responder = try ca.responder(in: dir)
        defer { responder.stop() }
        let cache = dir.file("ocsp-cache")
        var (gateway, port, admin) = try startGateway(dir, certs: certs, name: "first", ocsp: "{ cache_dir: \(cache) }")
        defer { gateway.stop() }

        XCTAssertTrue(eventually(timeout: 15) { (try? self.staple(port, host: "staple.test", caFile: ca.certificate)) == "Cert Status: good" },
                      "\((try? self.staple(port, host: "staple.test", caFile: ca.certificate)) ?? "")\n\(gateway.log)")
        let first = try XCTUnwrap(try ocspStatus(admin, "staple"), gateway.log)
        XCTAssertEqual(first["state"] as? String, "stapled")
        XCTAssertEqual(first["level"] as? String, "ok")
        XCTAssertEqual(first["source"] as? String, "responder")
        XCTAssertEqual(first["must_staple"] as? Bool, true)
        XCTAssertEqual(first["certificate_status"] as? String, "good")
        let firstUpdate = try XCTUnwrap(first["this_update"] as? Int)
        let nextUpdate = try XCTUnwrap(first["next_update"] as? Int)
        XCTAssertEqual(nextUpdate - firstUpdate, 60, "openssl ocsp -nmin 1")
        XCTAssertEqual(scrapedMetric("edge_certificate_ocsp_stapled", admin: admin), 1)
        XCTAssertEqual(scrapedMetric("edge_certificate_ocsp_problem", admin: admin), 0)
        // `certs --check-served` sees the staple in its own handshake, and checks it.
        let good = try served(dir.file("first.yaml"), "staple")
        XCTAssertTrue(good.row.contains("good until"), good.row)
        XCTAssertEqual(good.exit, 0, good.row)
        // A certificate whose AIA names no responder: no staple, no state, no word in the log.
        XCTAssertEqual(try staple(port, host: "other.test", caFile: pki.caPath), "none")
        XCTAssertNil(try ocspStatus(admin, "other"))
        let aboutOther = gateway.log.split(separator: "\n").filter { $0.lowercased().contains("ocsp") && ($0.contains("lineage=other") || $0.contains("other.test")) }
        XCTAssertEqual(aboutOther, [], "nothing about OCSP names the certificate without a responder")

        // Refreshed half-way through its validity: a newer response, 30 s after the first.
        XCTAssertTrue(eventually(timeout: 50, interval: 1) { ((try? self.ocspStatus(admin, "staple"))?["this_update"] as? Int ?? 0) > firstUpdate },
                      gateway.log)
        let refreshed = try XCTUnwrap(try ocspStatus(admin, "staple"))
        XCTAssertGreaterThanOrEqual((refreshed["fetched_at"] as? Int ?? 0) - firstUpdate, 29, "refreshed at half its 60 s validity, not sooner")

        // The responder goes away; another lineage rotates: the staple stays.
        responder.stop()
        let generation = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status"]).stdout
        let renewed = try pki.issue(["other.test"], into: dir.path, name: "other-renewed")
        try ResponderCA.run("cat '\(renewed.fullchain)' '\(renewed.key)' > '\(certs)/other.pem.new' && mv '\(certs)/other.pem.new' '\(certs)/other.pem'")
        XCTAssertTrue(eventually(timeout: 10) { servedSerial(port: port, serverName: "other.test") == renewed.serial }, gateway.log)
        XCTAssertNotEqual(try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status"]).stdout, generation)
        XCTAssertEqual(try staple(port, host: "staple.test", caFile: ca.certificate), "Cert Status: good", gateway.log)

        // A restart with the responder still down staples the cached response at once.
        XCTAssertEqual(gateway.stop(), 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cache).filter { $0.hasSuffix(".ocsp") }.count, 1)
        (gateway, port, admin) = try startGateway(dir, certs: certs, name: "second", ocsp: "{ cache_dir: \(cache) }")
        XCTAssertTrue(eventually(timeout: 10) { (try? self.ocspStatus(admin, "staple"))?["source"] as? String == "cache" }, gateway.log)
        XCTAssertEqual(try staple(port, host: "staple.test", caFile: ca.certificate), "Cert Status: good", gateway.log)
        // Nothing was fetched by this process (`OCSPStapleStateTests` has when it refreshes).
        let cached = try XCTUnwrap(try ocspStatus(admin, "staple"))
        XCTAssertTrue(cached["fetched_at"] is NSNull, "\(cached)")
        // The responder stays down: the cached response is stapled until its next update,
        // then nothing is, and the must-staple certificate is critical.
        let expires = try XCTUnwrap(cached["next_update"] as? Int)
        XCTAssertTrue(eventually(timeout: 75, interval: 0.5) { (try? self.staple(port, host: "staple.test", caFile: ca.certificate)) == "none" }, gateway.log)
        XCTAssertGreaterThanOrEqual(Int(Date().timeIntervalSince1970), expires, "stapled until it expired, not less")
        XCTAssertTrue(eventually(timeout: 5) { (try? self.ocspStatus(admin, "staple"))?["level"] as? String == "critical" }, gateway.log)
    }

    /// A configuration reload keeps what the stapler knows: the staple stays and is not
    /// fetched again. A reload that fails to start leaves the running stapler at work (a
    /// renewal is still stapled). A reload that turns stapling off ends the staple at once
    /// (no refresh would see a revocation); one that turns it back on fetches again.
    func testAReloadKeepsTheStapleAndTurningStaplingOffEndsIt() throws {
        let dir = TemporaryDirectory()
        let ca = try ResponderCA(in: dir)
        let certs = dir.file("certs")
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        _ = try ca.issue("staple.test", name: "staple", into: certs)
        let other = try TestPKI().issue(["other.test"], into: dir.path, name: "other")
        try ResponderCA.run("cat '\(other.fullchain)' '\(other.key)' > '\(certs)/other.pem'")
        var responder = try ca.responder(in: dir, minutes: 10)
        defer { responder.stop() }
        let cache = dir.file("ocsp-cache")
        let (gateway, port, admin) = try startGateway(dir, certs: certs, name: "reload", ocsp: "{ cache_dir: \(cache) }")
        defer { gateway.stop() }
        let stapled = { (try? self.staple(port, host: "staple.test", caFile: ca.certificate)) ?? "" }
        XCTAssertTrue(eventually(timeout: 15) { stapled() == "Cert Status: good" }, "\(stapled())\n\(gateway.log)")
        let fetched = try XCTUnwrap(try ocspStatus(admin, "staple")?["fetched_at"] as? Int)
        var reloads = 0
        func reload(_ ocsp: String) throws {
            try writeConfig(dir, certs: certs, name: "reload", https: port, admin: admin, ocsp: ocsp)
            kill(gateway.pid, SIGHUP)
            reloads += 1
            XCTAssertTrue(eventually(timeout: 10) { gateway.log.components(separatedBy: "configuration reloaded").count - 1 >= reloads }, gateway.log)
        }

        // Another responder timeout: the new configuration's stapler takes the staple over.
        try reload("{ responder_timeout: 5s, cache_dir: \(cache) }")
        XCTAssertEqual(stapled(), "Cert Status: good", gateway.log)
        let kept = try XCTUnwrap(try ocspStatus(admin, "staple"))
        XCTAssertEqual(kept["fetched_at"] as? Int, fetched, "not fetched again: \(kept)")
        XCTAssertEqual(kept["state"] as? String, "stapled")

        // A reload that cannot start (a new listener on the responder's port): the running
        // configuration stays, and so does its stapling. A renewal after it is stapled.
        try writeConfig(dir, certs: certs, name: "reload", https: port, admin: admin, ocsp: "{ cache_dir: \(cache) }",
                        listener: "  - { name: taken, address: \"127.0.0.1:\(ca.responderPort)\" }")
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { gateway.log.contains("new configuration could not start") }, gateway.log)
        let staging = dir.file("staging")
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        let renewed = try ca.issue("staple.test", name: "staple", into: staging)
        // `openssl ocsp` reads its index again only after it answered a request: one from
        // here, before the gateway sees the renewal, so that it knows the new serial.
        try ResponderCA.run("openssl ocsp -issuer '\(ca.certificate)' -cert '\(renewed)' -url http://127.0.0.1:\(ca.responderPort) -noverify")
        try ResponderCA.run("mv '\(staging)/staple.pem' '\(certs)/staple.pem'")
        let renewedSerial = try ResponderCA.run("openssl x509 -in '\(renewed)' -noout -serial").split(separator: "=").last!
            .trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(eventually(timeout: 10) { servedSerial(port: port, serverName: "staple.test") == renewedSerial }, gateway.log)
        XCTAssertTrue(eventually(timeout: 15) { stapled() == "Cert Status: good" }, "the renewal is stapled: \(stapled())\n\(gateway.log)")
        let renewalFetched = try XCTUnwrap(try ocspStatus(admin, "staple")?["fetched_at"] as? Int)
        XCTAssertGreaterThan(renewalFetched, fetched, "asked for the renewal's response")

        // Off: nothing is stapled from the reload on, and the status says why.
        try reload("{ stapling: false, cache_dir: \(cache) }")
        XCTAssertEqual(stapled(), "none", gateway.log)
        let off = try XCTUnwrap(try ocspStatus(admin, "staple"))
        XCTAssertEqual(off["state"] as? String, "off", "\(off)")
        XCTAssertTrue(off["next_fetch_at"] is NSNull, "\(off)")
        XCTAssertEqual(scrapedMetric("edge_certificate_ocsp_stapled", admin: admin), 0)
        // `certs --check-served` grades it as the status does: no staple is as configured.
        let offCheck = try served(dir.file("reload.yaml"), "staple")
        XCTAssertTrue(offCheck.row.contains(" none "), offCheck.row)
        XCTAssertEqual(offCheck.exit, 0, offCheck.row)

        // On again: the cached response is stapled meanwhile, but asked for afresh at once
        // (a revocation may have come while stapling was off).
        responder.stop()
        responder = try ca.responder(in: dir, minutes: 10)
        try reload("{ cache_dir: \(cache) }")
        XCTAssertTrue(eventually(timeout: 15) {
            let again = try? self.ocspStatus(admin, "staple")
            return again?["source"] as? String == "responder" && again?["fetched_at"] as? Int ?? 0 > renewalFetched
        }, "\((try? ocspStatus(admin, "staple")) ?? [:])\n\(gateway.log)")
        XCTAssertEqual(stapled(), "Cert Status: good", gateway.log)
        XCTAssertTrue(gateway.process.isRunning)
    }

    /// Never staple what does not verify: a response signed by another CA is refused, and a
    /// must-staple certificate without a response is critical; a revocation the responder
    /// reports is stapled as it is (the client learns why it refuses) and is critical.
    func testAForgedResponseIsRefusedAndARevocationIsStapledAndCritical() throws {
        let dir = TemporaryDirectory()
        let ca = try ResponderCA(in: dir)
        let forger = try ResponderCA(in: dir, name: "forger")
        let certs = dir.file("certs")
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        let leaf = try ca.issue("staple.test", name: "staple", into: certs, extensions: "must_staple")
        _ = try ca.issue("other.test", name: "other", into: certs)
        let leafFingerprint = try ResponderCA.run("openssl x509 -in '\(leaf)' -noout -fingerprint -sha256").split(separator: "=").last!
            .replacingOccurrences(of: ":", with: "").lowercased().trimmingCharacters(in: .whitespacesAndNewlines)
        // The forger answers for the CA's index, but signs with its own key.
        var responder = try ca.responder(in: dir, signer: (forger.certificate, forger.key))
        defer { responder.stop() }
        let (gateway, port, admin) = try startGateway(dir, certs: certs, name: "forged", ocsp: "{ cache_dir: \(dir.file("ocsp-cache")) }")
        defer { gateway.stop() }
        XCTAssertTrue(eventually(timeout: 15) { (try? self.ocspStatus(admin, "staple"))?["level"] as? String == "critical" }, gateway.log)
        let forged = try XCTUnwrap(try ocspStatus(admin, "staple"))
        XCTAssertEqual(forged["state"] as? String, "unavailable")
        XCTAssertTrue((forged["last_error"] as? String ?? "").contains("not signed by the issuer"), "\(forged)")
        XCTAssertTrue((forged["reason"] as? String ?? "").contains("must-staple"), "\(forged)")
        XCTAssertEqual(try staple(port, host: "staple.test", caFile: ca.certificate), "none")
        // A must-staple certificate served without a staple fails the check as a revoked one does.
        let none = try served(dir.file("forged.yaml"), "staple")
        XCTAssertTrue(none.row.contains(" none "), none.row)
        XCTAssertEqual(none.exit, 2, none.row)
        let json = try Shell.run([gatewayBinary(), "certs", "--json", "-c", dir.file("forged.yaml"), "--check-served"]).stdout
        XCTAssertTrue(json.contains("\"ocsp_staple\":\"none\",\"ocsp_staple_problem\":2"), json)
        XCTAssertTrue(eventually(timeout: 10) { metricSum("edge_certificate_ocsp_problem", admin: admin) == 3 }, "staple critical (2), other a warning (1)")
        XCTAssertTrue(gateway.log.contains("OCSP stapling critical: clients will refuse the certificate"), gateway.log)
        let page = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/"]).stdout
        XCTAssertTrue(page.contains("<div class=\"note bad\">OCSP CRITICAL: "), page)
        XCTAssertTrue(page.contains("<div class=\"note warn\">OCSP warning: "), "the other certificate, not must-staple: \(page)")
        let summary = try Shell.run([gatewayBinary(), "status", "--admin", "127.0.0.1:\(admin)"]).stdout
        XCTAssertTrue(summary.contains("  OCSP     staple: CRITICAL: "), summary)
        XCTAssertTrue(summary.contains("  OCSP     other: warning: "), summary)

        // The real responder: stapled within the retry backoff, and the log says it recovered.
        responder.stop()
        responder = try ca.responder(in: dir)
        // Within the back-off the status names (5 s doubling, 5 minutes at most).
        let retryIn = ((try ocspStatus(admin, "staple"))?["next_fetch_at"] as? Int ?? 0) - Int(Date().timeIntervalSince1970)
        XCTAssertTrue(eventually(timeout: TimeInterval(max(0, retryIn) + 20), interval: 0.5) { (try? self.staple(port, host: "staple.test", caFile: ca.certificate)) == "Cert Status: good" }, gateway.log)
        let cached = dir.file("ocsp-cache")
        XCTAssertTrue(eventually(timeout: 5) { ((try? FileManager.default.contentsOfDirectory(atPath: cached)) ?? []).count == 2 }, "both good responses cached")
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("OCSP stapling recovered") }, gateway.log)

        // Revoked at the CA: the next refresh (30 s) finds it, staples it, and it is critical.
        try ca.revoke(leaf)
        // `openssl ocsp` reads its index again only after it answered a request: one from
        // here, so that the gateway's next refresh gets the revocation.
        try ResponderCA.run("openssl ocsp -issuer '\(ca.certificate)' -cert '\(leaf)' -url http://127.0.0.1:\(ca.responderPort) -noverify")
        XCTAssertTrue(eventually(timeout: 50, interval: 1) { (try? self.ocspStatus(admin, "staple"))?["state"] as? String == "revoked" }, gateway.log)
        let revoked = try XCTUnwrap(try ocspStatus(admin, "staple"))
        XCTAssertEqual(revoked["level"] as? String, "critical")
        XCTAssertEqual(revoked["certificate_status"] as? String, "revoked")
        XCTAssertEqual(try staple(port, host: "staple.test", caFile: ca.certificate), "Cert Status: revoked")
        let revokedRow = try served(dir.file("forged.yaml"), "staple")
        XCTAssertTrue(revokedRow.row.contains("revoked until"), revokedRow.row)
        XCTAssertEqual(revokedRow.exit, 2, revokedRow.row)
        XCTAssertEqual(metricSum("edge_certificate_ocsp_next_update_timestamp_seconds", admin: admin, labelled: "name=\"staple\"").map(Int.init),
                       revoked["next_update"] as? Int)
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("certificate_status=revoked") }, gateway.log)
        XCTAssertEqual(scrapedMetric("edge_certificate_ocsp_problem", admin: admin), 2, "staple critical, other ok")
        XCTAssertEqual(try staple(port, host: "other.test", caFile: ca.certificate), "Cert Status: good", "the other lineage is still stapled good")
        // The cache holds the revoked response in place of the good one: a restart never
        // staples the good one again.
        let file = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: cached).first { $0.hasPrefix(leafFingerprint) }, "no cache file")
        let text = try ResponderCA.run("openssl ocsp -respin '\(cached)/\(file)' -resp_text -noverify")
        XCTAssertTrue(text.contains("Cert Status: revoked"), text)
    }
}
