import EdgeTestSupport
import Foundation
import XCTest

/// Mutual TLS while the trust changes under a running gateway: a session never outlives
/// the trust it was made under, and a handshake in flight during a rotation is decided
/// by the policy it began under, without crashing the gateway.
final class TrustChangeTests: XCTestCase {
    static let pkiA = try! TestPKI()
    static let pkiB = try! TestPKI()
    static let pkiC = try! TestPKI()

    func session(port: Int, _ version: String, cert: TestPKI.Leaf? = nil, out: String? = nil, in input: String? = nil) throws -> String {
        // `version` may carry `-noservername`: a client connecting by address sends no SNI.
        let certificate = cert.map { " -cert '\($0.fullchain)' -cert_chain '\($0.fullchain)' -key '\($0.key)'" } ?? ""
        let name = version.contains("-noservername") ? "" : "-servername localhost "
        return try sClient(port: port, name + version + certificate, sessionOut: out, sessionIn: input)
    }

    /// The session-ID context covers the client CA bundle's bytes and the allow list:
    /// replacing the bundle by an unrelated CA, removing a CA from it, or narrowing the
    /// allow list by a reload each make old sessions (IDs and tickets, TLS 1.2 and 1.3)
    /// unresumable, so a client without a certificate cannot come back in on one.
    func testSessionsDoNotResumeAfterACAChangeACARemovalOrAnAllowListChange() throws {
        let dir = TemporaryDirectory()
        _ = try Self.pkiA.issue(["localhost"], into: dir.path, name: "site")
        let clientA = try Self.pkiA.issue(["a.client"], into: dir.path, name: "client-a")
        let clientB = try Self.pkiB.issue(["b.client"], into: dir.path, name: "client-b")
        let https = freePort(), admin = freePort()
        let upstream = try DemoUpstreamProcess()
        defer { upstream.stop() }
        func bundle(_ cas: [String]) throws {
            try Shell.bash("cat \(cas.map { "'\($0)'" }.joined(separator: " ")) > '\(dir.file("clients.tmp"))' && mv '\(dir.file("clients.tmp"))' '\(dir.file("clients.pem"))'")
        }
        func config(allow: String) throws {
            try dir.write("config.yaml", """
                listeners:
                  - name: https
                    address: "127.0.0.1:\(https)"
                    tls:
                      certificate: site.crt
                      key: site.key
                      client_auth: { ca_file: clients.pem, mode: required, allow: { dns: [\(allow)] } }
                upstreams: { app: { backends: ["127.0.0.1:\(upstream.port)"] } }
                routes: [ { upstream: app } ]
                admin: { address: "127.0.0.1:\(admin)" }
                """)
        }
        try bundle([Self.pkiA.caPath, Self.pkiB.caPath])
        try config(allow: "a.client, b.client")
        let gateway = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("gateway.log"))
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        // With SNI and without: a session is looked up under the policy it is presented to either way.
        let versions = ["-tls1_3", "-tls1_2", "-tls1_3 -noservername", "-tls1_2 -noservername"]
        func established(_ cert: TestPKI.Leaf, _ name: String) throws {
            for version in versions {
                let file = dir.file("\(name)\(version.replacingOccurrences(of: " ", with: ""))")
                let first = try session(port: https, version, cert: cert, out: file)
                XCTAssertTrue(first.contains("New,"), "\(name) \(version):\n\(first.prefix(800))")
                let again = try session(port: https, version, in: file)
                XCTAssertTrue(again.contains("Reused,"), "\(name) \(version) resumes while nothing changed:\n\(again.prefix(800))\n---\n\(gateway.log.suffix(1500))")
            }
        }
        func refused(_ name: String, after change: String) throws {
            for version in versions {
                let again = try session(port: https, version, in: dir.file("\(name)\(version.replacingOccurrences(of: " ", with: ""))"))
                XCTAssertFalse(again.contains("Reused,"), "\(version): a session made before \(change) resumed:\n\(again.prefix(800))")
            }
        }
        var rebuilt = 0
        func waitForRebuild() {
            rebuilt += 1
            XCTAssertTrue(eventually(timeout: 10) { gateway.log.components(separatedBy: "certificate contexts rebuilt").count - 1 >= rebuilt }, gateway.log)
        }
        // A CA removed from the bundle.
        try established(clientA, "a")
        try bundle([Self.pkiB.caPath])
        waitForRebuild()
        try refused("a", after: "its CA was removed from the bundle")
        // The bundle replaced by an unrelated CA.
        try established(clientB, "b")
        try bundle([Self.pkiC.caPath])
        waitForRebuild()
        try refused("b", after: "the bundle was replaced")
        // The allow list narrowed by a reload.
        try bundle([Self.pkiB.caPath])
        waitForRebuild()
        try established(clientB, "b2")
        try config(allow: "a.client")
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { gateway.log.contains("configuration reloaded") }, gateway.log)
        try refused("b2", after: "the allow list changed")
        XCTAssertTrue(gateway.process.isRunning)
    }
}
