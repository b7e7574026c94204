import EdgeTestSupport
import Foundation
import XCTest

/// The renewal watchdog for a Kubernetes secret, end to end: a Secret volume and a
/// downward API volume laid out as the kubelet lays them out (`..data` swapped by a
/// rename), the gateway running on them.
final class KubernetesRenewalTests: XCTestCase {
    /// A 90-day certificate issued 61 days ago: cert-manager's default (two thirds, day 60)
    /// makes it due, not overdue; the pod's `cert-manager.io/renew-before: 960h` (40 days,
    /// day 50) makes it overdue, with cert-manager's message. A new annotation, swapped in as
    /// the kubelet does it, is read at the next check without a reload.
    func testThePodsRenewBeforeAnnotationDecidesAndIsReadAgainWhenItChanges() throws {
        let dir = TemporaryDirectory()
        let pki = try TestPKI()
        let day: Int64 = 86_400
        let now = Int64(Date().timeIntervalSince1970)
        let secret = dir.file("tls"), podinfo = dir.file("podinfo")
        _ = try pki.issue(["k8s.example.test"], notBefore: now - 61 * day, notAfter: now + 29 * day, into: secret + "/..2026_12_07_01_00_00.1", name: "tls")
        try Shell.bash("cd '\(secret)' && ln -s ..2026_12_07_01_00_00.1 ..data && ln -s ..data/tls.crt tls.crt && ln -s ..data/tls.key tls.key")
        func annotate(_ version: Int, _ lines: String) throws {
            let data = "..2026_12_07_0\(version)_00_00.\(version)"
            try FileManager.default.createDirectory(atPath: podinfo + "/" + data, withIntermediateDirectories: true)
            try lines.write(toFile: podinfo + "/" + data + "/annotations", atomically: false, encoding: .utf8)
            try Shell.bash("cd '\(podinfo)' && ln -s \(data) ..data_tmp && mv -T ..data_tmp ..data && ln -sfn ..data/annotations annotations")
        }
        try annotate(1, "app=\"web\"\ncert-manager.io/renew-before=\"960h\"\n")
        let (https, admin) = (freePort(), freePort())
        try dir.write("gateway.yaml", """
            listeners: [ { name: https, address: "127.0.0.1:\(https)", tls: {} } ]
            certificates: { sources: [ { kubernetes: \(secret), annotations_file: \(podinfo)/annotations } ] }
            expiry: { check_interval: 1s }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        let gateway = try GatewayProcess(config: dir.file("gateway.yaml"), logPath: dir.file("log"))
        defer { _ = gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        func renewal() -> [String: Any]? {
            guard let body = try? Shell.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:\(admin)/status/certificates"]).stdout,
                  let json = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else { return nil }
            return (json["certificates"] as? [[String: Any]])?.first?["renewal"] as? [String: Any]
        }
        let overdue = try XCTUnwrap(renewal(), gateway.log)
        XCTAssertEqual(overdue["state"] as? String, "overdue", "\(overdue)")
        XCTAssertEqual(overdue["agent"] as? String, "cert-manager")
        XCTAssertEqual(overdue["basis"] as? String, "cert-manager.io/renew-before=960h in \(podinfo)/annotations")
        XCTAssertTrue((overdue["message"] as? String ?? "").hasPrefix("cert-manager should have renewed tls 11d 0h ago"), "\(overdue)")
        XCTAssertEqual(metricSum("edge_certificate_renewal_overdue", admin: admin), 1)
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("cert-manager should have renewed tls") }, gateway.log)

        // The annotation changed on the pod: the kubelet swaps ..data; read at the next look.
        try annotate(2, "app=\"web\"\ncert-manager.io/renew-before-percentage=\"20\"\n")
        XCTAssertTrue(eventually(timeout: 5) { renewal()?["state"] as? String == "scheduled" }, "\(renewal() ?? [:])")
        XCTAssertEqual(renewal()?["basis"] as? String, "cert-manager.io/renew-before-percentage=20 in \(podinfo)/annotations")
        XCTAssertTrue(eventually(timeout: 5) { metricSum("edge_certificate_renewal_overdue", admin: admin) == 0 })
        // No setting at all: cert-manager's default, two thirds through: due, within the grace.
        try annotate(3, "app=\"web\"\n")
        XCTAssertTrue(eventually(timeout: 5) { renewal()?["state"] as? String == "due" }, "\(renewal() ?? [:])")
    }
}
