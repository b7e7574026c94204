import EdgeTestSupport
import Foundation
import XCTest

/// Reloads and takeovers measured with clients that never retry (wrk, h2load): a
/// browser-like client that retries a request on a closed keep-alive connection hides
/// the race between a draining gateway closing an idle connection and the client's next
/// request; these clients count it.
final class ReloadUnderLoadTests: XCTestCase {
    static let pki = try! TestPKI()

    /// A running gateway process with a plain and an HTTP/2 listener in front of a demo upstream.
    struct Setup {
        let dir: TemporaryDirectory
        let http: Int
        let https: Int
        let admin: Int
        let upstream: DemoUpstreamProcess
        var config: String { self.dir.file("config.yaml") }
    }

    func setUp(handoff: Bool) throws -> Setup {
        let dir = TemporaryDirectory()
        _ = try Self.pki.issue(["localhost"], into: dir.path, name: "site")
        let http = freePort(), https = freePort(), admin = freePort()
        let upstream = try DemoUpstreamProcess()
        try dir.write("config.yaml", """
            listeners:
              - { name: http, address: "127.0.0.1:\(http)" }
              - { name: https, address: "127.0.0.1:\(https)", tls: { certificate: site.crt, key: site.key, h2: true } }
            upstreams: { app: { backends: ["127.0.0.1:\(upstream.port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(admin)" }
            shutdown_grace_period: 5s
            \(handoff ? "handoff_socket: handoff.sock" : "")
            """)
        return Setup(dir: dir, http: http, https: https, admin: admin, upstream: upstream)
    }

    /// wrk against `port` in the background: `post` sends a 2 KiB body to /echo.
    func startWrk(port: Int, seconds: Int, post: Bool, dir: TemporaryDirectory) throws -> (Process, Pipe) {
        let script = dir.file(post ? "post.lua" : "get.lua")
        try dir.write(post ? "post.lua" : "get.lua", post
            ? "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", 2048)\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
            : "wrk.method = \"GET\"\n")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/wrk")
        process.arguments = ["-t1", "-c50", "-d\(seconds)s", "--timeout", "5s", "-s", script, "http://127.0.0.1:\(port)" + (post ? "/echo" : "/")]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        return (process, output)
    }

    /// wrk's totals: requests, and failures of every kind it counts (socket errors and non-2xx/3xx).
    func wrkResult(_ run: (Process, Pipe)) -> (requests: Int, failed: Int, text: String) {
        let text = String(decoding: run.1.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        run.0.waitUntilExit()
        func number(after label: String, in line: Substring) -> Int {
            guard let range = line.range(of: label) else { return 0 }
            return Int(line[range.upperBound...].prefix { $0.isNumber }) ?? 0
        }
        var requests = 0, failed = 0
        for line in text.split(separator: "\n") {
            if line.contains("requests in") { requests = Int(line.trimmingCharacters(in: .whitespaces).prefix { $0.isNumber }) ?? 0 }
            if line.contains("Socket errors:") {
                failed += ["connect ", "read ", "write ", "timeout "].map { number(after: $0, in: line) }.reduce(0, +)
            }
            if line.contains("Non-2xx or 3xx responses:") { failed += number(after: "responses: ", in: line) }
        }
        return (requests, failed, text)
    }

    /// Waits until the gateway at `admin` has answered `count` requests (`edge_requests_total`).
    func answers(_ admin: Int, atLeast count: Double, on listener: String? = nil) -> Bool {
        let label = listener.map { "listener=\"\($0)\"" }
        return eventually(timeout: 15, interval: 0.05) { (metricSum("edge_requests_total", admin: admin, labelled: label) ?? 0) >= count }
    }

    /// Waits until the `count`th reload is logged, then for 300 more answers: each reload
    /// lands on a load under way, none on the drain of the one before.
    func reloaded(_ count: Int, _ gateway: GatewayProcess, admin: Int) {
        XCTAssertTrue(eventually(timeout: 10) { gateway.log.components(separatedBy: "configuration reloaded").count - 1 >= count }, "reload \(count)")
        guard let answered = scrapedMetric("edge_requests_total", admin: admin) else { return XCTFail("no /metrics after reload \(count)") }
        XCTAssertTrue(self.answers(admin, atLeast: answered + 300), "answers after reload \(count)")
    }

    func testTwentyReloadsFailNoRequestOfClientsThatNeverRetry() throws {
        let setup = try setUp(handoff: false)
        defer { setup.upstream.stop() }
        let gateway = try GatewayProcess(config: setup.config, logPath: setup.dir.file("gateway.log"))
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(setup.admin), gateway.log)
        // Three minutes at most: wrk stops (and reports) on SIGINT once the last reload is
        // done, however long the reloads took (the AddressSanitizer build is slower, and a
        // minute was near what twenty reloads and their answers take there).
        let get = try startWrk(port: setup.http, seconds: 180, post: false, dir: setup.dir)
        let post = try startWrk(port: setup.http, seconds: 180, post: true, dir: setup.dir)
        defer { for client in [get.0, post.0] where client.isRunning { client.interrupt() } }
        XCTAssertTrue(self.answers(setup.admin, atLeast: 500), "the load is under way")
        for reload in 1...20 {
            kill(gateway.pid, SIGHUP)
            self.reloaded(reload, gateway, admin: setup.admin)
        }
        get.0.interrupt()
        post.0.interrupt()
        let gets = wrkResult(get), posts = wrkResult(post)
        XCTAssertEqual(gateway.log.components(separatedBy: "configuration reloaded").count - 1, 20, gateway.log.suffix(2000).description)
        XCTAssertGreaterThan(gets.requests, 1000, gets.text)
        XCTAssertGreaterThan(posts.requests, 1000, posts.text)
        XCTAssertEqual(gets.failed, 0, "GET requests failed across 20 reloads:\n\(gets.text)")
        XCTAssertEqual(posts.failed, 0, "POST requests failed across 20 reloads:\n\(posts.text)")
        XCTAssertTrue(gateway.process.isRunning)
    }

    func testFiveTakeoversFailNoRequestOfClientsThatNeverRetry() throws {
        let setup = try setUp(handoff: true)
        defer { setup.upstream.stop() }
        var current = try GatewayProcess(config: setup.config, logPath: setup.dir.file("gateway0.log"))
        XCTAssertTrue(current.waitForPort(setup.admin), current.log)
        var all = [current]
        defer { for process in all { process.stop() } }
        // A minute at most: the clients stop (and report) on SIGINT after the last takeover.
        let get = try startWrk(port: setup.http, seconds: 60, post: false, dir: setup.dir)
        let post = try startWrk(port: setup.http, seconds: 60, post: true, dir: setup.dir)
        let h2 = try startHTTP2Client(port: setup.https, seconds: 60)
        // Each process answers HTTP/2 streams too before it is taken over: the Python client is
        // much slower than wrk, and a count over all listeners could be wrk's alone.
        XCTAssertTrue(self.answers(setup.admin, atLeast: 500), "the load is under way")
        XCTAssertTrue(self.answers(setup.admin, atLeast: 100, on: "https"), "the streams are under way")
        for index in 1...5 {
            let next = try GatewayProcess(config: setup.config, logPath: setup.dir.file("gateway\(index).log"))
            all.append(next)
            guard eventually(timeout: 15, { !current.process.isRunning }) else {
                XCTFail("takeover \(index): the old process did not drain and exit:\n\(current.log.suffix(2000))\n---- new:\n\(next.log.suffix(2000))")
                return
            }
            XCTAssertEqual(current.process.terminationStatus, 0, current.log.suffix(2000).description)
            current = next
            // The new process has its own counters, and the admin endpoint is its own now.
            XCTAssertTrue(self.answers(setup.admin, atLeast: 300), "takeover \(index): the new process serves the load")
            XCTAssertTrue(self.answers(setup.admin, atLeast: 100, on: "https"), "takeover \(index): the new process serves the streams")
        }
        for client in [get.0, post.0, h2.0] { client.interrupt() }
        let gets = wrkResult(get), posts = wrkResult(post)
        XCTAssertGreaterThan(gets.requests, 1000, gets.text)
        XCTAssertGreaterThan(posts.requests, 1000, posts.text)
        XCTAssertEqual(gets.failed, 0, "GET requests failed across 5 takeovers:\n\(gets.text)")
        XCTAssertEqual(posts.failed, 0, "POST requests failed across 5 takeovers:\n\(posts.text)")
        let streams = http2Result(h2)
        XCTAssertGreaterThanOrEqual(streams["ok"] as? Int ?? 0, 600, "\(streams)")
        XCTAssertGreaterThanOrEqual(streams["goaways"] as? Int ?? 0, 5, "every takeover drained the streams' connections: \(streams)")
        XCTAssertEqual(streams["failed"] as? Int, 0, "HTTP/2 streams failed across 5 takeovers: \(streams)")
        XCTAssertEqual(streams["refused"] as? Int, 0, "\(streams)")
    }

    /// Tests/tools/h2_reload_client.py in the background: four connections, ten streams at a time.
    func startHTTP2Client(port: Int, seconds: Int) throws -> (Process, Pipe) {
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        client.arguments = [repositoryRoot() + "/Tests/tools/h2_reload_client.py", "\(port)", Self.pki.caPath, "\(seconds)", "4", "10"]
        let output = Pipe()
        client.standardOutput = output
        try client.run()
        return (client, output)
    }

    func http2Result(_ run: (Process, Pipe)) -> [String: Any] {
        let line = String(decoding: run.1.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        run.0.waitUntilExit()
        return (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? ["output": line]
    }

    /// HTTP/2 clients across reloads (Tests/tools/h2_reload_client.py, ten streams at a
    /// time on each of four connections): every stream the gateway accepted is answered,
    /// and none is refused, since the first GOAWAY of a drain promises to process every
    /// stream already on its way. (h2load cannot tell: it never reconnects after GOAWAY
    /// and counts the requests it queued and never sent as failed.)
    func testReloadsFailNoHTTP2Stream() throws {
        let setup = try setUp(handoff: false)
        defer { setup.upstream.stop() }
        let gateway = try GatewayProcess(config: setup.config, logPath: setup.dir.file("gateway.log"))
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(setup.admin), gateway.log)
        let client = try startHTTP2Client(port: setup.https, seconds: 60)
        XCTAssertTrue(self.answers(setup.admin, atLeast: 300), "the streams are under way")
        for reload in 1...10 {
            kill(gateway.pid, SIGHUP)
            self.reloaded(reload, gateway, admin: setup.admin)
        }
        client.0.interrupt()  // it stops and reports
        let result = http2Result(client)
        let line = "\(result)"
        XCTAssertEqual(gateway.log.components(separatedBy: "configuration reloaded").count - 1, 10)
        XCTAssertGreaterThan(result["ok"] as? Int ?? 0, 2000, line)
        XCTAssertGreaterThan(result["goaways"] as? Int ?? 0, 10, "the connections were drained: \(line)")
        XCTAssertEqual(result["failed"] as? Int, 0, "streams failed across 10 reloads: \(line)")
        XCTAssertEqual(result["refused"] as? Int, 0, "no stream on its way was refused: \(line)")
    }

    /// An admin connection kept alive across a reload (a Prometheus scraper's) is closed
    /// when the configuration it talks to is replaced, so that its next scrape reaches the
    /// new one instead of reporting the replaced configuration's upstreams.
    func testAnAdminConnectionKeptAliveIsClosedByAReload() throws {
        let setup = try setUp(handoff: false)
        defer { setup.upstream.stop() }
        let gateway = try GatewayProcess(config: setup.dir.file("config.yaml"), logPath: setup.dir.file("gateway.log"))
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(setup.admin), gateway.log)
        let script = """
            import json, os, signal, socket, sys
            port, pid, config, renamed = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
            def upstreams(s):
                s.sendall(b"GET /status/upstreams HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
                data = b""
                while b"\\r\\n\\r\\n" not in data:
                    chunk = s.recv(65536)
                    if not chunk: return None
                    data += chunk
                head, body = data.split(b"\\r\\n\\r\\n", 1)
                length = int([l.split(b":")[1] for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0])
                while len(body) < length:
                    chunk = s.recv(65536)
                    if not chunk: return None
                    body += chunk
                return body.decode()
            kept = socket.create_connection(("127.0.0.1", port), timeout=10)
            before = upstreams(kept)
            open(config + ".new", "w").write(open(config).read().replace("upstreams: { app:", "upstreams: { " + renamed + ":").replace("upstream: app", "upstream: " + renamed))
            os.rename(config + ".new", config)
            os.kill(pid, signal.SIGHUP)
            # The replaced configuration closes it once the new one serves (within 15 s), or
            # it stays open and answers as it was.
            kept.settimeout(15)
            try:
                closed = kept.recv(1) == b""
            except socket.timeout:
                closed = False
            fresh = socket.create_connection(("127.0.0.1", port), timeout=10)
            reloaded = renamed in (upstreams(fresh) or "")
            print(json.dumps({"before": renamed not in (before or "") and '"app"' in (before or ""), "reloaded": reloaded, "closed": closed,
                              "after": None if closed else upstreams(kept)}))
            """
        let result = try Shell.run(["python3", "-c", script, "\(setup.admin)", "\(gateway.pid)", setup.dir.file("config.yaml"), "renamed"], timeout: 60)
        let line = result.stdout.split(separator: "\n").last.map(String.init) ?? result.stderr
        let json = (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? ["output": line, "error": result.stderr]
        XCTAssertEqual(json["before"] as? Bool, true, "\(json)")
        XCTAssertEqual(json["reloaded"] as? Bool, true, "\(json)\n\(gateway.log)")
        XCTAssertEqual(json["closed"] as? Bool, true, "the kept connection still talks to the replaced configuration: \(json)")
    }

    /// Validating a configuration has no side effects: a reload rejected for a misspelt
    /// key changes neither the session-ticket keys nor the access log nor the listeners,
    /// although the rejected file names another key file and another log.
    func testARejectedReloadLeavesTicketKeysAccessLogAndListenersUntouched() throws {
        let dir = TemporaryDirectory()
        _ = try Self.pki.issue(["localhost"], into: dir.path, name: "site")
        let https = freePort(), admin = freePort()
        let upstream = try DemoUpstreamProcess()
        defer { upstream.stop() }
        try dir.write("a.keys", try Shell.bash("openssl rand 80 | base64 -w0").stdout + "\n")
        try dir.write("b.keys", try Shell.bash("openssl rand 80 | base64 -w0").stdout + "\n")
        func write(keys: String, log: String, extra: String) throws {
            try dir.write("config.yaml", """
                listeners:
                  - { name: https, address: "127.0.0.1:\(https)",
                      tls: { certificate: site.crt, key: site.key, session_tickets: { key_file: \(keys) } } }
                upstreams: { app: { backends: ["127.0.0.1:\(upstream.port)"] } }
                routes: [ { upstream: app } ]
                admin: { address: "127.0.0.1:\(admin)" }
                access_log: { path: \(log) }
                \(extra)
                """)
        }
        try write(keys: "a.keys", log: "first.log", extra: "")
        let gateway = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("gateway.log"))
        defer { gateway.stop() }
        XCTAssertTrue(gateway.waitForPort(admin), gateway.log)
        func session(out: String? = nil, in input: String? = nil) throws -> String {
            try sClient(port: https, "-servername localhost -tls1_3", sessionOut: out, sessionIn: input)
        }
        XCTAssertTrue(try session(out: dir.file("ticket")).contains("New,"))
        try write(keys: "b.keys", log: "second.log", extra: "shutdown_grace_priod: 5s")
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { gateway.log.contains("configuration reload rejected") }, gateway.log)
        XCTAssertTrue(gateway.log.contains("shutdown_grace_priod"), "the error names the key")
        let resumed = try session(in: dir.file("ticket"))
        XCTAssertTrue(resumed.contains("Reused,"), "the live ticket keys are still a.keys:\n\(resumed.prefix(600))")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("second.log")), "the rejected file's access log was not created")
        XCTAssertEqual(try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", Self.pki.caPath,
                                      "https://localhost:\(https)/"]).stdout, "200", "the listener still serves")
        // `check` of the same file creates nothing either.
        let check = try Shell.run([gatewayBinary(), "check", "-c", dir.file("config.yaml")])
        XCTAssertEqual(check.status, 1, check.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("second.log")))
        // Once the file is valid, the reload applies the new keys: the old ticket no longer resumes.
        try write(keys: "b.keys", log: "second.log", extra: "")
        kill(gateway.pid, SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { gateway.log.contains("configuration reloaded") }, gateway.log)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.file("second.log")))
        XCTAssertTrue(try session(in: dir.file("ticket")).contains("New,"), "b.keys does not open a.keys' ticket")
    }
}
