import EdgeTestSupport
import Foundation
import XCTest

/// Mutual-TLS handshakes held open across rotations: twenty TLS 1.3 clients each hold back
/// their final flight (Certificate, CertificateVerify, Finished) while ten certificate
/// rotations and two client-CA changes are published, then send it. The verify callback of
/// each runs against the context its ClientHello was switched to, long after the snapshot
/// that offered it was replaced. The gateway runs in this process, so under
/// AddressSanitizer (scripts/sanitizers.sh) a read of a freed allow list aborts the test.
final class ParkedHandshakeTests: XCTestCase {
    func testParkedClientFlightsSurviveRotationsAndCAChangesAndFollowThePolicyTheyBeganUnder() async throws {
        let pki = try TestPKI(), foreignPKI = try TestPKI(), laterPKI = try TestPKI()
        let dir = TemporaryDirectory()
        let certs = dir.path + "/certs"
        _ = try pki.issue(["localhost"], into: certs, name: "site")
        let good = try pki.issue(["good.client"], into: dir.path, name: "good")
        let other = try pki.issue(["other.client"], into: dir.path, name: "other")
        let foreign = try foreignPKI.issue(["good.client"], into: dir.path, name: "foreign")
        try Shell.run(["cp", pki.caPath, dir.file("clients.pem")])
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                timeouts: { handshake: 60s }
                tls:
                  client_auth: { ca_file: clients.pem, mode: required, allow: { dns: [good.client] } }
            certificates:
              sources: [ { directory: certs } ]
              watch: { debounce: 50ms }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let port = harness.port("https")
        // 20 clients: 10 allowed, 5 outside the allow list, 5 from a CA the gateway does not trust.
        let identities = [good, good, other, foreign]
        let ready = dir.file("ready"), release = dir.file("release")
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        client.arguments = [repositoryRoot() + "/Tests/tools/parked_mtls.py", "--port", "\(port)", "--ca", pki.caPath,
                            "--sni", "localhost", "--count", "20", "--ready-file", ready, "--release-file", release, "--max-wait", "60"]
            + identities.flatMap { ["--cert", $0.fullchain, "--key", $0.key] }
        let output = Pipe()
        client.standardOutput = output
        try client.run()
        defer { if client.isRunning { client.terminate() } }
        XCTAssertTrue(eventually(timeout: 30) { FileManager.default.fileExists(atPath: ready) }, "the handshakes were parked")

        // Ten rotations, each waited for until served.
        for round in 1...10 {
            let next = try pki.issue(["localhost"], into: pki.directory.path + "/round\(round)", name: "site")
            try Shell.bash("mv '\(next.key)' '\(certs)/site.key' && mv '\(next.fullchain)' '\(certs)/site.crt'")
            XCTAssertTrue(eventually(timeout: 10) { servedSerial(port: port, serverName: "localhost",
                                                                   extra: ["-cert", good.fullchain, "-key", good.key]) == next.serial },
                          "rotation \(round) was served")
        }
        // Two client-CA changes: another CA added, then the parked clients' CA removed.
        try Shell.bash("cat '\(pki.caPath)' '\(laterPKI.caPath)' > '\(dir.file("clients.tmp"))' && mv '\(dir.file("clients.tmp"))' '\(dir.file("clients.pem"))'")
        XCTAssertTrue(eventually(timeout: 10) { harness.logs.all.filter { $0.contains("certificate contexts rebuilt") }.count >= 1 })
        try Shell.run(["cp", laterPKI.caPath, dir.file("clients.tmp")])
        try Shell.run(["mv", dir.file("clients.tmp"), dir.file("clients.pem")])
        XCTAssertTrue(eventually(timeout: 10) { harness.logs.all.filter { $0.contains("certificate contexts rebuilt") }.count >= 2 })

        // Every client sends its final flight now.
        _ = FileManager.default.createFile(atPath: release, contents: nil)
        let line = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        client.waitUntilExit()
        let result = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], line)
        XCTAssertEqual(result["parked"] as? Int, 20, line)
        let outcomes = try XCTUnwrap(result["results"] as? [[String: Any]], line)
        XCTAssertEqual(outcomes.count, 20)
        for outcome in outcomes {
            let index = outcome["index"] as? Int ?? -1
            let identity = identities[index % identities.count]
            let admitted = outcome["outcome"] as? String == "admitted"
            // The policy in force when each handshake began: the pki CA, allow list good.client.
            if identity.fullchain == good.fullchain {
                XCTAssertTrue(admitted, "client \(index) (allowed) was refused: \(outcome)")
                XCTAssertTrue((outcome["body"] as? String ?? "").contains("x-client-verify: SUCCESS"), "\(outcome)")
            } else {
                XCTAssertFalse(admitted, "client \(index) (\(identity.fullchain)) was admitted: \(outcome)")
            }
        }
        // The gateway is still up, and new handshakes follow the new policy: the pki CA is gone.
        let refused = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", pki.caPath,
                                     "--cert", good.fullchain, "--key", good.key, "https://localhost:\(port)/"])
        XCTAssertNotEqual(refused.stdout, "200", "a client of the removed CA is refused now")
        let later = try laterPKI.issue(["good.client"], into: dir.path, name: "later")
        let admitted = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", pki.caPath,
                                      "--cert", later.fullchain, "--key", later.key, "https://localhost:\(port)/"])
        XCTAssertEqual(admitted.stdout, "200", admitted.stderr)
        await harness.shutdown()
    }
}
