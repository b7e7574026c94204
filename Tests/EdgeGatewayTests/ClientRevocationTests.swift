import EdgeGateway
import EdgeTestSupport
import Foundation
import XCTest

/// CRLs for client certificates (`client_auth.crl_file`) and upstream certificates
/// (`upstreams.<name>.tls.crl_file`), with a CA run by `openssl ca`: certificates issued
/// and revoked with it, lists made with `openssl ca -gencrl`.
final class ClientRevocationTests: XCTestCase {
    /// A client CA as `openssl ca` keeps one: index, serial, CRL number.
    struct ClientCA {
        let dir: String
        var config: String { self.dir + "/openssl.cnf" }
        var certificate: String { self.dir + "/ca.pem" }

        /// A root CA, or with `issuer`, an intermediate CA that `issuer` signs.
        init(in parent: TemporaryDirectory, name: String = "ca", subject: String = "/CN=Test Client CA", issuer: ClientCA? = nil) throws {
            self.dir = parent.file(name)
            try OpenSSLCA.create(in: self.dir, subject: subject, firstSerial: issuer == nil ? "1000" : "3000", sections: """
                [ intermediate ]
                basicConstraints = critical,CA:TRUE
                keyUsage = critical,keyCertSign,cRLSign
                [ client ]
                basicConstraints = CA:FALSE
                keyUsage = digitalSignature
                extendedKeyUsage = clientAuth
                [ server ]
                basicConstraints = CA:FALSE
                keyUsage = digitalSignature
                extendedKeyUsage = serverAuth
                subjectAltName = DNS:app.internal
                """)
            if let issuer {
                try Self.run("openssl req -new -key '\(self.dir)/ca.key' -subj '\(subject)' -out '\(self.dir)/ca.csr'")
                try Self.run("openssl ca -batch -config '\(issuer.config)' -extensions intermediate -in '\(self.dir)/ca.csr' -out '\(self.dir)/ca.pem' -notext")
            }
        }

        /// Issues a client certificate; returns its certificate and key files and its serial.
        func issue(_ name: String, extensions: String = "client") throws -> (certificate: String, key: String, serial: String) {
            let base = self.dir + "/" + name
            try Self.run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout '\(base).key' -out '\(base).csr' -subj '/CN=\(name)'")
            // doc-command: openssl ca -config openssl.cnf -extensions client -in alice.csr -out alice.pem
            try Self.run("openssl ca -batch -config '\(self.config)' -extensions \(extensions) -in '\(base).csr' -out '\(base).pem' -notext")
            let serial = try Self.run("openssl x509 -in '\(base).pem' -noout -serial").replacingOccurrences(of: "serial=", with: "")
            return (base + ".pem", base + ".key", serial.trimmingCharacters(in: .whitespacesAndNewlines))
        }

        func revoke(_ certificate: String) throws {
            // doc-command: openssl ca -config openssl.cnf -revoke alice.pem
            try Self.run("openssl ca -config '\(self.config)' -revoke '\(certificate)'")
        }

        /// Writes the CRL to `path` in one rename (as an operator's job would), due again in
        /// a week; `stale`: one whose next update was yesterday.
        func publishCRL(to path: String, stale: Bool = false, nextUpdateIn seconds: Int? = nil) throws {
            var dates = stale ? " -crl_lastupdate \(Self.utc(-2 * 86_400)) -crl_nextupdate \(Self.utc(-86_400))" : ""
            if let seconds { dates = " -crl_nextupdate \(Self.utc(seconds))" }
            // doc-command: openssl ca -config openssl.cnf -gencrl -out crl.pem
            try Self.run("openssl ca -config '\(self.config)' -gencrl -out '\(path).new'" + dates)
            try Self.run("mv '\(path).new' '\(path)'")
        }

        /// A time `offset` seconds from now as openssl ca takes it (YYYYMMDDHHMMSSZ).
        static func utc(_ offset: Int) -> String {
            let formatter = DateFormatter()
            formatter.timeZone = TimeZone(identifier: "UTC")
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.dateFormat = "yyyyMMddHHmmss'Z'"
            return formatter.string(from: Date().addingTimeInterval(TimeInterval(offset)))
        }

        @discardableResult
        static func run(_ command: String) throws -> String { try OpenSSLCA.run(command) }
    }

    /// A gateway process whose HTTPS listener requires client certificates from `ca`,
    /// checked against `crl`; returns it with its HTTPS and admin ports.
    func startGateway(_ dir: TemporaryDirectory, name: String, ca: ClientCA, crl: String, options: String = "") throws -> (GatewayProcess, https: Int, admin: Int) {
        let site = try TestPKI().issue(["localhost"], into: dir.path, name: "site-\(name)")
        let (https, admin) = (freePort(), freePort())
        try dir.write("\(name).yaml", """
            listeners:
              - name: https
                address: "127.0.0.1:\(https)"
                tls:
                  certificate: \(site.fullchain)
                  key: \(site.key)
                  client_auth: { ca_file: \(ca.certificate), crl_file: \(crl)\(options) }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        let gateway = try GatewayProcess(config: dir.file("\(name).yaml"), logPath: dir.file("\(name).log"))
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        return (gateway, https, admin)
    }

    /// Whether the gateway admitted the client: any HTTP answer (the upstream is down: 502)
    /// means the handshake and the client's certificate passed.
    func admitted(_ port: Int, _ client: (certificate: String, key: String, serial: String)) -> Bool {
        let result = try? Shell.run(["curl", "-sk", "--max-time", "5", "--cert", client.certificate, "--key", client.key,
                                     "-o", "/dev/null", "-w", "%{http_code}", "https://127.0.0.1:\(port)/"])
        return (result?.stdout ?? "000") != "000"
    }

    /// A TLS session with the client certificate, saved to or resumed from `file`.
    /// `version` may add `-no_ticket`: a TLS 1.2 session resumed by its ID from the server's cache.
    func session(_ port: Int, _ version: String, _ client: (certificate: String, key: String, serial: String), out: String? = nil, in input: String? = nil) throws -> String {
        try sClient(port: port, "-servername localhost \(version) -cert '\(client.certificate)' -key '\(client.key)'", sessionOut: out, sessionIn: input)
    }

    typealias Client = (certificate: String, key: String, serial: String)

    /// A CA with clients alice and bob, bob revoked in the list at `crl`.
    func twoClientsOneRevoked() throws -> (TemporaryDirectory, ClientCA, alice: Client, bob: Client, crl: String) {
        let dir = TemporaryDirectory()
        let ca = try ClientCA(in: dir)
        let alice = try ca.issue("alice"), bob = try ca.issue("bob")
        let crl = dir.file("crl.pem")
        try ca.revoke(bob.certificate)
        try ca.publishCRL(to: crl)
        return (dir, ca, alice, bob, crl)
    }

    func testARevokedClientIsRefusedCannotResumeAndANewListNeedsNoRestart() throws {
        let (dir, ca, alice, bob, crl) = try twoClientsOneRevoked()
        let (gateway, port, admin) = try startGateway(dir, name: "leaf", ca: ca, crl: crl)
        defer { _ = gateway.stop() }
        XCTAssertTrue(admitted(port, alice), gateway.log)
        XCTAssertFalse(admitted(port, bob), "bob is revoked")
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("client certificate refused: revoked (serial \(bob.serial), client_auth.crl_file) (subject CN=bob") },
                      gateway.log)
        // Sessions alice makes now, by ticket (TLS 1.3) and by session ID (TLS 1.2), resume...
        let versions = ["-tls1_3", "-tls1_2", "-tls1_2 -no_ticket"]
        for version in versions {
            let file = dir.file("alice\(version.replacingOccurrences(of: " ", with: ""))")
            XCTAssertTrue(try session(port, version, alice, out: file).contains("New,"))
            XCTAssertTrue(try session(port, version, alice, in: file).contains("Reused,"), "\(version) resumes before the revocation")
        }
        // ...until alice is revoked: the new list is in use within the watch's second, with
        // no reload, and none of her sessions resumes (the CRL's hash is in the session-ID context).
        try ca.revoke(alice.certificate)
        try ca.publishCRL(to: crl)
        XCTAssertTrue(eventually(timeout: 5) { !self.admitted(port, alice) }, gateway.log)
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("client certificate refused: revoked (serial \(alice.serial)") }, gateway.log)
        for version in versions {
            let again = try session(port, version, alice, in: dir.file("alice\(version.replacingOccurrences(of: " ", with: ""))"))
            XCTAssertFalse(again.contains("Reused,"), "\(version): a session made before the revocation does not resume:\n\(again.prefix(600))")
        }
        // The status view lists the file: its issuer, one update, two revocations.
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status/certificates"]).stdout
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
        let file = try XCTUnwrap((json["revocation_lists"] as? [[String: Any]])?.first, status)
        XCTAssertEqual(file["file"] as? String, crl)
        XCTAssertEqual(file["state"] as? String, "ok")
        let list = try XCTUnwrap((file["lists"] as? [[String: Any]])?.first)
        XCTAssertEqual(list["issuer"] as? String, "CN=Test Client CA")
        XCTAssertEqual(list["revoked"] as? Int, 2)
        // A broken list is refused: the last good one stays in use and the error is logged.
        try "not a CRL\n".write(toFile: crl + ".new", atomically: true, encoding: .utf8)
        try ClientCA.run("mv '\(crl).new' '\(crl)'")
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("no X509 CRL block found") }, gateway.log)
        XCTAssertFalse(admitted(port, alice))
        XCTAssertFalse(admitted(port, bob))
    }

    /// A CRL file caught broken (a job mid-write, a bad export) must not hold back a
    /// renewal: the renewed certificate is published with the lists in use, which keep
    /// refusing bob.
    func testARenewalIsPublishedWhileTheListIsBroken() throws {
        let (dir, ca, alice, bob, crl) = try twoClientsOneRevoked()
        let (gateway, port, _) = try startGateway(dir, name: "renew", ca: ca, crl: crl)
        defer { _ = gateway.stop() }
        try "not a CRL\n".write(toFile: crl + ".new", atomically: true, encoding: .utf8)
        try ClientCA.run("mv '\(crl).new' '\(crl)'")
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("no X509 CRL block found") }, gateway.log)
        let renewed = try TestPKI().issue(["localhost"], into: dir.path, name: "site-renew")
        XCTAssertTrue(eventually(timeout: 10) { servedSerial(port: port, serverName: "localhost") == renewed.serial }, gateway.log)
        XCTAssertTrue(gateway.log.contains("client CA bundle or CRL file not loaded; certificates published with the ones in use"), gateway.log)
        XCTAssertTrue(admitted(port, alice), gateway.log)
        XCTAssertFalse(admitted(port, bob), "bob is still refused by the list in use")
    }

    /// A list past its next update is stale: a warning on the status views and in the
    /// metrics; clients are still checked against it, and with `crl_strict` refused (a
    /// session made while it was fresh does not resume either).
    func testAStaleListIsShownAndRefusesOnlyWhenStrict() throws {
        let (dir, ca, alice, bob, crl) = try twoClientsOneRevoked()
        let (lenient, lenientPort, admin) = try startGateway(dir, name: "lenient", ca: ca, crl: crl, options: ", crl_check: chain")
        defer { _ = lenient.stop() }
        let (strict, strictPort, strictAdmin) = try startGateway(dir, name: "strict", ca: ca, crl: crl, options: ", crl_strict: true")
        defer { _ = strict.stop() }
        XCTAssertTrue(admitted(strictPort, alice), strict.log)
        XCTAssertEqual(metricSum("edge_crl_stale", admin: admin), 0)
        let ticket = dir.file("alice-strict")
        XCTAssertTrue(try session(strictPort, "-tls1_3", alice, out: ticket).contains("New,"))
        // The CA's job failed to run: the list on disk is one whose next update has passed.
        try ca.publishCRL(to: crl, stale: true)
        XCTAssertTrue(eventually(timeout: 10, interval: 0.2) { metricSum("edge_crl_stale", admin: admin) == 1 }, lenient.log)
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status/certificates"]).stdout
        XCTAssertTrue(status.contains("\"used_by\":\"client_auth\",\"crl_check\":\"chain\",\"crl_strict\":false,\"state\":\"stale\""), status)
        let page = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/"]).stdout
        XCTAssertTrue(page.contains("STALE: past its next update"), page)
        XCTAssertTrue(admitted(lenientPort, alice), "a stale list still admits who it does not revoke: " + lenient.log)
        XCTAssertFalse(admitted(lenientPort, bob), "and still refuses who it revokes")
        // The waits below bound a one-second job's work; 15 s leaves room for a slow machine.
        XCTAssertTrue(eventually(timeout: 15) { !self.admitted(strictPort, alice) }, "crl_strict refuses everyone while the list is stale: " + strict.log)
        XCTAssertTrue(eventually(timeout: 15) { strict.log.contains("CRL has expired") }, strict.log)
        XCTAssertFalse(try session(strictPort, "-tls1_3", alice, in: ticket).contains("Reused,"), "nor does a session made while it was fresh resume")
        // A fresh list ends it, without a restart.
        try ca.publishCRL(to: crl)
        XCTAssertTrue(eventually(timeout: 15) { self.admitted(strictPort, alice) }, strict.log)
        XCTAssertTrue(eventually(timeout: 15) { metricSum("edge_crl_stale", admin: admin) == 0 })
        // A list that goes stale with time alone (20 s from now), no file changing: the
        // sessions made while it was fresh stop resuming too (the contexts are built again
        // when it goes stale).
        let wentStale = { strict.log.components(separatedBy: "a CRL went past its next update").count }
        let staleBefore = wentStale()
        try ca.publishCRL(to: crl, nextUpdateIn: 20)
        // Published with the contexts that check against it: a count of "contexts rebuilt"
        // lines could be met by the line of the rebuild before, written a moment late.
        let published = Date().timeIntervalSince1970
        XCTAssertTrue(eventually(timeout: 15) { (metricSum("edge_crl_next_update_timestamp_seconds", admin: strictAdmin) ?? .infinity) < published + 60 },
                      strict.log)
        let late = dir.file("alice-late")
        XCTAssertTrue(try session(strictPort, "-tls1_3", alice, out: late).contains("New,"), "made while the list is fresh")
        XCTAssertTrue(try session(strictPort, "-tls1_3", alice, in: late).contains("Reused,"), "and resumes while it is")
        XCTAssertTrue(eventually(timeout: 40, interval: 0.5) { !self.admitted(strictPort, alice) }, strict.log)
        XCTAssertTrue(eventually(timeout: 15) { wentStale() > staleBefore }, strict.log)
        XCTAssertFalse(try session(strictPort, "-tls1_3", alice, in: late).contains("Reused,"), "not once the list is stale")
    }

    /// Two listeners of one certificate set check clients against the same list, one
    /// leniently, one with `crl_strict`: when the list goes stale only the strict one
    /// refuses, and the lenient one still refuses what the list revokes.
    func testAStrictAndALenientListenerShareOneList() throws {
        let (dir, ca, alice, bob, crl) = try twoClientsOneRevoked()
        let certs = dir.file("certs")
        _ = try TestPKI().issue(["localhost"], into: certs, name: "site")
        let (lenient, strict, admin) = (freePort(), freePort(), freePort())
        try dir.write("shared.yaml", """
            listeners:
              - { name: lenient, address: "127.0.0.1:\(lenient)", tls: { client_auth: { ca_file: \(ca.certificate), crl_file: \(crl) } } }
              - { name: strict, address: "127.0.0.1:\(strict)", tls: { client_auth: { ca_file: \(ca.certificate), crl_file: \(crl), crl_strict: true } } }
            certificates: { sources: [ { directory: \(certs) } ] }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        let gateway = try GatewayProcess(config: dir.file("shared.yaml"), logPath: dir.file("shared.log"))
        defer { _ = gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        for port in [lenient, strict] {
            XCTAssertTrue(admitted(port, alice), gateway.log)
            XCTAssertFalse(admitted(port, bob))
        }
        try ca.publishCRL(to: crl, stale: true)
        XCTAssertTrue(eventually(timeout: 15) { !self.admitted(strict, alice) }, "the strict listener refuses while the list is stale: " + gateway.log)
        XCTAssertTrue(admitted(lenient, alice), "the lenient one does not: " + gateway.log)
        XCTAssertFalse(admitted(lenient, bob), "and still refuses who the list revokes")
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status/certificates"]).stdout
        XCTAssertTrue(status.contains("\"crl_strict\":true,\"state\":\"stale\""), "one file, strict for one of its listeners: \(status)")
        let summary = try Shell.run([gatewayBinary(), "status", "--admin", "127.0.0.1:\(admin)"]).stdout
        XCTAssertTrue(summary.contains("  STALE    \(crl) (client_auth): past its next update, refusing (crl_strict)"), summary)
        try ca.publishCRL(to: crl)
        XCTAssertTrue(eventually(timeout: 15) { self.admitted(strict, alice) }, gateway.log)
        XCTAssertTrue(admitted(lenient, alice))
        XCTAssertFalse(admitted(strict, bob))
    }

    /// `crl_check: chain` checks every certificate of the client's chain: an intermediate
    /// CA revoked by the root's list refuses the clients it issued, which a leaf-only check
    /// (the default, on the other listener) still admits. The file holds both CAs' lists.
    func testChainCheckingRefusesTheClientsOfARevokedIntermediate() throws {
        let dir = TemporaryDirectory()
        let root = try ClientCA(in: dir, name: "root", subject: "/CN=Test Root CA")
        let intermediate = try ClientCA(in: dir, name: "intermediate", subject: "/CN=Test Intermediate CA", issuer: root)
        let carol = try intermediate.issue("carol")
        let bundle = dir.file("clients-ca.pem"), crl = dir.file("crl.pem")
        try ClientCA.run("cat '\(root.certificate)' '\(intermediate.certificate)' > '\(bundle)'")
        func publishBoth() throws {
            try root.publishCRL(to: dir.file("root.crl"))
            try intermediate.publishCRL(to: dir.file("intermediate.crl"))
            try ClientCA.run("cat '\(dir.file("root.crl"))' '\(dir.file("intermediate.crl"))' > '\(crl).new' && mv '\(crl).new' '\(crl)'")
        }
        try publishBoth()
        let certs = dir.file("certs")
        _ = try TestPKI().issue(["localhost"], into: certs, name: "site")
        let (leaf, chain, admin) = (freePort(), freePort(), freePort())
        try dir.write("chain.yaml", """
            listeners:
              - { name: leaf, address: "127.0.0.1:\(leaf)", tls: { client_auth: { ca_file: \(bundle), crl_file: \(crl) } } }
              - { name: chain, address: "127.0.0.1:\(chain)", tls: { client_auth: { ca_file: \(bundle), crl_file: \(crl), crl_check: chain } } }
            certificates: { sources: [ { directory: \(certs) } ] }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        let gateway = try GatewayProcess(config: dir.file("chain.yaml"), logPath: dir.file("chain.log"))
        defer { _ = gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        XCTAssertTrue(admitted(leaf, carol), gateway.log)
        XCTAssertTrue(admitted(chain, carol), gateway.log)
        try root.revoke(intermediate.certificate)
        try publishBoth()
        XCTAssertTrue(eventually(timeout: 15) { !self.admitted(chain, carol) }, "the chain check sees the revoked intermediate: " + gateway.log)
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("client certificate refused: its issuer CN=Test Intermediate CA is revoked (serial 1000, client_auth.crl_file) (subject CN=carol") },
                      gateway.log)
        XCTAssertTrue(admitted(leaf, carol), "a leaf check looks at carol's own entry only: " + gateway.log)
    }

    /// A CRL given for one SNI name (`client_auth_by_name`) refuses its revoked clients
    /// there, and a replaced list takes effect without a restart.
    func testAPerNameListRefusesItsRevokedClients() throws {
        let (dir, ca, alice, bob, crl) = try twoClientsOneRevoked()
        let site = try TestPKI().issue(["localhost", "admin.test"], into: dir.path, name: "site")
        let (https, admin) = (freePort(), freePort())
        try dir.write("by-name.yaml", """
            listeners:
              - name: https
                address: "127.0.0.1:\(https)"
                tls:
                  certificate: \(site.fullchain)
                  key: \(site.key)
                  client_auth_by_name: { "admin.test": { ca_file: \(ca.certificate), crl_file: \(crl) } }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        let gateway = try GatewayProcess(config: dir.file("by-name.yaml"), logPath: dir.file("by-name.log"))
        defer { _ = gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        func admitted(_ client: Client) -> Bool {
            let result = try? Shell.run(["curl", "-sk", "--max-time", "5", "--cert", client.certificate, "--key", client.key, "--resolve", "admin.test:\(https):127.0.0.1",
                                         "-o", "/dev/null", "-w", "%{http_code}", "https://admin.test:\(https)/"])
            return (result?.stdout ?? "000") != "000"
        }
        XCTAssertTrue(admitted(alice), gateway.log)
        XCTAssertFalse(admitted(bob), "bob is revoked in admin.test's list")
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("client certificate refused: revoked (serial \(bob.serial)") }, gateway.log)
        try ca.revoke(alice.certificate)
        try ca.publishCRL(to: crl)
        XCTAssertTrue(eventually(timeout: 15) { !admitted(alice) }, gateway.log)
        XCTAssertTrue(self.admitted(https, bob), "localhost asks for no client certificate")
    }

    /// An upstream whose certificate is revoked is refused at the next connection once the
    /// new list is on disk, without a reload; pooled connections and kept sessions made
    /// before are not used again.
    func testARevokedUpstreamIsRefusedOnceTheListChanges() throws {
        let setup = try UpstreamSetup(self) { port, ca, crl in
            """
              app:
                backends: ["127.0.0.1:\(port)"]
                tls: { sni: app.internal, ca_file: \(ca.certificate), crl_file: \(crl) }
            routes: [ { upstream: app } ]
            """
        }
        defer { setup.stop() }
        let (gateway, ca, server, crl, admin) = (setup.gateway, setup.ca, setup.server, setup.crl, setup.admin)
        let status = { setup.status("/") }
        XCTAssertEqual(status(), "200", gateway.log)
        XCTAssertEqual(status(), "200")
        try ca.revoke(server.certificate)
        try ca.publishCRL(to: crl)
        XCTAssertTrue(eventually(timeout: 5, interval: 0.2) { status() == "502" }, gateway.log)
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("certificate verify failed: certificate revoked (serial \(server.serial), CN=app, in tls.crl_file)") }, gateway.log)
        XCTAssertEqual(metricSum("edge_upstream_tls_handshake_failures_total{upstream=\"app\",backend=\"127.0.0.1:\(setup.upstreamPort)\",reason=\"certificate_revoked\"}", admin: admin).map { $0 > 0 }, true)
        let lists = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status/certificates"]).stdout
        XCTAssertTrue(lists.contains("\"used_by\":\"upstream app\""), lists)
    }

    /// An upstream group's list past its next update: still used, a warning on the status
    /// views; with `crl_strict` the upstream is refused until a fresh list arrives, while a
    /// lenient group beside it goes on.
    func testAStaleUpstreamListRefusesOnlyWhenStrict() throws {
        let setup = try UpstreamSetup(self) { port, ca, crl in
            """
              strict:
                backends: ["127.0.0.1:\(port)"]
                tls: { sni: app.internal, ca_file: \(ca.certificate), crl_file: \(crl), crl_strict: true }
              lenient:
                backends: ["127.0.0.1:\(port)"]
                tls: { sni: app.internal, ca_file: \(ca.certificate), crl_file: \(crl) }
            routes: [ { path_prefix: /strict, upstream: strict }, { upstream: lenient } ]
            """
        }
        defer { setup.stop() }
        let (gateway, ca, crl, admin) = (setup.gateway, setup.ca, setup.crl, setup.admin)
        XCTAssertEqual(setup.status("/strict"), "200", gateway.log)
        XCTAssertEqual(setup.status("/"), "200", gateway.log)
        try ca.publishCRL(to: crl, stale: true)
        XCTAssertTrue(eventually(timeout: 15, interval: 0.2) { setup.status("/strict") == "502" }, "crl_strict refuses while the list is stale: " + gateway.log)
        XCTAssertEqual(setup.status("/"), "200", "the lenient group goes on: " + gateway.log)
        XCTAssertEqual(metricSum("edge_crl_stale", admin: admin, labelled: "used_by=\"upstream strict\""), 1)
        let summary = try Shell.run([gatewayBinary(), "status", "--admin", "127.0.0.1:\(admin)"]).stdout
        XCTAssertTrue(summary.contains("  STALE    \(crl) (upstream strict): past its next update, refusing (crl_strict)"), summary)
        XCTAssertTrue(summary.contains("  STALE    \(crl) (upstream lenient): past its next update\n"), summary)
        try ca.publishCRL(to: crl)
        XCTAssertTrue(eventually(timeout: 15, interval: 0.2) { setup.status("/strict") == "200" }, "a fresh list ends it, without a reload: " + gateway.log)
    }

    /// A CA's upstream `app` (`Tests/tools/tls_upstream.py`), a fresh list at `crl.pem`, and
    /// a gateway with a plain listener whose upstream groups and routes `upstreams` writes.
    struct UpstreamSetup {
        /// Kept: the directory goes when the last reference does.
        let dir = TemporaryDirectory()
        let ca: ClientCA
        let server: Client
        let crl: String
        let upstream: Process
        let upstreamPort: Int
        let gateway: GatewayProcess
        let http: Int, admin: Int

        init(_ test: ClientRevocationTests, upstreams: (_ port: Int, _ ca: ClientCA, _ crl: String) -> String) throws {
            let dir = self.dir
            self.ca = try ClientCA(in: dir)
            self.server = try self.ca.issue("app", extensions: "server")
            self.crl = dir.file("crl.pem")
            try self.ca.publishCRL(to: self.crl)
            (self.upstream, self.upstreamPort) = try test.startTLSUpstream(dir, self.server)
            (self.http, self.admin) = (freePort(), freePort())
            try dir.write("gateway.yaml", """
                listeners: [ { name: http, address: "127.0.0.1:\(self.http)" } ]
                upstreams:
                \(upstreams(self.upstreamPort, self.ca, self.crl))
                admin: { address: "127.0.0.1:\(self.admin)" }
                """)
            self.gateway = try GatewayProcess(config: dir.file("gateway.yaml"), logPath: dir.file("log"))
            XCTAssertTrue(self.gateway.waitForPort(self.admin), self.gateway.log)
        }

        func status(_ path: String) -> String {
            (try? Shell.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(self.http)\(path)"]).stdout) ?? ""
        }

        func stop() {
            _ = self.gateway.stop()
            self.upstream.terminate()
            self.upstream.waitUntilExit()
        }
    }

    /// `Tests/tools/tls_upstream.py` serving `server`'s certificate; returns it and its port.
    func startTLSUpstream(_ dir: TemporaryDirectory, _ server: Client) throws -> (Process, Int) {
        let upstreamPort = freePort()
        let upstream = Process()
        upstream.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        upstream.arguments = [repositoryRoot() + "/Tests/tools/tls_upstream.py", dir.file("sni.log"), "port=\(upstreamPort),cert=\(server.certificate),key=\(server.key)"]
        upstream.standardOutput = FileHandle.nullDevice
        upstream.standardError = FileHandle.nullDevice
        try upstream.run()
        XCTAssertTrue(GatewayProcess.Probe.wait(port: upstreamPort, timeout: 10) { upstream.isRunning })
        return (upstream, upstreamPort)
    }

    /// A CRL that cannot be used stops `check` and `run`, naming its key and why.
    func testABrokenListIsRefusedAtStartNamingItsKey() throws {
        let dir = TemporaryDirectory()
        let ca = try ClientCA(in: dir)
        try "not a CRL\n".write(toFile: dir.file("crl.pem"), atomically: true, encoding: .utf8)
        let site = try TestPKI().issue(["localhost"], into: dir.path, name: "site")
        try dir.write("gateway.yaml", """
            listeners:
              - { name: https, address: "127.0.0.1:0", tls: { certificate: \(site.fullchain), key: \(site.key), client_auth: { ca_file: \(ca.certificate), crl_file: crl.pem } } }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            """)
        let check = try Shell.run([gatewayBinary(), "check", "-c", dir.file("gateway.yaml")])
        XCTAssertEqual(check.status, 1)
        XCTAssertTrue(check.stderr.contains("listeners[0].tls.client_auth.crl_file: CRL file \(dir.file("crl.pem")): no X509 CRL block found"), check.stderr)
    }

    func testSettingsThatCannotWorkAreRefusedNamingTheKey() throws {
        let listener = { (auth: String) in "listeners: [ { name: l, address: \"127.0.0.1:0\", tls: { client_auth: \(auth) } } ]\nroutes: []\n" }
        XCTAssertThrowsError(try GatewayConfig.parse(yaml: listener("{ ca_file: ca.pem, crl_check: chain }"))) { error in
            XCTAssertTrue("\(error)".hasPrefix("listeners[0].tls.client_auth.crl_file: required with crl_check and crl_strict"), "\(error)")
        }
        XCTAssertThrowsError(try GatewayConfig.parse(yaml: listener("{ ca_file: ca.pem, crl_file: c.pem, crl_check: all }"))) { error in
            XCTAssertTrue("\(error)".contains("crl_check"), "\(error)")
        }
        XCTAssertThrowsError(try GatewayConfig.parse(yaml: "listeners: []\nroutes: []\nupstreams: { app: { backends: [\"127.0.0.1:1\"], tls: { verify_cert: false, crl_file: c.pem } } }\n")) { error in
            XCTAssertTrue("\(error)".hasPrefix("upstreams.app.tls.crl_file: checks the upstream's certificate, which verify_cert: false does not verify"), "\(error)")
        }
    }
}
