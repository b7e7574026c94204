import EdgeGateway
import EdgeTestSupport
import Foundation
import XCTest

/// The gateway binary as operators run it: memory, signals, logs.
final class ProcessTests: XCTestCase {
    static let pki = try! TestPKI()
    static let leaf = try! pki.issue(["localhost"])

    struct Running {
        let dir: TemporaryDirectory
        let upstream: GatewayProcessUpstream
        let gateway: GatewayProcess
        let httpsPort: Int
        let httpPort: Int
        let adminPort: Int
    }

    func start(extra: String = "") throws -> Running {
        let dir = TemporaryDirectory()
        let upstream = try GatewayProcessUpstream(port: freePort())
        let (https, http, admin) = (freePort(), freePort(), freePort())
        try dir.write("config.yaml", """
            listeners:
              - name: https
                address: "127.0.0.1:\(https)"
                tls: { certificate: \(Self.leaf.fullchain), key: \(Self.leaf.key) }
              - { name: http, address: "127.0.0.1:\(http)" }
            upstreams: { app: { backends: ["127.0.0.1:\(upstream.port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            \(extra)
            """)
        let gateway = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("gateway.log"))
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        return Running(dir: dir, upstream: upstream, gateway: gateway, httpsPort: https, httpPort: http, adminPort: admin)
    }

    func testResidentMemoryStaysFarBelowStreamedBodySizes() throws {
        let run = try start()
        defer { run.gateway.stop(); run.upstream.stop() }
        // Warm up both paths once, then take the baseline.
        _ = try Shell.run(["curl", "-sS", "--cacert", Self.pki.caPath, "https://localhost:\(run.httpsPort)/bytes?n=1000000", "-o", "/dev/null"])
        let baseline = memoryOf(pid: run.gateway.pid).rss
        let file = run.dir.file("body.bin")
        try Shell.bash("head -c 67108864 /dev/urandom > '\(file)'")
        let expected = try Shell.bash("sha256sum '\(file)' | cut -c1-64").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let upload = try Shell.run(["curl", "-sS", "--cacert", Self.pki.caPath, "--data-binary", "@\(file)", "https://localhost:\(run.httpsPort)/sha256"])
        XCTAssertEqual(upload.stdout.trimmingCharacters(in: .whitespacesAndNewlines), expected)
        let download = try Shell.bash("curl -sS --cacert '\(Self.pki.caPath)' 'https://localhost:\(run.httpsPort)/bytes?n=67108864' | wc -c")
        XCTAssertEqual(download.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "67108864")
        let peak = memoryOf(pid: run.gateway.pid).peak
        let growthMiB = Double(peak - baseline) / 1024
        print("gateway RSS baseline \(baseline) KiB, peak \(peak) KiB, growth \(growthMiB) MiB for 64 MiB bodies")
        XCTAssertLessThan(growthMiB, 16, "peak RSS grew by \(growthMiB) MiB while streaming 64 MiB bodies")
    }

    /// NIO keeps a channel's receive buffer for its next read, and that buffer only grows:
    /// before `ReceiveBuffers`, each idle connection kept its largest read: 84 KiB per TLS
    /// connection and 135 per plain one after a 256 KiB upload (release build; 20 and 6 now).
    func testIdleConnectionsDoNotKeepTheBuffersOfTheirLastUpload() throws {
        for tls in [true, false] {
            // A gateway each: memory freed by the first set of connections would hide the second's.
            let run = try start()
            defer { run.gateway.stop(); run.upstream.stop() }
            let (port, ca) = tls ? (run.httpsPort, Self.pki.caPath) : (run.httpPort, "-")
            let result = try Shell.run(["python3", repositoryRoot() + "/Tests/tools/idle_memory.py", "\(run.gateway.pid)", "\(port)", ca,
                                        "200", "262144"], timeout: 120)
            let json = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
            let perConnection = json?["kib_per_connection"] as? Double ?? .infinity
            print("\(tls ? "TLS" : "plain") listener: \(result.stdout)")
            XCTAssertEqual(json?["connections"] as? Int, 200, result.stdout + result.stderr)
            // An idle TLS connection is ~20 KiB (OpenSSL's share ~14); a kept read buffer adds 64 KiB.
            XCTAssertLessThan(perConnection, 40, "KiB per idle connection after an upload: \(result.stdout) \(result.stderr)")
        }
    }

    /// After a burst of connections the gateway gives the free pages inside its heap back
    /// to the kernel (`malloc_trim`) and counts it in its metrics; `memory_trimming: false`
    /// turns that off.
    func testFreeHeapPagesAreReturnedAfterABurstOfConnections() throws {
        for trimming in [true, false] {
            let run = try start(extra: trimming ? "" : "memory_trimming: false")
            defer { run.gateway.stop(); run.upstream.stop() }
            let burst = try Shell.run(["python3", repositoryRoot() + "/Tests/tools/idle_memory.py", "\(run.gateway.pid)", "\(run.httpsPort)",
                                       Self.pki.caPath, "300", "1024"], timeout: 120)
            XCTAssertTrue(burst.stdout.contains("\"connections\": 300"), burst.stdout + burst.stderr)
            func value(_ series: String) -> Double? {
                let text = (try? Shell.run(["curl", "-sS", "http://127.0.0.1:\(run.adminPort)/metrics"]).stdout) ?? ""
                return text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
            }
            if trimming {
                XCTAssertTrue(eventually(timeout: 10) { (value("edge_memory_trims_total") ?? 0) >= 1 }, "a trim follows the burst: \(run.gateway.log)")
                let released = value("edge_memory_trimmed_bytes_total")
                print("heap trim after 300 TLS connections: \(released ?? -1) bytes returned")
                XCTAssertNotNil(released)
            } else {
                Thread.sleep(forTimeInterval: 3)  // two quiet seconds after the burst: a trim would have run
                XCTAssertNil(value("edge_memory_trims_total"), "no trim with memory_trimming: false")
            }
        }
    }

    func testSIGTERMDrainsInFlightRequestsAndExitsZero() throws {
        let run = try start(extra: "shutdown_grace_period: 5s")
        defer { run.upstream.stop() }
        let inFlight = Process()
        inFlight.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        let out = Pipe()
        inFlight.arguments = ["-sS", "-w", " %{http_code}", "http://127.0.0.1:\(run.httpPort)/slow?ms=3000"]
        inFlight.standardOutput = out
        try inFlight.run()
        XCTAssertTrue(eventually(timeout: 5) { (metricSum("edge_upstream_active_requests", admin: run.adminPort) ?? 0) >= 1 }, "the request is in flight")
        kill(run.gateway.pid, SIGTERM)
        // New connections are refused while draining (the listener closes as the drain begins).
        XCTAssertTrue(eventually(timeout: 5) {
            (try? Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "http://127.0.0.1:\(run.httpPort)/"]).stdout) == "000"
        }, run.gateway.log)
        XCTAssertTrue(inFlight.isRunning, "refused while the request is still in flight")
        // A reload asked for while draining (the admin endpoint answers until the drain
        // ends) is refused: it would start a generation that nothing stops, and drain this
        // one a second time. It was applied (200) before.
        let reload = try Shell.run(["curl", "-sS", "-X", "POST", "-H", "X-Edge-Gateway-Reload: 1", "-w", " %{http_code}", "--max-time", "5",
                                    "http://127.0.0.1:\(run.adminPort)/reload"])
        XCTAssertEqual(reload.stdout, "shutting down: not reloaded\n 503", run.gateway.log)
        inFlight.waitUntilExit()
        let answer = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(answer.hasSuffix(" 200"), "the in-flight request finished: \(answer)")
        let status = run.gateway.stop()
        XCTAssertEqual(status, 0, run.gateway.log)
        XCTAssertTrue(run.gateway.log.contains("draining"), run.gateway.log)
        XCTAssertFalse(run.gateway.log.contains("configuration reloaded"), run.gateway.log)
    }

    func testAPortInUseStopsTheGatewayWithOneClearLine() throws {
        // Something else holds the port (another process, an old instance): the gateway names
        // the listener, the address and the reason, and exits 1 without further noise.
        let dir = TemporaryDirectory()
        let port = freePort()
        let holder = listeningSocket(port: port)
        XCTAssertGreaterThanOrEqual(holder, 0)
        defer { close(holder) }
        try dir.write("config.yaml", """
            listeners: [ { name: http, address: "127.0.0.1:\(port)" } ]
            upstreams: { app: { backends: ["127.0.0.1:9"], health_check: { kind: tcp, interval: 100ms } } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(freePort())" }
            """)
        // The health checks and watchers that had started, and the listeners' drain helpers,
        // are done with before the event loops stop. A late one is a race the process wins
        // most of the time: the start is repeated, with NIO's strict mode turning a task
        // scheduled on a stopped loop into a crash (SIGILL, status 4, not exit 1).
        for attempt in 1...100 {
            let gateway = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("log-\(attempt)"),
                                             environment: ["SWIFTNIO_STRICT": "1", "SWIFT_BACKTRACE": "enable=no"])
            // Signal 0 sends nothing: `stop` only waits (bounded) for the exit.
            let status = gateway.stop(signal: 0)
            let log = gateway.log
            XCTAssertEqual(status, 1, "attempt \(attempt): \(log)")
            XCTAssertTrue(log.contains("listener 'http': cannot bind 127.0.0.1:\(port): bind: Address already in use (errno 98)"), log)
            XCTAssertFalse(log.contains("Cannot schedule tasks"), log)
            guard status == 1, !log.contains("Cannot schedule tasks") else { break }
        }
    }

    func testAdminHealthAndReadiness() throws {
        let run = try start()
        defer { run.gateway.stop(); run.upstream.stop() }
        let health = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(run.adminPort)/healthz"])
        XCTAssertEqual(health.stdout, "ok\n")
        let ready = try Shell.run(["curl", "-sS", "-w", "%{http_code}", "-o", "/dev/null", "http://127.0.0.1:\(run.adminPort)/readyz"])
        XCTAssertEqual(ready.stdout, "200")
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(run.adminPort)/status"])
        let json = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(json?["version"] as? String, gatewayVersion)
        XCTAssertFalse(status.stdout.contains("PRIVATE KEY"))
    }

    func testJSONLogFormat() throws {
        let dir = TemporaryDirectory()
        let port = freePort()
        try dir.write("config.yaml", """
            listeners: [ { name: http, address: "127.0.0.1:\(port)" } ]
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(freePort())" }
            """)
        let gateway = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("log"), arguments: ["--log-format", "json"])
        XCTAssertTrue(gateway.waitForPort(port))
        gateway.stop()
        // Every line is a JSON object; among them, the listener's.
        let objects = try gateway.log.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertFalse(objects.contains { $0 == nil }, gateway.log)
        XCTAssertTrue(objects.contains { $0?["message"] as? String == "listening" }, gateway.log)
    }
}

/// The demo upstream as a separate process.
final class GatewayProcessUpstream {
    let process: Process
    let port: Int

    init(port: Int) throws {
        self.port = port
        self.process = Process()
        self.process.executableURL = URL(fileURLWithPath: gatewayBinary())
        self.process.arguments = ["demo-upstream", "--listen", "127.0.0.1:\(port)"]
        self.process.standardOutput = FileHandle.nullDevice
        try self.process.run()
        let probe = GatewayProcess.Probe.wait(port: port)
        precondition(probe, "demo upstream did not start")
    }

    func stop() {
        if self.process.isRunning {
            self.process.terminate()
            self.process.waitUntilExit()
        }
    }
}

/// What deploy/ ships: systemd readiness, Prometheus rules, the Kubernetes configuration.
final class DeployTests: XCTestCase {
    func testReadinessIsNotifiedOverNotifySocketOnceListenersAreBound() throws {
        let pki = try TestPKI()
        let dir = TemporaryDirectory()
        _ = try pki.issue(["localhost"], into: dir.path, name: "site")
        let https = freePort(), admin = freePort()
        try dir.write("config.yaml", """
            listeners: [ { name: https, address: "127.0.0.1:\(https)", tls: { certificate: site.crt, key: site.key } } ]
            upstreams: { app: { backends: ["127.0.0.1:\(freePort())"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        // A datagram socket playing systemd: it records what arrives and whether the port answered then.
        let socketPath = dir.file("notify.sock")
        let listener = Process()
        listener.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        listener.arguments = ["-c", """
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); s.settimeout(30)
            print("bound", flush=True)
            while True:
                msg = s.recv(4096).decode()
                c = socket.socket(); ok = c.connect_ex(("127.0.0.1", int(sys.argv[2]))) == 0; c.close()
                print(repr(msg), "port-open" if ok else "port-closed", flush=True)
                with open(sys.argv[3], "a") as seen: seen.write(msg.replace("\\n", " ") + "\\n")
                if "STOPPING=1" in msg: break
            """, socketPath, "\(https)", dir.file("notified")]
        let output = Pipe()
        listener.standardOutput = output
        try listener.run()
        XCTAssertTrue(eventually(timeout: 5) { FileManager.default.fileExists(atPath: socketPath) })
        let gateway = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("log"), environment: ["NOTIFY_SOCKET": socketPath])
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        func notified() -> [String] { ((try? String(contentsOfFile: dir.file("notified"), encoding: .utf8)) ?? "").split(separator: "\n").map(String.init) }
        XCTAssertTrue(eventually(timeout: 5) { notified().contains { $0.contains("READY=1") } }, "READY=1 before the reload: \(notified())")
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 5) { notified().filter { $0.contains("READY=1") }.count == 2 }, "READY=1 after the reload: \(notified())")
        XCTAssertEqual(gateway.stop(), 0)
        listener.waitUntilExit()
        let lines = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
        XCTAssertTrue(lines.contains { $0.contains("READY=1") && $0.contains("MAINPID=\(gateway.pid)") && $0.hasSuffix("port-open") },
                      "READY=1 only once the listener accepts: \(lines)")
        XCTAssertTrue(lines.contains { $0.contains("RELOADING=1") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains("STOPPING=1") }, "\(lines)")
    }

    func testSystemdUnitPassesSystemdAnalyzeVerify() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"), "systemd-analyze is not installed")
        let dir = TemporaryDirectory()
        // The unit names the installed binary; point it at the one just built.
        let unit = try String(contentsOfFile: repositoryRoot() + "/deploy/edge-gateway.service", encoding: .utf8)
            .replacingOccurrences(of: "/usr/bin/edge-gateway", with: gatewayBinary())
        try dir.write("edge-gateway.service", unit)
        let result = try Shell.run(["systemd-analyze", "verify", dir.file("edge-gateway.service")])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stderr.split(separator: "\n").filter { $0.contains("edge-gateway.service") }, [], "no warnings about the unit")
        XCTAssertTrue(unit.contains("Type=notify") && unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE") && unit.contains("ExecReload=/bin/kill -HUP"))
    }

    func testPrometheusAlertRulesPassPromtoolAndTheirUnitTests() throws {
        let dir = repositoryRoot() + "/deploy/prometheus"
        // doc-command: promtool check rules
        let check = try Shell.run(["promtool", "check", "rules", dir + "/edge-gateway-alerts.yaml"])
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        // doc-command: promtool test rules
        let test = try Shell.bash("cd '\(dir)' && promtool test rules edge-gateway-alerts.test.yaml")
        XCTAssertEqual(test.status, 0, test.stdout + test.stderr)
        XCTAssertTrue(test.stdout.contains("SUCCESS"), test.stdout)
    }

    func testKubernetesConfigMapHoldsAValidConfiguration() throws {
        let manifest = try String(contentsOfFile: repositoryRoot() + "/deploy/kubernetes/edge-gateway.yaml", encoding: .utf8)
        // The config.yaml block of the ConfigMap, unindented.
        let lines = manifest.components(separatedBy: "\n")
        let start = lines.firstIndex { $0.contains("config.yaml: |") }! + 1
        let body = lines[start...].prefix { $0.hasPrefix("    ") || $0.isEmpty }.map { String($0.dropFirst(4)) }.joined(separator: "\n")
        let config = try GatewayConfig.parse(yaml: body)
        XCTAssertEqual(config.listeners.map(\.name), ["https", "http"])
        XCTAssertTrue(config.admin.allowNonLoopback)
        XCTAssertEqual(config.certificates?.sources.first?.annotationsFile, "/etc/podinfo/annotations")
        XCTAssertTrue(manifest.contains("mountPath: /etc/podinfo") && manifest.contains("fieldPath: metadata.annotations"), "the annotations file is mounted")
        XCTAssertTrue(manifest.contains("# cert-manager.io/renew-before: 360h"), "shown, for cert-manager's users to set")
        XCTAssertFalse(manifest.contains("subPath:"), "Secret volumes mounted with subPath never update")
        for probe in ["path: /healthz", "path: /readyz", "prometheus.io/scrape"] {
            XCTAssertTrue(manifest.contains(probe), probe)
        }
    }
}

/// Zero-downtime restart: a new process takes the listening sockets over under load.
final class RestartTests: XCTestCase {
    func testANewProcessTakesOverTheSocketsAndTheOldOneDrainsWithoutLosingARequest() throws {
        let pki = try TestPKI()
        let dir = TemporaryDirectory()
        _ = try pki.issue(["localhost"], into: dir.path, name: "site")
        let http = freePort(), https = freePort(), admin = freePort()
        let upstream = try DemoUpstreamProcess()
        defer { upstream.stop() }
        let upstreamPort = upstream.port
        try dir.write("config.yaml", """
            listeners:
              - { name: http, address: "127.0.0.1:\(http)" }
              - { name: https, address: "127.0.0.1:\(https)", tls: { certificate: site.crt, key: site.key } }
            upstreams: { app: { backends: ["127.0.0.1:\(upstreamPort)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            handoff_socket: handoff.sock
            shutdown_grace_period: 5s
            """)
        let old = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("old.log"))
        XCTAssertTrue(old.waitForPort(admin), old.log)
        let keepAlive = try HTTPLoad(port: http, threads: 3, directory: dir)
        let fresh = try HTTPLoad(port: http, threads: 3, directory: dir, newConnectionPerRequest: true)
        XCTAssertTrue(keepAlive.waitForSuccesses(50) && fresh.waitForSuccesses(50), "the loads are under way")
        let new = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("new.log"))
        defer { new.stop() }
        guard eventually(timeout: 20, { !old.process.isRunning }) else {
            XCTFail("the old process did not drain and exit:\n\(old.log)\n---- new:\n\(new.log)")
            old.stop(signal: SIGKILL)
            return
        }
        XCTAssertEqual(old.process.terminationStatus, 0, "old:\n\(old.log.suffix(3000))\n---- new:\n\(new.log.suffix(2000))")
        XCTAssertTrue(keepAlive.waitForSuccesses(keepAlive.successes + 50) && fresh.waitForSuccesses(fresh.successes + 50), "the new process serves both loads")
        let kept = try keepAlive.finish(), opened = try fresh.finish()
        XCTAssertEqual(kept.errors.map(\.message), [], "keep-alive clients lost nothing")
        XCTAssertEqual(opened.errors.map(\.message), [], "new connections lost nothing (none refused or reset in the accept queue)")
        XCTAssertGreaterThan(kept.ok, 100)
        XCTAssertGreaterThan(opened.ok, 100)
        XCTAssertTrue(new.log.contains("took over listening sockets"), new.log)
        XCTAssertTrue(old.log.contains("handed listening sockets to a new gateway process"), old.log)
        // The new process serves every listener, the admin endpoint included.
        XCTAssertEqual(try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", pki.caPath, "https://localhost:\(https)/"]).stdout, "200")
        XCTAssertEqual(try Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/readyz"]).stdout, "ready\n")
    }

    /// The handoff socket hands out every listening socket: it is private from the moment
    /// it has a name, a process of another user that reaches it anyway is refused (checked
    /// with SO_PEERCRED) and logged, and a peer that connects and says nothing does not hold
    /// up a real takeover.
    func testTheHandoffSocketIsPrivateRefusesOtherUsersAndIgnoresSilentPeers() throws {
        let dir = TemporaryDirectory()
        let http = freePort(), admin = freePort()
        let upstream = try DemoUpstreamProcess()
        defer { upstream.stop() }
        try dir.write("config.yaml", """
            listeners: [ { name: http, address: "127.0.0.1:\(http)" } ]
            upstreams: { app: { backends: ["127.0.0.1:\(upstream.port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            handoff_socket: handoff.sock
            shutdown_grace_period: 2s
            """)
        let old = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("old.log"))
        defer { old.stop() }
        XCTAssertTrue(old.waitForPort(admin), old.log)
        let mode = try Shell.run(["stat", "-c", "%a", dir.file("handoff.sock")]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(mode, "600")
        // Another user, let in by a wider mode on purpose, is refused by its credentials.
        try Shell.run(["chmod", "666", dir.file("handoff.sock")])
        try Shell.run(["chmod", "755", dir.path])
        let intruder = try Shell.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", """
            import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect('\(dir.file("handoff.sock"))')
            try:
                s.sendall(b'LISTENERS\\n'); print(len(s.recv(4096)))
            except OSError:
                print(0)
            """])
        XCTAssertEqual(intruder.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "0", "no socket for another user: \(intruder.stderr)")
        XCTAssertTrue(eventually(timeout: 5) { old.log.contains("handoff socket: refused a connection") }, old.log)
        XCTAssertTrue(old.log.contains("runs as uid 65534"), old.log)
        // A silent peer (connected, it sends nothing and waits on its socket), then a real
        // takeover: it still happens.
        let silent = Process()
        silent.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        silent.arguments = ["-c", "import socket; s = socket.socket(socket.AF_UNIX); s.connect('\(dir.file("handoff.sock"))'); open('\(dir.file("connected"))', 'w').close(); s.recv(1)"]
        try silent.run()
        defer { silent.terminate() }
        XCTAssertTrue(eventually(timeout: 5) { FileManager.default.fileExists(atPath: dir.file("connected")) }, "the silent peer is connected")
        let new = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("new.log"))
        defer { new.stop() }
        XCTAssertTrue(eventually(timeout: 15) { !old.process.isRunning }, "the takeover happened despite the silent peer:\n\(old.log)\n---\n\(new.log)")
        XCTAssertTrue(new.log.contains("took over listening sockets"), new.log)
        XCTAssertEqual(try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(http)/"]).stdout, "200")
    }
}

/// Configuration reload: SIGHUP and POST /reload re-read the whole file without dropping anything.
final class ConfigReloadTests: XCTestCase {
    func testReloadAddsAndRemovesListenersChangesUpstreamsAndKeepsTheLastGoodConfiguration() throws {
        let dir = TemporaryDirectory()
        let first = freePort(), second = freePort(), admin = freePort()
        let upstream = try DemoUpstreamProcess()
        defer { upstream.stop() }
        let upstreamPort = upstream.port
        func write(listeners: String, upstream extra: String) throws {
            try dir.write("config.tmp", """
                listeners:
                \(listeners)
                upstreams:
                  app:
                    backends: ["127.0.0.1:\(upstreamPort)"]
                \(extra)
                routes: [ { upstream: app } ]
                admin: { address: "127.0.0.1:\(admin)" }
                """)
            try Shell.run(["mv", dir.file("config.tmp"), dir.file("config.yaml")])
        }
        func get(_ port: Int, _ path: String = "/headers") -> String {
            (try? Shell.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:\(port)\(path)"]).stdout) ?? ""
        }
        try write(listeners: "  - { name: first, address: \"127.0.0.1:\(first)\" }", upstream: "")
        let gateway = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("log"))
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        let keepAlive = try HTTPLoad(port: first, threads: 2, directory: dir)
        let fresh = try HTTPLoad(port: first, threads: 2, directory: dir, newConnectionPerRequest: true)
        XCTAssertTrue(keepAlive.waitForSuccesses(20) && fresh.waitForSuccesses(20), "the loads are under way")

        // A second listener and a changed upstream option, by SIGHUP.
        try write(listeners: "  - { name: first, address: \"127.0.0.1:\(first)\" }\n  - { name: second, address: \"127.0.0.1:\(second)\" }",
                  upstream: "    host_header: v2.internal")
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { get(second).contains("host: v2.internal") }, gateway.log)
        XCTAssertTrue(get(first).contains("host: v2.internal"), "the existing listener routes with the new upstream options")
        XCTAssertTrue(gateway.log.contains("configuration reloaded"), gateway.log)

        // An invalid file changes nothing, says why, and shows on /status.
        try dir.write("config.yaml", "listeners: []\nupstreams: { app: { backends: [\"127.0.0.1:1\"], balanse: random } }\n")
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { gateway.log.contains("configuration reload rejected") }, gateway.log)
        XCTAssertTrue(gateway.log.contains("balanse"), "the error names the key")
        let status = get(admin, "/status")
        XCTAssertTrue(status.contains("\"config_reload\":{\"time\":") && status.contains("\"result\":\"rejected\""), status)
        XCTAssertTrue(get(second).contains("host: v2.internal"), "the running configuration stays")

        // The second listener removed, by POST /reload.
        try write(listeners: "  - { name: first, address: \"127.0.0.1:\(first)\" }", upstream: "")
        let answer = try Shell.run(["curl", "-sS", "-X", "POST", "-H", "X-Edge-Gateway-Reload: 1", "http://127.0.0.1:\(admin)/reload"]).stdout
        XCTAssertTrue(answer.hasPrefix("applied: 1 listener(s)"), answer)
        // Another at once is refused (admin.reload_min_interval, 1 s): each applied reload drains every client.
        let again = try Shell.run(["curl", "-sS", "-D", "-", "-X", "POST", "-H", "X-Edge-Gateway-Reload: 1", "http://127.0.0.1:\(admin)/reload"]).stdout
        XCTAssertTrue(again.hasPrefix("HTTP/1.1 429") && again.lowercased().contains("retry-after: 1"), again)
        XCTAssertTrue(gateway.log.contains("admin reload refused: too soon after the previous one"), gateway.log)
        XCTAssertTrue(eventually(timeout: 10) { get(second).isEmpty }, "the removed listener stops accepting")
        XCTAssertFalse(get(first).contains("v2.internal"))

        let kept = try keepAlive.finish(), opened = try fresh.finish()
        XCTAssertEqual(kept.errors.map(\.message), [], "keep-alive clients lost nothing across three reloads")
        XCTAssertEqual(opened.errors.map(\.message), [], "new connections lost nothing across three reloads")
        XCTAssertGreaterThan(kept.ok + opened.ok, 200)
    }
}
