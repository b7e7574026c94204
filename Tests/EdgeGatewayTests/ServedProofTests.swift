@testable import EdgeGateway
import EdgeTestSupport
import Foundation
import XCTest

/// The served proof: after each publication the gateway handshakes with its own HTTPS
/// listeners (one of them behind a PROXY protocol header) and compares the chain served
/// with the one published. Real files, inotify, handshakes on loopback.
final class ServedProofTests: XCTestCase {
    static let pki = try! TestPKI()

    func start(_ dir: TemporaryDirectory) async throws -> GatewayHarness {
        try await GatewayHarness.start(directory: dir) { upstreamPort in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: {}
              - name: balanced
                address: "127.0.0.1:0"
                proxy_protocol: true
                tls: {}
            certificates:
              sources: [ { directory: certs } ]
              watch: { debounce: 100ms }
            upstreams:
              app: { backends: ["127.0.0.1:\(upstreamPort)"] }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
    }

    /// The `served` entries of a lineage in `/status/certificates`, by listener, and its
    /// published fingerprint.
    func served(_ harness: GatewayHarness, lineage: String) -> (fingerprint: String, byListener: [String: [String: Any]]) {
        let text = (try? Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/certificates"]).stdout) ?? ""
        let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
        let certificate = (json?["certificates"] as? [[String: Any]])?.first { $0["name"] as? String == lineage } ?? [:]
        var byListener: [String: [String: Any]] = [:]
        for entry in certificate["served"] as? [[String: Any]] ?? [] {
            if let listener = entry["listener"] as? String { byListener[listener] = entry }
        }
        return (certificate["sha256_fingerprint"] as? String ?? "", byListener)
    }

    func verified(_ harness: GatewayHarness, lineage: String, listeners: [String]) -> Bool {
        let (fingerprint, byListener) = self.served(harness, lineage: lineage)
        return !fingerprint.isEmpty && listeners.allSatisfy {
            byListener[$0]?["state"] as? String == "verified" && byListener[$0]?["fingerprint_seen"] as? String == fingerprint
                && byListener[$0]?["served_verified_at"] is Int
        }
    }

    func testARotationIsConfirmedOnEveryListener() async throws {
        let dir = TemporaryDirectory()
        _ = try Self.pki.issue(["localhost"], into: dir.file("certs"), name: "site")
        let harness = try await self.start(dir)
        XCTAssertTrue(eventually { self.verified(harness, lineage: "site", listeners: ["https", "balanced"]) },
                      "what was loaded at start is what both listeners serve: \(self.served(harness, lineage: "site"))")
        let before = self.served(harness, lineage: "site").fingerprint

        // The renewal adds names: each is asked for, the wildcard's with a label of ours.
        let v2 = try Self.pki.issue(["localhost", "second.test", "*.apps.test"], into: dir.file("staging"), name: "v2")
        try Shell.run(["mv", v2.key, dir.file("certs/site.key")])
        try Shell.run(["mv", v2.fullchain, dir.file("certs/site.crt")])
        XCTAssertTrue(eventually { self.served(harness, lineage: "site").fingerprint != before }, "the renewal published")
        XCTAssertTrue(eventually { self.verified(harness, lineage: "site", listeners: ["https", "balanced"]) },
                      "and confirmed as served: \(self.served(harness, lineage: "site"))")
        XCTAssertEqual(self.served(harness, lineage: "site").byListener["https"]?["server_name"] as? String, "edge-gateway-served-proof.apps.test",
                       "every name was verified, the last one is shown")
        let metrics = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/metrics"]).stdout
        XCTAssertTrue(metrics.contains("edge_certificate_served_mismatch{name=\"site\",listener=\"https\"} 0.0"), metrics)
        XCTAssertFalse(harness.logs.contains("served certificate differs"))
        let page = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/"]).stdout
        XCTAssertTrue(page.contains("served on https ✓") && page.contains("served on balanced ✓"), page)
        await harness.shutdown()
    }

    func testEveryNameIsProbedExactOnesFirstAndAtMostEight() {
        XCTAssertEqual(ServedProof.probeNames(["*.a.test", "b.test", "c.test"], isDefault: false), ["b.test", "c.test", "edge-gateway-served-proof.a.test"])
        XCTAssertEqual(ServedProof.probeNames((1...20).map { "n\($0).test" }, isDefault: false).count, 8)
        XCTAssertEqual(ServedProof.probeNames([], isDefault: true), [""], "the default certificate, served without a name")
        XCTAssertEqual(ServedProof.probeNames([], isDefault: false), [], "served for no name: not probed")
        XCTAssertEqual(ServedProof.probeName(["*.a.test", "b.test"], isDefault: false), "b.test")
    }

    /// No false alarms where the chain served is chosen for the client: an ECDSA and an
    /// RSA certificate for one name (each asked for as a client that can take only its
    /// key), and a listener that requires client certificates whose own pair is the leaf
    /// alone, issued by a CA of its client CA bundle, which OpenSSL then sends after it.
    func testDualKeysAndALeafOnlyPairBesideClientCAsAreVerified() async throws {
        let dir = TemporaryDirectory()
        _ = try Self.pki.issue(["localhost"], into: dir.file("certs"), name: "site-ec")
        _ = try Self.pki.issue(["localhost"], rsa: true, into: dir.file("certs"), name: "site-rsa")
        let own = try Self.pki.issue(["mtls.test"], into: dir.file("own"), name: "own")
        try Shell.run(["cp", own.certificate, dir.file("own/leaf-only.crt")])
        let harness = try await GatewayHarness.start(directory: dir) { upstreamPort in
            """
            listeners:
              - { name: https, address: "127.0.0.1:0", tls: {} }
              - name: mtls
                address: "127.0.0.1:0"
                tls: { certificate: own/leaf-only.crt, key: own/own.key, client_auth: { ca_file: \(Self.pki.intermediatePath), mode: required } }
              - name: optional
                address: "127.0.0.1:0"
                tls: { client_auth: { ca_file: \(Self.pki.intermediatePath), mode: optional } }
            certificates: { sources: [ { directory: certs } ] }
            upstreams: { app: { backends: ["127.0.0.1:\(upstreamPort)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        XCTAssertTrue(eventually { self.verified(harness, lineage: "site-ec", listeners: ["https", "optional"]) }, "\(self.served(harness, lineage: "site-ec"))")
        XCTAssertTrue(eventually { self.verified(harness, lineage: "site-rsa", listeners: ["https", "optional"]) }, "\(self.served(harness, lineage: "site-rsa"))")
        XCTAssertTrue(eventually { self.verified(harness, lineage: "mtls", listeners: ["mtls"]) }, "\(self.served(harness, lineage: "mtls"))")
        XCTAssertFalse(harness.logs.contains("served certificate differs"))
        // The probe leaves once it has seen the chain, before a client certificate is
        // due: its own handshakes are no failed handshake in the log or the metrics.
        XCTAssertFalse(harness.logs.contains("TLS handshake failed"), harness.logs.all.joined(separator: "\n"))
        XCTAssertEqual(metricSum("edge_tls_handshakes_total", admin: harness.gateway.adminPort!, labelled: "result=\"failed\""), 0)
        await harness.shutdown()
    }

    /// A publication that does not reach the handshakes (here a test hook that keeps the
    /// listeners on the snapshot of the moment) is reported within a second: the status,
    /// the metric and an error in the log.
    func testAPublicationThatDoesNotReachTheHandshakesIsAMismatch() async throws {
        let dir = TemporaryDirectory()
        _ = try Self.pki.issue(["localhost"], into: dir.file("certs"), name: "site")
        let harness = try await self.start(dir)
        XCTAssertTrue(eventually { self.verified(harness, lineage: "site", listeners: ["https", "balanced"]) })
        harness.gateway.sharedStore!.holdServedSnapshot()

        let v2 = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "v2")
        try Shell.run(["mv", v2.key, dir.file("certs/site.key")])
        try Shell.run(["mv", v2.fullchain, dir.file("certs/site.crt")])
        let published = Date()
        XCTAssertTrue(eventually { self.served(harness, lineage: "site").byListener["https"]?["state"] as? String == "mismatch" },
                      "\(self.served(harness, lineage: "site"))")
        XCTAssertLessThan(Date().timeIntervalSince(published), 1.5, "reported within a second of the publication (the debounce is 0.1 s)")
        let (fingerprint, byListener) = self.served(harness, lineage: "site")
        XCTAssertNotEqual(byListener["https"]?["fingerprint_seen"] as? String, fingerprint)
        XCTAssertTrue(byListener["https"]?["served_verified_at"] is NSNull, "\(byListener)")
        let metrics = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/metrics"]).stdout
        XCTAssertTrue(metrics.contains("edge_certificate_served_mismatch{name=\"site\",listener=\"https\"} 1.0"), metrics)
        XCTAssertTrue(eventually { harness.logs.contains("served certificate differs from the published one") })
        let page = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/"]).stdout
        XCTAssertTrue(page.contains("served on https: ANOTHER certificate"), page)
        let summary = try Shell.run([gatewayBinary(), "status", "--admin", "127.0.0.1:\(harness.gateway.adminPort!)"]).stdout
        XCTAssertTrue(summary.contains("  MISMATCH site: balanced, https served another certificate than the one published"), summary)
        await harness.shutdown()
    }

    /// `edge-gateway certs -c FILE --check-served`: handshakes with the configuration's
    /// listeners and compares what they serve with the files it names. Exit 0 when they
    /// serve the files; 3 when the files say one thing and the listener serves another
    /// (here, a configuration naming other files for the same listeners).
    func testCertsCheckServedComparesTheListenersWithTheFiles() async throws {
        let dir = TemporaryDirectory()
        _ = try Self.pki.issue(["localhost"], into: dir.file("certs"), name: "site")
        _ = try Self.pki.issue(["localhost"], into: dir.file("other"), name: "site")
        let (https, balanced) = (freePort(), freePort())
        func yaml(_ certificates: String, upstream: Int) -> String {
            """
            listeners:
              - { name: https, address: "127.0.0.1:\(https)", tls: {} }
              - { name: balanced, address: "127.0.0.1:\(balanced)", proxy_protocol: true, tls: {} }
            certificates: { sources: [ { directory: \(certificates) } ] }
            upstreams: { app: { backends: ["127.0.0.1:\(upstream)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let harness = try await GatewayHarness.start(directory: dir) { yaml("certs", upstream: $0) }
        try dir.write("gateway.yaml", yaml("certs", upstream: 9))
        try dir.write("other.yaml", yaml("other", upstream: 9))
        // doc-command: edge-gateway certs -c FILE --check-served
        let ok = try Shell.run([gatewayBinary(), "certs", "-c", dir.file("gateway.yaml"), "--check-served"])
        XCTAssertEqual(ok.status, 0, ok.stdout + ok.stderr)
        let rows = ok.stdout.split(separator: "\n").filter { $0.hasPrefix("site ") && ($0.contains(" https ") || $0.contains(" balanced ")) }
        XCTAssertEqual(rows.count, 2, ok.stdout)
        XCTAssertTrue(rows.allSatisfy { $0.contains("  ok  ") }, ok.stdout)

        let other = try Shell.run([gatewayBinary(), "certs", "-c", dir.file("other.yaml"), "--check-served"])
        XCTAssertEqual(other.status, 3, other.stdout + other.stderr)
        XCTAssertTrue(other.stdout.contains("MISMATCH"), other.stdout)
        let json = try Shell.run([gatewayBinary(), "certs", "--json", "-c", dir.file("other.yaml"), "--check-served"])
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        let served = ((object?["certificates"] as? [[String: Any]])?.first?["served"] as? [[String: Any]]) ?? []
        XCTAssertEqual(served.map { $0["state"] as? String }, ["mismatch", "mismatch"], json.stdout)

        let withoutConfig = try Shell.run([gatewayBinary(), "certs", "--check-served", dir.file("certs")])
        XCTAssertEqual(withoutConfig.status, 2)
        XCTAssertTrue(withoutConfig.stderr.contains("--check-served needs the configuration file"), withoutConfig.stderr)
        await harness.shutdown()
    }
}
