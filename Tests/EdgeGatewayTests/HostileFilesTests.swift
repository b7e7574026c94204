import EdgeTestSupport
import Foundation
import XCTest

/// What the watcher meets in a directory others can write: files written slowly, and
/// files that are not certificates at all (a FIFO, a device, a directory, a huge file, a
/// symlink loop). The gateway never blocks on them, never serves a half-written file,
/// says once what is wrong with each, and keeps serving its last good state.
final class HostileFilesTests: XCTestCase {
    static let pki = try! TestPKI()

    func config(upstreamPort: Int, tls: String) -> String {
        """
        listeners:
          - { name: https, address: "127.0.0.1:0", tls: \(tls) }
        upstreams: { app: { backends: ["127.0.0.1:\(upstreamPort)"] } }
        routes: [ { upstream: app } ]
        admin: { address: "127.0.0.1:0" }
        """
    }

    /// The number of certificates served for `localhost`, and the leaf's serial.
    func servedChain(port: Int) -> (count: Int, serial: String)? {
        guard let result = try? Shell.bash("""
            openssl s_client -connect 127.0.0.1:\(port) -servername localhost -showcerts </dev/null 2>/dev/null > /tmp/chain.$$ ;
            grep -c 'BEGIN CERTIFICATE' /tmp/chain.$$ ; openssl x509 -in /tmp/chain.$$ -noout -serial ; rm -f /tmp/chain.$$
            """, timeout: 10).stdout.split(separator: "\n"),
            result.count == 2, let count = Int(result[0]) else { return nil }
        return (count, result[1].replacingOccurrences(of: "serial=", with: ""))
    }

    /// The key is replaced whole (closed after writing) while the chain beside it is being
    /// rewritten in place, leaf first and the intermediate 1.5 s later. The new key and
    /// the new leaf alone make a valid pair; served, it would break every client without
    /// the intermediate. Every handshake meanwhile gets the whole old chain or the whole new one.
    func testAChainWrittenInTwoStepsIsNeverServedHalfWritten() async throws {
        let dir = TemporaryDirectory()
        let old = try Self.pki.issue(["localhost"], into: dir.path, name: "site")
        let new = try Self.pki.issue(["localhost"], into: Self.pki.directory.path, name: "next")
        let harness = try await GatewayHarness.start(directory: dir) { port in
            self.config(upstreamPort: port, tls: "{ certificate: site.crt, key: site.key }")
        }
        let port = harness.port("https")
        XCTAssertEqual(servedChain(port: port)?.count, 2)
        let newLeaf = try String(contentsOfFile: new.certificate, encoding: .utf8)
        let intermediate = try String(contentsOfFile: Self.pki.intermediatePath, encoding: .utf8)
        let chain = try XCTUnwrap(FileHandle(forUpdatingAtPath: old.fullchain))
        try chain.truncate(atOffset: 0)
        try chain.write(contentsOf: Data(newLeaf.utf8))
        try chain.synchronize()
        // The new key, written in place and closed: a complete file.
        try Shell.run(["sh", "-c", "cat '\(new.key)' > '\(old.key)'"])
        var seen: [(count: Int, serial: String)] = []
        // 1.5 s of handshakes, longer (4 s at most, within the 5 s a writer is waited for)
        // until there are six: a handshake of the sanitizer builds takes a few hundred ms.
        let (least, most) = (Date().addingTimeInterval(1.5), Date().addingTimeInterval(4))
        while Date() < least || (seen.count < 6 && Date() < most) {
            if let served = servedChain(port: port) { seen.append(served) }
        }
        try chain.write(contentsOf: Data(intermediate.utf8))
        try chain.close()
        XCTAssertTrue(eventually(timeout: 10) { self.servedChain(port: port)?.serial == new.serial }, harness.logs.all.joined(separator: "\n"))
        XCTAssertGreaterThan(seen.count, 5)
        for served in seen {
            XCTAssertEqual(served.count, 2, "a handshake got a chain of \(served.count) (serial \(served.serial)) while the file was half-written")
            XCTAssertEqual(served.serial, old.serial, "the old pair is served until the chain file is closed")
        }
        XCTAssertEqual(servedChain(port: port)?.count, 2)
        await harness.shutdown()
    }

    /// A FIFO, a character device, a directory, a 10 MiB file and a symlink loop, each
    /// named like a certificate in a watched directory: proxied requests and /metrics keep
    /// answering at once, each file is logged once with its name and reason, and the good
    /// lineage beside them keeps being served.
    func testFilesThatAreNotCertificatesNeverStallTheGateway() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.path + "/certs"
        let site = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners:
              - { name: https, address: "127.0.0.1:0", tls: {} }
            certificates:
              sources: [ { directory: certs } ]
              watch: { debounce: 100ms, rescan_interval: 1s }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            workers: 1
            """
        }
        let port = harness.port("https"), admin = harness.gateway.adminPort ?? 0
        try Shell.bash("""
            set -e
            cd '\(certs)'
            mkfifo fifo.crt
            mknod device.crt c 1 3
            mkdir folder.crt
            head -c 10485760 /dev/zero > huge.crt
            ln -s loop.crt loop.crt
            for n in fifo device folder huge loop; do cp site.key $n.key; done
            """)
        let names = ["fifo.crt", "device.crt", "folder.crt", "huge.crt", "loop.crt"]
        XCTAssertTrue(eventually(timeout: 10) { names.allSatisfy { name in harness.logs.all.contains { $0.contains("certificate rejected") && $0.contains(name) } } },
                      harness.logs.all.joined(separator: "\n"))
        // Several rescans later (1 s apart), everything still answers at once.
        let until = Date().addingTimeInterval(3)
        var slowest = 0.0
        while Date() < until {
            for url in ["https://localhost:\(port)/", "http://127.0.0.1:\(admin)/metrics", "http://127.0.0.1:\(admin)/status"] {
                let result = try Shell.run(["curl", "-sS", "--max-time", "5", "--cacert", Self.pki.caPath, "-o", "/dev/null",
                                            "-w", "%{http_code} %{time_total}", url])
                let parts = result.stdout.split(separator: " ")
                XCTAssertEqual(parts.first, "200", "\(url): \(result.stdout) \(result.stderr)")
                slowest = max(slowest, Double(parts.last ?? "") ?? 99)
            }
        }
        XCTAssertLessThan(slowest, 0.1, "the slowest request took \(slowest) s")
        for name in names {
            let lines = harness.logs.all.filter { $0.contains("certificate rejected") && $0.contains(certs + "/" + name) }
            XCTAssertEqual(lines.count, 1, "\(name) is logged once: \(lines)")
        }
        let reasons = harness.logs.all.filter { $0.contains("certificate rejected") }.joined(separator: "\n")
        for reason in ["is a FIFO", "is a character device", "is a directory", "may hold at most", "symbolic links"] {
            XCTAssertTrue(reasons.contains(reason), "'\(reason)' in:\n\(reasons)")
        }
        XCTAssertEqual(servedChain(port: port)?.serial, site.serial)
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status"]).stdout
        XCTAssertTrue(status.contains("fifo.crt: is a FIFO"), "the problem is on /status: \(status)")
        await harness.shutdown()
    }
}
