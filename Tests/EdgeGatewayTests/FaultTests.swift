import EdgeTestSupport
import Foundation
import XCTest

/// A gateway process with one plain listener (`http`) in front of a demo upstream, and
/// its admin endpoint; `upstream` adds keys to the upstream group, `more` top-level keys.
func plainGateway(_ dir: TemporaryDirectory, upstream extra: String = "", more: String = "") throws
    -> (gateway: GatewayProcess, upstream: DemoUpstreamProcess, http: Int, admin: Int) {
    let (upstream, http, admin) = try plainGatewayConfig(dir, upstream: extra, more: more)
    return (try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("log")), upstream, http, admin)
}

/// plainGateway's configuration (dir/config.yaml) and upstream, for a gateway started otherwise.
func plainGatewayConfig(_ dir: TemporaryDirectory, upstream extra: String = "", more: String = "") throws
    -> (upstream: DemoUpstreamProcess, http: Int, admin: Int) {
    let http = freePort(), admin = freePort()
    let upstream = try DemoUpstreamProcess()
    try dir.write("config.yaml", """
        listeners: [ { name: http, address: "127.0.0.1:\(http)" } ]
        upstreams: { app: { backends: ["127.0.0.1:\(upstream.port)"]\(extra.isEmpty ? "" : " " + extra) } }
        routes: [ { upstream: app } ]
        admin: { address: "127.0.0.1:\(admin)" }
        \(more)
        """)
    return (upstream, http, admin)
}

/// Faults and overload (#34): what the gateway does when the kernel says no.
final class FaultTests: XCTestCase {
    /// CPU ticks (user + system, 1/100 s) the process has used.
    func cpuTicks(_ pid: Int32) -> Int {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let end = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)  // utime, stime (fields 14 and 15)
    }

    func openDescriptors(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0
    }

    /// The open-files limit is raised to the hard one at start and logged; the hard one is
    /// what an operator raises (docs/operations.md: `LimitNOFILE=` or `ulimit -Hn`).
    func testTheOpenFilesLimitIsRaisedToTheHardOne() throws {
        let dir = TemporaryDirectory()
        let (upstream, http, _) = try plainGatewayConfig(dir)
        defer { upstream.stop() }
        // doc-command: ulimit -Hn
        let gateway = try GatewayProcess(commandLine: ["/bin/bash", "-c", "ulimit -Sn 1024 && ulimit -Hn 4096 && exec \"$0\" run -c \"$1\"",
                                                       gatewayBinary(), dir.file("config.yaml")], logPath: dir.file("log"))
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(http), gateway.log)
        XCTAssertTrue(gateway.log.contains("open files limit hard=4096 limit=4096 was=1024"), gateway.log)
        let limits = try String(contentsOfFile: "/proc/\(gateway.pid)/limits", encoding: .utf8)
        XCTAssertTrue(limits.split(separator: "\n").contains { $0.hasPrefix("Max open files") && $0.split(separator: " ").filter { $0 == "4096" }.count == 2 }, limits)
    }

    /// Out of descriptors, the listener backs off instead of spinning on accept (one core
    /// at 100 % and no log line before), says so at most once a second with the limit,
    /// counts it, and serves again as soon as descriptors are free.
    func testOutOfDescriptorsTheListenerBacksOffLogsAndRecovers() throws {
        let dir = TemporaryDirectory()
        let (gateway, upstream, http, admin) = try plainGateway(dir, more: "workers: 1\n")
        defer { upstream.stop() }
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(http), gateway.log)
        XCTAssertTrue(gateway.log.contains("open files limit"), gateway.log)
        // Room for ten more descriptors, then forty clients.
        let limit = openDescriptors(gateway.pid) + 10
        try Shell.run(["prlimit", "--pid", "\(gateway.pid)", "--nofile=\(limit):\(limit)"])
        var clients: [Int32] = []
        defer { clients.forEach { close($0) } }
        for _ in 0..<40 { clients.append(connectedSocket(port: http)) }
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("cannot accept connections") }, gateway.log)
        let before = cpuTicks(gateway.pid)
        pause(2)
        let used = cpuTicks(gateway.pid) - before
        XCTAssertLessThan(used, 40, "the gateway used \(used) of 200 ticks in 2 s while out of descriptors (an accept loop spinning)")
        let lines = gateway.log.components(separatedBy: "\n").filter { $0.contains("cannot accept connections") }
        XCTAssertLessThanOrEqual(lines.count, 6, "rate-limited: \(lines.count) lines")
        XCTAssertTrue(lines.first?.contains("Too many open files") ?? false, lines.first ?? "")
        XCTAssertTrue(lines.first?.contains("open_files_limit=\(limit)") ?? false, lines.first ?? "")
        XCTAssertTrue(lines.first?.contains("open_client_connections=") ?? false, lines.first ?? "")
        // Descriptors freed: served again within a second or so.
        clients.forEach { close($0) }
        clients = []
        let freed = Date()
        XCTAssertTrue(eventually(timeout: 5, interval: 0.05) {
            (try? Shell.run(["curl", "-sS", "--max-time", "1", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(http)/"]).stdout) == "200"
        }, gateway.log)
        let recovery = Date().timeIntervalSince(freed)
        XCTAssertLessThan(recovery, 3, "recovered after \(recovery) s")
        let metrics = try Shell.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:\(admin)/metrics"]).stdout
        XCTAssertTrue(metrics.contains(#"edge_accept_errors_total{listener="http"}"#) && !metrics.contains(#"edge_accept_errors_total{listener="http"} 0"#), metrics)
    }

    /// The gateway's own lack of descriptors is not the backend's failure: requests that
    /// could not open an upstream connection get 503, the backend is neither charged nor
    /// ejected, and the first request after descriptors are freed is served (a 0.2 s
    /// spike ejected the backend and gave every client 503 for fail_timeout).
    func testLocalDescriptorExhaustionNeverEjectsABackend() throws {
        let dir = TemporaryDirectory()
        let (gateway, upstream, http, admin) = try plainGateway(dir, upstream: ", passive_health: { max_fails: 1, fail_timeout: 30s }", more: "workers: 1\n")
        defer { upstream.stop() }
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(http), gateway.log)
        // A client connected before the limit; then the limit, and idle clients to reach it.
        let client = connectedSocket(port: http)
        defer { close(client) }
        XCTAssertTrue(eventually(timeout: 5) { metricSum("edge_connections_open", admin: admin) == 1 }, "the client is accepted")
        let accepted = try XCTUnwrap(scrapedMetric("edge_connections_total", admin: admin))
        let limit = openDescriptors(gateway.pid) + 5
        try Shell.run(["prlimit", "--pid", "\(gateway.pid)", "--nofile=\(limit):\(limit)"])
        var idle: [Int32] = []
        for _ in 0..<20 { idle.append(connectedSocket(port: http)) }
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("cannot accept connections") }, gateway.log)
        func request() -> String {
            _ = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n".withCString { write(client, $0, strlen($0)) }
            var buffer = [UInt8](repeating: 0, count: 4096)
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let n = read(client, &buffer, buffer.count)
            return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : "(read \(n))"
        }
        for _ in 0..<3 {
            let answer = request()
            XCTAssertTrue(answer.hasPrefix("HTTP/1.1 503"), answer)
        }
        idle.forEach { close($0) }
        // Every idle client accepted once descriptors allow, and closed: only `client` is left.
        XCTAssertTrue(eventually(timeout: 10) {
            (metricSum("edge_connections_total", admin: admin) ?? 0) >= accepted + 20 && metricSum("edge_connections_open", admin: admin) == 1
        }, "the idle clients are gone: \(metricSum("edge_connections_total", admin: admin) ?? -1) accepted (\(accepted) before them), \(metricSum("edge_connections_open", admin: admin) ?? -1) open")
        let after = request()
        XCTAssertTrue(after.hasPrefix("HTTP/1.1 200"), "the backend was not ejected: \(after)")
        let status = try Shell.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:\(admin)/status/upstreams"]).stdout
        XCTAssertFalse(status.contains("Too many open files"), "no failure recorded against the backend: \(status)")
    }

    /// The listen queue is the configured one (NIO listened again with 128 on the socket
    /// it was handed), as `ss -ltn` shows it.
    func testTheListenBacklogIsTheConfiguredOne() throws {
        let dir = TemporaryDirectory()
        let big = freePort(), small = freePort(), admin = freePort()
        try dir.write("config.yaml", """
            listeners:
              - { name: big, address: "127.0.0.1:\(big)" }
              - { name: small, address: "127.0.0.1:\(small)", backlog: 50 }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            """)
        let gateway = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("log"))
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        func backlog(_ port: Int) throws -> String {
            // doc-command: ss -ltn
            let line = try Shell.run(["ss", "-ltnH", "sport = :\(port)"]).stdout.split(separator: "\n").first ?? ""
            return line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(2).first.map(String.init) ?? "?"
        }
        XCTAssertEqual(try backlog(big), "1024", "the default backlog")
        XCTAssertEqual(try backlog(small), "50")
    }
}

/// An upstream response head over the group's `max_response_head_bytes` is refused
/// however it arrives (a 118,928-byte head read in one go went through the 64 KiB
/// check), with a 502 that says so rather than "upstream unavailable".
final class ResponseHeadLimitTests: XCTestCase {
    func testTheResponseHeadLimitIsExactAndConfigurable() async throws {
        let fields = (0..<10_000).map { "X-Field-\($0): vv\r\n" }.joined()
        let dir = TemporaryDirectory()
        try dir.write("response", "HTTP/1.1 200 OK\r\n\(fields)Content-Length: 2\r\n\r\nok")
        let (upstream, port) = try RequestHardeningTests.rawUpstream(response: "@" + dir.file("response"), capture: dir.file("heads"), dir: dir)
        defer { RequestHardeningTests.stop(upstream) }
        let harness = try await GatewayHarness.start(directory: dir) { _ in
            """
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
              small: { backends: ["127.0.0.1:\(port)"] }
              large: { backends: ["127.0.0.1:\(port)"], max_response_head_bytes: 300000 }
            routes: [ { path_prefix: /large, upstream: large }, { upstream: small } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let http = harness.port("http")
        let refused = try Shell.run(["curl", "-sS", "-w", " %{http_code}", "http://127.0.0.1:\(http)/"]).stdout
        XCTAssertTrue(refused.hasSuffix(" 502") && refused.contains("upstream response head too large"), String(refused.prefix(300)))
        XCTAssertTrue(harness.logs.contains("max_response_head_bytes (65536)"), harness.logs.all.suffix(5).joined(separator: "\n"))
        // The same failure again and again is logged once a second per backend and kind, not per request.
        for _ in 0..<30 { _ = try Shell.run(["curl", "-sS", "-o", "/dev/null", "http://127.0.0.1:\(http)/"]) }
        let lines = harness.logs.all.filter { $0.contains("upstream request failed") }
        XCTAssertLessThanOrEqual(lines.count, 4, "\(lines.count) lines for 31 failures")
        let passed = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(http)/large"]).stdout
        XCTAssertEqual(passed, "200", "a group with a larger limit takes the head")
        await harness.shutdown()
    }
}

/// A backend that accepts connections and never answers (#34 item 3): 44 % of requests
/// got 504 and /status/upstreams still called it up with no error after 80 timeouts.
final class HungBackendTests: XCTestCase {
    func testAHungBackendIsEjectedShownAndIdempotentRequestsGoElsewhere() async throws {
        let dir = TemporaryDirectory()
        let hung = freePort()
        try dir.write("hung.py", """
            import socket, time
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", \(hung))); s.listen(64)
            held = []
            while True:
                c, _ = s.accept(); held.append(c)  # read nothing, answer nothing
            """)
        let process = try RequestHardeningTests.python(dir.file("hung.py"), port: hung)
        defer { RequestHardeningTests.stop(process) }
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams:
              app:
                backends: ["127.0.0.1:\(hung)", "127.0.0.1:\(port)"]
                timeouts: { read: 1s }
                passive_health: { max_fails: 3, fail_timeout: 30s }
              posts:
                backends: ["127.0.0.1:\(hung)", "127.0.0.1:\(port)"]
                timeouts: { read: 1s }
                passive_health: { max_fails: 0 }
            routes: [ { path_prefix: /post, upstream: posts }, { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let http = harness.port("http")
        var codes: [String] = []
        for _ in 0..<20 {
            codes.append(try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "http://127.0.0.1:\(http)/"]).stdout)
        }
        XCTAssertEqual(codes.filter { $0 != "200" }, [], "every GET is served: the one that met the hung backend went on to the other")
        XCTAssertTrue(harness.logs.contains("trying another backend"), harness.logs.all.suffix(5).joined(separator: "\n"))
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/upstreams"]).stdout
        let object = try JSONSerialization.jsonObject(with: Data(status.utf8)) as! [String: Any]
        let app = (object["upstreams"] as! [[String: Any]]).first { $0["name"] as? String == "app" }!
        let backend = (app["backends"] as! [[String: Any]]).first { ($0["address"] as? String)?.hasSuffix(":\(hung)") ?? false }!
        XCTAssertTrue((backend["last_error"] as? String ?? "").hasSuffix("127.0.0.1:\(hung): no response within the read timeout"), "\(backend)")
        XCTAssertEqual(backend["health"] as? String, "ejected", "the hung backend is ejected: \(backend)")
        // A POST may have been acted on: it is not repeated elsewhere (504), within its read timeout.
        let started = Date()
        let post = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-d", "x", "http://127.0.0.1:\(http)/post"]).stdout
        XCTAssertEqual(post, "504")
        XCTAssertLessThan(Date().timeIntervalSince(started), 3)
        await harness.shutdown()
    }
}

/// Log lines that said something else happened (#34 item 8).
final class AccurateMessageTests: XCTestCase {
    /// A backend that resets its connection mid-response is named in the line that says
    /// so, and the error reads as strerror does.
    func testAResetMidResponseNamesTheBackend() async throws {
        let dir = TemporaryDirectory()
        let port = freePort()
        try dir.write("reset.py", """
            import socket, struct
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", \(port))); s.listen(16)
            while True:
                c, _ = s.accept(); c.recv(65536)
                c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n" + b"x" * 1000)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()  # a reset, not an end
            """)
        let process = try RequestHardeningTests.python(dir.file("reset.py"), port: port)
        defer { RequestHardeningTests.stop(process) }
        let harness = try await GatewayHarness.start(directory: dir) { _ in
            """
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        _ = try? Shell.run(["curl", "-sS", "-o", "/dev/null", "--max-time", "5", "http://127.0.0.1:\(harness.port("http"))/"])
        XCTAssertTrue(eventually(timeout: 5) { harness.logs.contains("upstream failed mid-response") })
        let line = harness.logs.all.first { $0.contains("upstream failed mid-response") } ?? ""
        XCTAssertTrue(line.contains("127.0.0.1:\(port)"), "the backend is named: \(line)")
        XCTAssertEqual(line.filter { $0 == "(" }.count, line.filter { $0 == ")" }.count, "balanced: \(line)")
        await harness.shutdown()
    }

    /// Shutdown with a request still running says what happens to it (nothing was
    /// "closing remaining connections").
    func testTheGracePeriodMessageSaysWhatHappens() throws {
        let dir = TemporaryDirectory()
        let (gateway, upstream, http, admin) = try plainGateway(dir, more: "shutdown_grace_period: 1s\n")
        defer { upstream.stop() }
        XCTAssertTrue(gateway.waitForPort(http), gateway.log)
        let slow = Process()
        slow.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        slow.arguments = ["-sS", "--max-time", "10", "http://127.0.0.1:\(http)/slow?ms=5000"]
        slow.standardOutput = FileHandle.nullDevice
        slow.standardError = FileHandle.nullDevice
        try slow.run()
        XCTAssertTrue(eventually(timeout: 5) { (metricSum("edge_upstream_active_requests", admin: admin) ?? 0) >= 1 }, "the request is in flight")
        gateway.stop()
        slow.waitUntilExit()
        XCTAssertTrue(gateway.log.contains("grace period over; exiting with connections still open"), gateway.log)
        XCTAssertFalse(gateway.log.contains("closing remaining connections"), gateway.log)
    }

    /// A certificate directory deleted and recreated empty is not "resolved": it is
    /// readable again and holds nothing, and the log says that.
    func testACertificateDirectoryRecreatedEmptyIsNotResolved() async throws {
        let dir = TemporaryDirectory()
        let certs = dir.path + "/certs"
        _ = try RequestHardeningTests.pki.issue(["localhost"], into: certs, name: "site")
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners: [ { name: https, address: "127.0.0.1:0", tls: {} } ]
            certificates: { sources: [ { directory: certs } ], watch: { debounce: 100ms, rescan_interval: 1s } }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        try FileManager.default.removeItem(atPath: certs)
        XCTAssertTrue(eventually(timeout: 10) { harness.logs.contains("certificate rejected") }, harness.logs.all.joined(separator: "\n"))
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        XCTAssertTrue(eventually(timeout: 10) { harness.logs.contains("certificate source readable again but holds no certificate") },
                      harness.logs.all.joined(separator: "\n"))
        XCTAssertFalse(harness.logs.contains("certificate problem resolved"), harness.logs.all.joined(separator: "\n"))
        await harness.shutdown()
    }

    /// An access log that cannot be written is reported once a minute by the process,
    /// not once by each configuration generation that shares the file.
    func testAnAccessLogErrorIsReportedOnce() throws {
        let dir = TemporaryDirectory()
        let (gateway, upstream, http, _) = try plainGateway(dir, more: "access_log: { path: /dev/full }\nworkers: 2\n")
        defer { upstream.stop() }
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(http), gateway.log)
        func requests() throws {
            for _ in 0..<6 { _ = try Shell.run(["curl", "-sS", "-o", "/dev/null", "http://127.0.0.1:\(http)/"]) }
        }
        try requests()
        XCTAssertTrue(eventually(timeout: 5) { gateway.log.contains("access log not written") }, gateway.log)
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { gateway.log.contains("configuration reloaded") }, gateway.log)
        try requests()
        pause(2.5)
        let lines = gateway.log.components(separatedBy: "\n").filter { $0.contains("access log not written") }
        XCTAssertEqual(lines.count, 1, lines.joined(separator: "\n"))
    }
}

/// Client-caused faults do not flood the log (#34 item 6): each reason is logged once
/// per 10 s window and the repeats summed up, while the metrics count every one.
final class ClientFaultLogTests: XCTestCase {
    func testAFloodOfClientFaultsIsSummarisedNotLoggedLineByLine() async throws {
        let dir = TemporaryDirectory()
        _ = try RequestHardeningTests.pki.issue(["localhost"], into: dir.path, name: "site")
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners: [ { name: https, address: "127.0.0.1:0", timeouts: { handshake: 1s }, tls: { certificate: site.crt, key: site.key } } ]
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let port = harness.port("https")
        // 300 plain-HTTP requests to the TLS port, and 40 connections that never speak.
        try Shell.run(["/usr/bin/python3", "-c", """
            import socket, time
            silent = [socket.create_connection(("127.0.0.1", \(port))) for _ in range(40)]
            for _ in range(300):
                s = socket.create_connection(("127.0.0.1", \(port)))
                s.sendall(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
                try:
                    s.recv(100)
                except OSError:
                    pass
                s.close()
            time.sleep(2)
            """], timeout: 60)
        let lines = harness.logs.all.filter { $0.contains("TLS handshake failed") }
        XCTAssertLessThanOrEqual(lines.count, 6, "one line per reason and event loop, not 340:\n\(lines.prefix(10).joined(separator: "\n"))")
        XCTAssertGreaterThanOrEqual(lines.count, 1)
        XCTAssertTrue(eventually(timeout: 15) { harness.logs.contains("more client faults in the last 10 s") }, harness.logs.all.suffix(5).joined(separator: "\n"))
        let metrics = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/metrics"]).stdout
        let failed = metrics.split(separator: "\n").first { $0.hasPrefix(#"edge_tls_handshakes_total{listener="https",result="failed"}"#) }
        let timedOut = metrics.split(separator: "\n").first { $0.hasPrefix(#"edge_tls_handshakes_total{listener="https",result="timeout"}"#) }
        XCTAssertEqual(failed.flatMap { Int($0.split(separator: " ").last ?? "") }, 300, "every fault is counted: \(failed ?? "none")")
        XCTAssertEqual(timedOut.flatMap { Int($0.split(separator: " ").last ?? "") }, 40, "\(timedOut ?? "none")")
        await harness.shutdown()
    }
}

/// An upstream response head too large for HTTP/2 (#34 item 4): once, the HEADERS frame
/// failed unseen, DATA went out on a stream never opened, and the client ended the
/// connection with every other stream on it. Now that stream gets 502, logged, and a
/// slow stream beside it on the same connection completes. The bound is on the block as
/// the gateway encodes it (no Huffman code, so about as long as the head): 16,400
/// backslashes are over it; 9,000 `a` and 7,000 backslashes are not (with Huffman, as
/// NIO's encoder measured it, they were 22 KB).
final class LargeHTTP2HeadTests: XCTestCase {
    func testAHeadTooLargeForOneFrameFailsOnlyItsStream() async throws {
        let dir = TemporaryDirectory()
        try dir.write("big", "HTTP/1.1 200 OK\r\nX-Big: \(String(repeating: "\\", count: 16_400))\r\nContent-Length: 2\r\n\r\nok")
        try dir.write("fits", "HTTP/1.1 200 OK\r\nX-Big: \(String(repeating: "a", count: 9_000))\r\nX-Slashes: \(String(repeating: "\\", count: 7_000))\r\nContent-Length: 2\r\n\r\nok")
        let (big, bigPort) = try RequestHardeningTests.rawUpstream(response: "@" + dir.file("big"), capture: dir.file("heads"), dir: dir)
        defer { RequestHardeningTests.stop(big) }
        let fitsDir = TemporaryDirectory()
        let (fits, fitsPort) = try RequestHardeningTests.rawUpstream(response: "@" + dir.file("fits"), capture: fitsDir.file("heads"), dir: fitsDir)
        defer { RequestHardeningTests.stop(fits) }
        _ = try RequestHardeningTests.pki.issue(["localhost"], into: dir.path, name: "site")
        let harness = try await GatewayHarness.start(directory: dir) { port in
            """
            listeners: [ { name: https, address: "127.0.0.1:0", tls: { certificate: site.crt, key: site.key, h2: true } } ]
            upstreams:
              app: { backends: ["127.0.0.1:\(port)"] }
              big: { backends: ["127.0.0.1:\(bigPort)"] }
              fits: { backends: ["127.0.0.1:\(fitsPort)"] }
            routes: [ { path_prefix: /big, upstream: big }, { path_prefix: /fits, upstream: fits }, { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let port = harness.port("https")
        // One connection, three streams: the slow one is open when the large head arrives.
        let result = try Shell.run(["nghttp", "-v", "https://localhost:\(port)/slow?ms=1000", "https://localhost:\(port)/big",
                                    "https://localhost:\(port)/fits"], timeout: 30)
        let out = result.stdout
        XCTAssertFalse(out.contains("PROTOCOL_ERROR") || out.contains("COMPRESSION_ERROR"), "the connection was ended:\n\(out.suffix(2000))")
        XCTAssertEqual(out.components(separatedBy: ":status: 502").count - 1, 1, "the large head's stream gets 502:\n\(out.suffix(3000))")
        XCTAssertEqual(out.components(separatedBy: ":status: 200").count - 1, 2, "the slow stream and the head that fits get 200:\n\(out.suffix(3000))")
        XCTAssertTrue(out.contains("slow 1000ms"), "the other stream completes:\n\(out.suffix(2000))")
        XCTAssertTrue(harness.logs.contains("response head too large for HTTP/2"), harness.logs.all.suffix(5).joined(separator: "\n"))
        await harness.shutdown()
    }
}

/// A backend that answered a POST badly (a head over the limit) has acted on it: the
/// POST is not replayed on a fresh connection as a stale pooled connection's would be
/// (found in review: with the exact head limit, such POSTs reached the backend twice).
final class NoReplayAfterAnAnswerTests: XCTestCase {
    func testABadAnswerOnAReusedConnectionIsNotRetried() async throws {
        let dir = TemporaryDirectory()
        let port = freePort()
        try dir.write("upstream.py", """
            import socket, sys, threading
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", \(port))); s.listen(16)
            big = b"HTTP/1.1 200 OK\\r\\n" + b"".join(b"Set-Cookie: c%d=v\\r\\n" % i for i in range(5000)) + b"Content-Length: 2\\r\\n\\r\\nok"
            def serve(c):
                n = 0; data = b""
                while True:
                    while b"\\r\\n\\r\\n" not in data:
                        chunk = c.recv(65536)
                        if not chunk: return
                        data += chunk
                    head, data = data.split(b"\\r\\n\\r\\n", 1)
                    if b"content-length: 1" in head.lower(): data = data[1:]
                    open(sys.argv[1], "ab").write(head.split(b"\\r\\n")[0] + b"\\n")
                    n += 1
                    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok" if n == 1 else big)
            while True:
                c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
            """)
        let process = try RequestHardeningTests.python(dir.file("upstream.py"), arguments: [dir.file("requests")], port: port)
        defer { RequestHardeningTests.stop(process) }
        let harness = try await GatewayHarness.start(directory: dir) { _ in
            """
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            workers: 1
            """
        }
        let http = harness.port("http")
        // One client connection (one event loop, one pool): the GET leaves its upstream
        // connection pooled, the POST reuses it.
        let codes = try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} ", "http://127.0.0.1:\(http)/",
                                   "--next", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-d", "x", "http://127.0.0.1:\(http)/charge"]).stdout
        XCTAssertEqual(codes, "200 502", (try? String(contentsOfFile: dir.file("requests"), encoding: .utf8)) ?? "")
        let seen = (try? String(contentsOfFile: dir.file("requests"), encoding: .utf8)) ?? ""
        XCTAssertEqual(seen.components(separatedBy: "POST /charge").count - 1, 1, "the POST reached the backend once:\n\(seen)")
        await harness.shutdown()
    }
}
