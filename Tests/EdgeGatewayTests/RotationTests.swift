import EdgeGateway
import EdgeCertificates
import EdgeTestSupport
import Foundation
import XCTest

/// Hot certificate rotation: real files, real inotify, real handshakes on loopback.
final class RotationTests: XCTestCase {
    static let pki = try! TestPKI()

    func config(sources: String, extra: String = "", watch: String = "{ debounce: 100ms, rescan_interval: 30s }") -> (Int) -> String {
        { upstreamPort in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: {}
            certificates:
              sources:
            \(sources)
              watch: \(watch)
            \(extra)
            upstreams:
              app: { backends: ["127.0.0.1:\(upstreamPort)"] }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
    }

    func copy(_ from: String, _ to: String) throws {
        try Shell.run(["cp", from, to])
    }

    // MARK: plain directory

    func testPlainPairRotatedWithMvAndCpInPlaceWhileKeepAliveContinues() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let v1 = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(sources: "    - directory: certs"))
        let port = harness.port("https")
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), v1.serial)

        // A keep-alive connection opened before the rotation keeps working after it.
        let load = try TLSLoad(port: port, caFile: Self.pki.caPath, directory: dir)
        XCTAssertTrue(load.waitForSuccesses(), "the keep-alive connection and the handshakes are under way")

        // mv: key then certificate renamed in (two renames, one debounce).
        let staging = dir.file("staging")
        let v2 = try Self.pki.issue(["localhost"], into: staging, name: "v2")
        try Shell.run(["mv", v2.key, certs + "/site.key"])
        try Shell.run(["mv", v2.fullchain, certs + "/site.crt"])
        XCTAssertTrue(eventually { servedSerial(port: port, serverName: "localhost") == v2.serial }, "mv rotation served")

        // cp in place (CLOSE_WRITE on existing files).
        let v3 = try Self.pki.issue(["localhost"], into: staging, name: "v3")
        try copy(v3.fullchain, certs + "/site.crt")
        try copy(v3.key, certs + "/site.key")
        XCTAssertTrue(eventually { servedSerial(port: port, serverName: "localhost") == v3.serial }, "cp rotation served")

        let stats = try load.finish()
        XCTAssertEqual(stats.keepAliveErrors, [], "\(stats)")
        XCTAssertEqual(stats.handshakeErrors, [], "\(stats)")
        XCTAssertGreaterThan(stats.keepAliveOK, 10)
        await harness.shutdown()
    }

    // MARK: certbot

    /// Lays out a certbot lineage version `n` exactly as certbot does.
    func certbotWrite(_ live: String, _ name: String, version n: Int, leaf: TestPKI.Leaf) throws {
        let archive = (live as NSString).deletingLastPathComponent + "/archive/" + name
        try FileManager.default.createDirectory(atPath: archive, withIntermediateDirectories: true)
        try copy(leaf.certificate, "\(archive)/cert\(n).pem")
        try copy(Self.pki.intermediatePath, "\(archive)/chain\(n).pem")
        try copy(leaf.fullchain, "\(archive)/fullchain\(n).pem")
        try copy(leaf.key, "\(archive)/privkey\(n).pem")
    }

    func link(_ target: String, _ path: String) throws {
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: target)
    }

    /// A certbot lineage's first version: `live/<name>/`, the archive files, the four links.
    func certbotIssue(_ live: String, _ name: String, leaf: TestPKI.Leaf) throws {
        try FileManager.default.createDirectory(atPath: live + "/" + name, withIntermediateDirectories: true)
        try certbotWrite(live, name, version: 1, leaf: leaf)
        for kind in ["cert", "chain", "fullchain", "privkey"] {
            try link("../../archive/\(name)/\(kind)1.pem", "\(live)/\(name)/\(kind).pem")
        }
    }

    /// How a test waits for the gateway after a file step.
    enum Wait {
        case none
        /// Until a reload (an early one counts) that began after the watcher read the step.
        case reload(CertificateStore)
        /// Until a settled reload (after the debounce) that began after the watcher read the step.
        case settledReload(CertificateStore)
    }

    /// Performs `step`, then waits as `wait` says.
    func perform(_ wait: Wait, _ what: String, _ step: () throws -> Void) rethrows {
        switch wait {
        case .none:
            try step()
        case .reload(let store):
            let events = store.fileEventsRead
            try step()
            XCTAssertTrue(eventually(timeout: 5) { store.eventsCoveredByReload > events }, "a reload after the watcher read \(what)")
        case .settledReload(let store):
            let events = store.fileEventsRead
            try step()
            XCTAssertTrue(eventually(timeout: 5) { store.eventsCoveredBySettledReload > events }, "a settled reload after the watcher read \(what)")
        }
    }

    /// certbot's renewal to `version`, in certbot's order: new archive files, `previous_*` links,
    /// each live link replaced (unlink, then symlink; after each step the test waits as
    /// `wait` says, so the gateway reads every half-renewed state certbot passes through),
    /// `beforeCleanup`, then the `previous_*` links removed: the end of the renewal.
    func certbotRenew(_ live: String, _ name: String, version: Int, leaf: TestPKI.Leaf, waiting wait: Wait = .none,
                      beforeCleanup: () throws -> Void = {}) throws {
        try certbotWrite(live, name, version: version, leaf: leaf)
        for kind in ["cert", "privkey", "chain", "fullchain"] {
            try link("../../archive/\(name)/\(kind)\(version - 1).pem", "\(live)/\(name)/previous_\(kind).pem")
        }
        for kind in ["cert", "privkey", "chain", "fullchain"] {
            try perform(wait, "\(kind).pem removed") { try FileManager.default.removeItem(atPath: "\(live)/\(name)/\(kind).pem") }
            try perform(wait, "\(kind).pem linked") { try link("../../archive/\(name)/\(kind)\(version).pem", "\(live)/\(name)/\(kind).pem") }
        }
        try beforeCleanup()
        for kind in ["cert", "privkey", "chain", "fullchain"] {
            try FileManager.default.removeItem(atPath: "\(live)/\(name)/previous_\(kind).pem")
        }
    }

    /// A file rewritten every 20 ms beside the certificates (an application's log in the
    /// watched parent directory) does not hold the settled reload off: only certificate
    /// files and directories start the quiet time. Before, each of its events restarted it,
    /// and with early reloads off nothing was published until the periodic rescan (30 s).
    func testABusyFileBesideTheCertificatesDoesNotHoldOffTheSettledReload() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let v1 = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(
            sources: "    - directory: certs", watch: "{ debounce: 100ms, rescan_interval: 30s, immediate: false }"))
        let port = harness.port("https")
        let store = harness.gateway.sharedStore!
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), v1.serial)
        // The busy file: a line appended, and the file closed, at every look the test takes
        // while it waits (every 20 ms or so: five per debounce).
        let log = dir.file("app.log")
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        var appended = 0
        func append() {
            guard let handle = FileHandle(forWritingAtPath: log) else { return XCTFail("cannot open \(log)") }
            handle.seekToEndOfFile()
            handle.write(Data("busy\n".utf8))
            handle.closeFile()
            appended += 1
        }
        let v2 = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "v2")
        let events = store.fileEventsRead
        try Shell.run(["mv", v2.key, certs + "/site.key"])
        try Shell.run(["mv", v2.fullchain, certs + "/site.crt"])
        let before = appended
        XCTAssertTrue(eventually(timeout: 5, interval: 0.02) {
            append()
            return store.eventsCoveredBySettledReload > events
        }, "a settled reload after the rename, with the log written \(appended - before) times meanwhile")
        XCTAssertGreaterThan(appended - before, 2, "the log was busy while the reload was awaited")
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), v2.serial, "published by the settled reload")
        await harness.shutdown()
    }

    /// Certificates reached through a link of another name in a watched directory (a deploy
    /// that switches `active -> releases/2`, as Capistrano does) are re-read after the
    /// switch: the link's events start the quiet time even though its name is no
    /// certificate's.
    func testALinkSwitchedOnTheCertificatesPathIsReadAfterTheDebounce() async throws {
        let dir = TemporaryDirectory()
        let v1 = try Self.pki.issue(["localhost"], into: dir.file("releases/1"), name: "site")
        let v2 = try Self.pki.issue(["localhost"], into: dir.file("releases/2"), name: "site")
        try FileManager.default.createDirectory(atPath: dir.file("certs"), withIntermediateDirectories: true)
        try Shell.bash("cd '\(dir.path)' && ln -s releases/1 active && ln -s ../active/site.crt certs/site.crt && ln -s ../active/site.key certs/site.key")
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(
            sources: "    - directory: certs", watch: "{ debounce: 100ms, rescan_interval: 30s, immediate: false }"))
        let port = harness.port("https")
        let store = harness.gateway.sharedStore!
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), v1.serial)
        let events = store.fileEventsRead
        try Shell.bash("cd '\(dir.path)' && ln -s releases/2 active.next && mv -T active.next active")
        XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: port, serverName: "localhost") == v2.serial },
                      "the switched link is read by a settled reload, not the rescan 30 s later")
        XCTAssertEqual(store.fileEventsRead, events, "a link of another name is not a certificate file's event")
        await harness.shutdown()
    }

    func testCertbotRenewalSequenceNeverServesAMismatchedPair() async throws {
        let dir = TemporaryDirectory()
        let live = dir.file("letsencrypt/live")
        let v1 = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "v1")
        try certbotIssue(live, "example", leaf: v1)
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(sources: "    - certbot: letsencrypt/live"))
        let port = harness.port("https")
        let store = harness.gateway.sharedStore!
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), v1.serial)

        let load = try TLSLoad(port: port, caFile: Self.pki.caPath, directory: dir)
        XCTAssertTrue(load.waitForSuccesses(), "the keep-alive connection and the handshakes are under way")

        for version in 2...4 {
            let leaf = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "v\(version)")
            // A settled reload (100 ms debounce) between the link replacements.
            try certbotRenew(live, "example", version: version, leaf: leaf, waiting: .settledReload(store))
            XCTAssertTrue(eventually { servedSerial(port: port, serverName: "localhost") == leaf.serial }, "renewal \(version) served")
        }

        // First issuance of a new lineage: the links appear before their targets.
        let fresh = try Self.pki.issue(["a.example.test"], into: dir.file("staging"), name: "fresh")
        // Watched from its creation on, so that the watcher sees each link appear.
        try perform(.reload(store), "the new lineage directory") {
            try FileManager.default.createDirectory(atPath: live + "/fresh", withIntermediateDirectories: true)
        }
        for kind in ["cert", "chain", "fullchain", "privkey"] {
            try perform(.reload(store), "the dangling \(kind).pem") { try link("../../archive/fresh/\(kind)1.pem", "\(live)/fresh/\(kind).pem") }
        }
        try certbotWrite(live, "fresh", version: 1, leaf: fresh)
        XCTAssertTrue(eventually { servedSerial(port: port, serverName: "a.example.test") == fresh.serial }, "first issuance served by SNI")

        let stats = try load.finish()
        XCTAssertEqual(stats.handshakeErrors, [], "a mismatched pair would fail handshakes: \(stats)")
        XCTAssertEqual(stats.keepAliveErrors, [], "\(stats)")
        XCTAssertGreaterThan(stats.handshakesOK, 5)
        let problems = harness.gateway.sharedStore!.problems
        XCTAssertEqual(problems.map(\.name), [], "a renewal in progress is not an error: \(problems)")
        await harness.shutdown()
    }

    // MARK: served at once

    /// With a debounce of an hour only the early reload can publish: a file renamed in,
    /// copied in place or a Secret's `..data` swapped is served at the next handshake; a
    /// half-done change (a key without its certificate, certbot between its links, a
    /// lineage's files deleted) is neither served, nor reported, nor removed yet.
    func testCompleteChangesAreServedWithoutWaitingForTheDebounce() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let v1 = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let volume = dir.file("tls")
        let k1 = try Self.pki.issue(["k8s.example.test"], into: volume + "/..2026_11_28_01_00_00.1", name: "tls")
        try Shell.bash("cd '\(volume)' && ln -s ..2026_11_28_01_00_00.1 ..data && ln -s ..data/tls.crt tls.crt && ln -s ..data/tls.key tls.key")
        let live = dir.file("letsencrypt/live")
        let c1 = try Self.pki.issue(["cb.example.test"], into: dir.file("staging"), name: "c1")
        try certbotIssue(live, "example", leaf: c1)
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(
            sources: "    - directory: certs\n    - kubernetes: tls\n    - certbot: letsencrypt/live",
            watch: "{ debounce: 1h, rescan_interval: 1h }"))
        let port = harness.port("https")
        let store = harness.gateway.sharedStore!
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), v1.serial)

        // A new key alone does not match the certificate: kept quiet, the old pair served.
        let v2 = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "v2")
        try perform(.reload(store), "the key renamed in") { try Shell.run(["mv", v2.key, certs + "/site.key"]) }
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), v1.serial, "a key without its certificate")
        XCTAssertEqual(store.problems.map(\.name), [], "not an error before the change has settled")
        try Shell.run(["mv", v2.fullchain, certs + "/site.crt"])
        XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: port, serverName: "localhost") == v2.serial }, "renamed in: served")

        // cp in place: IN_CLOSE_WRITE on each file.
        let v3 = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "v3")
        try copy(v3.fullchain, certs + "/site.crt")
        try copy(v3.key, certs + "/site.key")
        XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: port, serverName: "localhost") == v3.serial }, "copied in place: served")

        // Kubernetes: the ..data rename.
        let k2 = try Self.pki.issue(["k8s.example.test"], into: volume + "/..2026_11_28_02_00_00.2", name: "tls")
        XCTAssertEqual(servedSerial(port: port, serverName: "k8s.example.test"), k1.serial)
        try Shell.bash("cd '\(volume)' && ln -s ..2026_11_28_02_00_00.2 ..data_tmp && mv -T ..data_tmp ..data")
        XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: port, serverName: "k8s.example.test") == k2.serial }, "..data swap: served")

        // certbot: busy while previous_* links exist, served once the last one is removed.
        let c2 = try Self.pki.issue(["cb.example.test"], into: dir.file("staging"), name: "c2")
        try certbotRenew(live, "example", version: 2, leaf: c2, waiting: .reload(store)) {
            XCTAssertEqual(servedSerial(port: port, serverName: "cb.example.test"), c1.serial, "certbot between its links")
        }
        XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: port, serverName: "cb.example.test") == c2.serial }, "certbot renewal: served")

        // Deleted files: the lineage stays until the change has settled.
        try perform(.reload(store), "the key deleted") { try FileManager.default.removeItem(atPath: certs + "/site.key") }
        try perform(.reload(store), "the certificate deleted") { try FileManager.default.removeItem(atPath: certs + "/site.crt") }
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), v3.serial, "not removed before the debounce")
        XCTAssertEqual(store.problems.map(\.name), [], "\(store.problems)")
        await harness.shutdown()
    }

    // MARK: Kubernetes

    func testKubernetesDataSwap() async throws {
        let dir = TemporaryDirectory()
        let volume = dir.file("tls")
        let v1 = try Self.pki.issue(["localhost"], into: volume + "/..2026_11_27_10_00_00.1", name: "tls")
        try Shell.bash("""
            cd '\(volume)/..2026_11_27_10_00_00.1' && mv tls.crt tls.crt.x && mv tls.key tls.key.x && mv tls.crt.x tls.crt && mv tls.key.x tls.key
            cd '\(volume)' && ln -s ..2026_11_27_10_00_00.1 ..data && ln -s ..data/tls.crt tls.crt && ln -s ..data/tls.key tls.key
            """)
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(sources: "    - kubernetes: tls"))
        let port = harness.port("https")
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), v1.serial)
        let v2 = try Self.pki.issue(["localhost"], into: volume + "/..2026_11_27_11_00_00.2", name: "tls")
        // kubelet: new timestamped directory, ..data_tmp link, rename over ..data, old directory removed.
        try Shell.bash("cd '\(volume)' && ln -s ..2026_11_27_11_00_00.2 ..data_tmp && mv -T ..data_tmp ..data && rm -rf ..2026_11_27_10_00_00.1")
        XCTAssertTrue(eventually { servedSerial(port: port, serverName: "localhost") == v2.serial })
        await harness.shutdown()
    }

    // MARK: bad input

    func testBadNewVersionsKeepTheLastGoodCertificate() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let good = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let other = try Self.pki.issue(["other"], into: dir.file("staging"), name: "other")
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(sources: "    - directory: certs"))
        let port = harness.port("https")
        let store = harness.gateway.sharedStore!
        func assertStillGood(_ what: String) {
            // Give the watcher a debounce, then check nothing changed.
            XCTAssertTrue(eventually(timeout: 5) { store.problems.contains { $0.name == "site" } }, "\(what): problem recorded")
            XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), good.serial, what)
            XCTAssertTrue(store.problems.first { $0.name == "site" }?.servingPrevious ?? false, what)
        }
        let goodKey = try String(contentsOfFile: good.key, encoding: .utf8)
        let goodCert = try String(contentsOfFile: good.fullchain, encoding: .utf8)
        func restore() {
            try? goodKey.write(toFile: certs + "/site.key", atomically: false, encoding: .utf8)
            try? goodCert.write(toFile: certs + "/site.crt", atomically: false, encoding: .utf8)
            XCTAssertTrue(eventually(timeout: 5) { !store.problems.contains { $0.name == "site" } }, "recovered")
        }

        try copy(other.key, certs + "/site.key")
        assertStillGood("mismatched key")
        XCTAssertTrue(store.problems.first?.error.contains("does not match") ?? false, "\(store.problems)")
        restore()

        try "garbage\n".write(toFile: certs + "/site.crt", atomically: false, encoding: .utf8)
        assertStillGood("garbage PEM")
        restore()

        try "".write(toFile: certs + "/site.crt", atomically: false, encoding: .utf8)
        assertStillGood("empty file")
        restore()

        // A directory replaced by a file, then deleted: the set keeps serving.
        try Shell.run(["mv", certs, dir.file("certs.saved")])
        try "not a directory".write(toFile: certs, atomically: false, encoding: .utf8)
        XCTAssertTrue(eventually(timeout: 5) { store.problems.contains { $0.error.contains("not a directory") } }, "\(store.problems)")
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), good.serial)
        try FileManager.default.removeItem(atPath: certs)
        XCTAssertTrue(eventually(timeout: 5) { store.problems.contains { $0.error.contains("no such directory") } }, "\(store.problems)")
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), good.serial)
        // The directory comes back with a new pair: watched again and served.
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        let back = try Self.pki.issue(["localhost"], into: certs, name: "site")
        XCTAssertTrue(eventually { servedSerial(port: port, serverName: "localhost") == back.serial }, "recreated directory is watched again")
        await harness.shutdown()
    }

    func testPermissionDeniedKeepsServingAsNonRootGateway() throws {
        guard getuid() == 0, FileManager.default.fileExists(atPath: "/usr/bin/setpriv") else {
            throw XCTSkip("needs root to start the gateway as nobody")
        }
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let good = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let (https, admin) = (freePort(), freePort())
        try dir.write("config.yaml", """
            listeners: [ { name: https, address: "127.0.0.1:\(https)", tls: {} } ]
            certificates: { sources: [ { directory: certs } ], watch: { debounce: 100ms } }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        try Shell.run(["chmod", "-R", "a+rX", dir.path])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", gatewayBinary(), "run", "-c", dir.file("config.yaml")]
        let log = dir.file("log")
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: log)
        try process.run()
        defer { process.terminate(); process.waitUntilExit() }
        guard GatewayProcess.Probe.wait(port: https, alive: { process.isRunning }) else {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if text.contains("Permission denied") && text.contains("edge-gateway") { throw XCTSkip("the build directory is not readable by nobody") }
            return XCTFail("gateway did not start as nobody: \(text)")
        }
        try Shell.run(["chmod", "000", certs + "/site.key"])
        XCTAssertTrue(eventually(timeout: 5) {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("Permission denied")
        }, "the reason is logged")
        XCTAssertEqual(servedSerial(port: https, serverName: "localhost"), good.serial)
        XCTAssertTrue(process.isRunning)
    }

    func testHundredRotationsUnderLoadFailNothing() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        // Two versions to alternate between, as combined PEMs renamed in atomically.
        var versions: [(path: String, serial: String)] = []
        for i in 0..<2 {
            let leaf = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "v\(i)")
            let combined = dir.file("staging/v\(i).pem")
            try Shell.bash("cat '\(leaf.fullchain)' '\(leaf.key)' > '\(combined)'")
            versions.append((combined, leaf.serial))
        }
        try Shell.run(["cp", versions[0].path, certs + "/site.pem"])
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners: [ { name: https, address: "127.0.0.1:0", tls: {} } ]
            certificates: { sources: [ { directory: certs } ], watch: { debounce: 30ms } }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let port = harness.port("https")
        let load = try TLSLoad(port: port, caFile: Self.pki.caPath, directory: dir)
        var stale = 0
        for n in 1...100 {
            let version = versions[n % 2]
            try Shell.run(["cp", version.path, certs + "/.site.pem.tmp"])
            try Shell.run(["mv", certs + "/.site.pem.tmp", certs + "/site.pem"])
            XCTAssertTrue(eventually(timeout: 5, interval: 0.01) { servedSerial(port: port, serverName: "localhost") == version.serial }, "rotation \(n) settles")
            // Once settled, every new handshake serves the new serial.
            if servedSerial(port: port, serverName: "localhost") != version.serial { stale += 1 }
        }
        XCTAssertEqual(stale, 0)
        let stats = try load.finish()
        XCTAssertEqual(stats.keepAliveErrors, [], "\(stats)")
        XCTAssertEqual(stats.handshakeErrors, [], "\(stats)")
        XCTAssertGreaterThan(stats.keepAliveOK, 100)
        XCTAssertGreaterThan(stats.handshakesOK, 50)
        XCTAssertEqual(stats.certificates.count, 2, "both versions were served during the run")
        XCTAssertGreaterThanOrEqual(harness.gateway.sharedStore!.snapshot.generation, 101)
        await harness.shutdown()
    }

    func testExpiredNewVersionDoesNotReplaceAValidOne() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let now = Int64(Date().timeIntervalSince1970)
        let good = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(sources: "    - directory: certs"))
        let port = harness.port("https")
        let store = harness.gateway.sharedStore!
        let expired = try Self.pki.issue(["localhost"], notBefore: now - 10 * 86_400, notAfter: now - 60, into: dir.file("staging"), name: "expired")
        try Shell.run(["mv", expired.key, certs + "/site.key"])
        try Shell.run(["mv", expired.fullchain, certs + "/site.crt"])
        XCTAssertTrue(eventually(timeout: 5) { store.problems.contains { $0.name == "site" && $0.error.contains("is expired; keeping the valid one") } }, "\(store.problems)")
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), good.serial)
        let future = try Self.pki.issue(["localhost"], notBefore: now + 86_400, notAfter: now + 30 * 86_400, into: dir.file("staging"), name: "future")
        try Shell.run(["mv", future.key, certs + "/site.key"])
        try Shell.run(["mv", future.fullchain, certs + "/site.crt"])
        XCTAssertTrue(eventually(timeout: 5) { store.problems.contains { $0.error.contains("not yet valid") } }, "\(store.problems)")
        XCTAssertEqual(servedSerial(port: port, serverName: "localhost"), good.serial)
        await harness.shutdown()
    }

    /// The gateway binary serving `dir/certs` on a free port; returns it once its admin port answers.
    func startProcess(_ dir: TemporaryDirectory, watch: String) throws -> (GatewayProcess, https: Int, admin: Int) {
        let (https, admin) = (freePort(), freePort())
        try dir.write("config.yaml", """
            listeners: [ { name: https, address: "127.0.0.1:\(https)", tls: {} } ]
            certificates: { sources: [ { directory: certs } ], watch: \(watch) }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        let gateway = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("log"))
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        return (gateway, https, admin)
    }

    /// `edge_certificate_watch_events_total` on the admin endpoint at `admin` (-1: none).
    func watchEvents(admin: Int) -> Int {
        metricSum("edge_certificate_watch_events_total", admin: admin).map { Int($0) } ?? -1
    }

    func testSIGHUPReloadsAtOnce() throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        _ = try Self.pki.issue(["localhost"], into: certs, name: "site")
        // A debounce of an hour: only the signal can publish the new pair in time.
        let (gateway, https, admin) = try startProcess(dir, watch: "{ debounce: 1h, rescan_interval: 1h, immediate: false }")
        defer { gateway.stop() }
        XCTAssertEqual(watchEvents(admin: admin), 0, "the metric is there before any event")
        let next = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "next")
        try Shell.run(["mv", next.key, certs + "/site.key"])
        try Shell.run(["mv", next.fullchain, certs + "/site.crt"])
        XCTAssertTrue(eventually(timeout: 5) { watchEvents(admin: admin) >= 2 }, "the watcher read both renames: \(watchEvents(admin: admin))")
        XCTAssertNotEqual(servedSerial(port: https, serverName: "localhost"), next.serial, "not yet: the debounce is an hour")
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: https, serverName: "localhost") == next.serial }, gateway.log)
        XCTAssertTrue(gateway.log.contains("reason=SIGHUP"), gateway.log)
    }

    /// `edge_certificate_reloads_total` goes on counting after a configuration reload,
    /// whose new store starts its own counts at 0 (they were not counted until they passed
    /// the old store's: a rejection alert could miss what followed a SIGHUP).
    func testReloadCountsGoOnAfterAConfigurationReload() throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        _ = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let (gateway, https, admin) = try startProcess(dir, watch: "{ debounce: 100ms }")
        defer { gateway.stop() }
        func published() -> Double { metricSum(#"edge_certificate_reloads_total{result="published"}"#, admin: admin) ?? 0 }
        func rotate(_ name: String) throws {
            let next = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: name)
            try Shell.run(["mv", next.key, certs + "/site.key"])
            try Shell.run(["mv", next.fullchain, certs + "/site.crt"])
            XCTAssertTrue(eventually(timeout: 5) { servedSerial(port: https, serverName: "localhost") == next.serial }, gateway.log)
        }
        try rotate("v2")
        try rotate("v3")
        XCTAssertTrue(eventually(timeout: 5) { published() >= 2 }, "two publications: \(published())")
        let before = published()
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { gateway.log.contains("configuration reloaded") }, gateway.log)
        try rotate("v4")
        XCTAssertTrue(eventually(timeout: 5) { published() > before }, "the publication after the configuration reload is counted: \(published()) after \(before)")
    }

    func testANameClaimedTwiceGoesToTheLongerLivedCertificateAndIsLogged() throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        _ = try Self.pki.issue(["shared.test"], days: 30, into: certs, name: "a-short")
        let long = try Self.pki.issue(["shared.test"], days: 90, into: certs, name: "b-long")
        let (gateway, https, _) = try startProcess(dir, watch: "{}")
        defer { gateway.stop() }
        XCTAssertEqual(servedSerial(port: https, serverName: "shared.test"), long.serial)
        XCTAssertTrue(gateway.log.contains("server name claimed by several certificates"), gateway.log)
        XCTAssertTrue(gateway.log.contains("serving=b-long"), gateway.log)
    }

    // MARK: selection and resumption

    func testExactWildcardDefaultAndStrictSNISelection() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let exact = try Self.pki.issue(["a.example.test"], into: certs, name: "a")
        let wildcard = try Self.pki.issue(["*.b.example.test"], into: certs, name: "b")
        let fallback = try Self.pki.issue(["localhost"], into: certs, name: "localhost")
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(sources: "    - directory: certs", extra: "  default: localhost"))
        let port = harness.port("https")
        XCTAssertEqual(servedSerial(port: port, serverName: "a.example.test"), exact.serial)
        XCTAssertEqual(servedSerial(port: port, serverName: "x.b.example.test"), wildcard.serial)
        XCTAssertEqual(servedSerial(port: port, serverName: "y.x.b.example.test"), fallback.serial, "a wildcard covers one label")
        XCTAssertEqual(servedSerial(port: port, serverName: "unknown.test"), fallback.serial)
        XCTAssertEqual(servedSerial(port: port, serverName: nil), fallback.serial)
        await harness.shutdown()

        let strict = try await GatewayHarness.start(directory: dir, yaml: config(sources: "    - directory: certs", extra: "  default: localhost\n  strict_sni: true"))
        let strictPort = strict.port("https")
        XCTAssertEqual(servedSerial(port: strictPort, serverName: "a.example.test"), exact.serial)
        let refused = try Shell.run(["openssl", "s_client", "-connect", "127.0.0.1:\(strictPort)", "-servername", "unknown.test"], input: "", timeout: 10)
        XCTAssertTrue(refused.stderr.contains("unrecognized name"), refused.stderr)
        await strict.shutdown()
    }

    func testSessionsResumeAcrossARotation() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        _ = try Self.pki.issue(["localhost"], into: certs, name: "site")
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(sources: "    - directory: certs"))
        let port = harness.port("https")
        for version in ["-tls1_3", "-tls1_2"] {
            let session = dir.file("session\(version)")
            let first = try sClient(port: port, "-servername localhost \(version)", sessionOut: session)
            XCTAssertTrue(first.contains("New,"), first)
            let next = try Self.pki.issue(["localhost"], into: dir.file("staging"), name: "n\(version)")
            try Shell.run(["mv", next.key, certs + "/site.key"])
            try Shell.run(["mv", next.fullchain, certs + "/site.crt"])
            XCTAssertTrue(eventually { servedSerial(port: port, serverName: "localhost") == next.serial })
            let resumed = try sClient(port: port, "-servername localhost \(version)", sessionIn: session)
            XCTAssertTrue(resumed.contains("Reused,"), "\(version) resumed after rotation: \(resumed.prefix(600))")
        }
        await harness.shutdown()
    }

    func testECDSAAndRSALineagesForOneNameServeWhatTheClientSupports() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let ecdsa = try Self.pki.issue(["localhost"], into: certs, name: "site-ecdsa")
        let rsa = try Self.pki.issue(["localhost"], rsa: true, into: certs, name: "site-rsa")
        let harness = try await GatewayHarness.start(directory: dir, yaml: config(sources: "    - directory: certs"))
        let port = harness.port("https")
        let cases: [(String, String)] = [
            ("-tls1_3 -sigalgs ecdsa_secp256r1_sha256:rsa_pss_rsae_sha256", ecdsa.serial),
            ("-tls1_3 -sigalgs rsa_pss_rsae_sha256", rsa.serial),
            ("-tls1_2 -sigalgs ECDSA+SHA256:RSA+SHA256", ecdsa.serial),
            ("-tls1_2 -sigalgs RSA+SHA256 -cipher ECDHE-RSA-AES128-GCM-SHA256", rsa.serial),
        ]
        for (flags, serial) in cases {
            XCTAssertEqual(servedSerial(port: port, serverName: "localhost", extra: flags.split(separator: " ").map(String.init)), serial, flags)
        }
        XCTAssertFalse(harness.logs.contains("server name claimed by several certificates"), "a dual pair is not a conflict")
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/certificates"]).stdout
        XCTAssertEqual(status.components(separatedBy: "\"server_names\":[\"localhost\"]").count - 1, 2, "both lineages serve localhost: \(status.prefix(300))")
        await harness.shutdown()
    }
}
