import EdgeGateway
import EdgeTestSupport
import Foundation
import XCTest

/// HTTP/2 to upstreams (`protocol: h2c`, `protocol: h2`): a real gRPC server (grpcio)
/// and nginx behind the gateway, real clients in front.
final class UpstreamHTTP2Tests: XCTestCase {
    /// A Python tool of Tests/tools (Debian's python3, which has grpcio) serving on `port`,
    /// started and waited for; the caller stops it.
    func python(_ tool: String, _ arguments: [String], port: Int, log: String) throws -> GatewayProcess {
        let process = try GatewayProcess(commandLine: ["/usr/bin/python3", repositoryRoot() + "/Tests/tools/" + tool] + arguments, logPath: log)
        XCTAssertTrue(process.waitForPort(port), process.log)
        return process
    }

    /// gRPC end to end: grpcio's client over TLS and HTTP/2 to the gateway, the gateway
    /// to grpcio's server over h2c (one listener) and over h2 with TLS (another). Every
    /// kind of call, metadata and trailers both ways, a 4 MiB message, a status with
    /// details from the server, and a server that dies in the middle of a stream: the
    /// call ends at once with UNAVAILABLE, not a reset and not the client's own deadline.
    /// Before `protocol`, the gateway spoke HTTP/1.1 to the server, which refused it.
    func testGRPCCallsOfEveryKindPassToH2CAndH2Servers() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dir = TemporaryDirectory()
        let plainPort = freePort()
        let tlsPort = freePort()
        let plain = try self.python("grpc_server.py", ["\(plainPort)"], port: plainPort, log: dir.file("grpc.log"))
        defer { plain.stop(signal: SIGKILL) }
        let tls = try self.python("grpc_server.py", ["\(tlsPort)", leaf.fullchain, leaf.key], port: tlsPort, log: dir.file("grpc-tls.log"))
        defer { tls.stop(signal: SIGKILL) }
        let harness = try await GatewayHarness.start { _ in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
              - name: tls
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
            upstreams:
              grpc: { backends: ["127.0.0.1:\(plainPort)"], protocol: h2c }
              grpc_tls: { backends: ["localhost:\(tlsPort)"], protocol: h2, tls: { ca_file: \(pki.caPath) } }
            routes:
              - { listener: https, path_prefix: /test.Echo/, upstream: grpc }
              - { listener: tls, path_prefix: /test.Echo/, upstream: grpc_tls }
            admin: { address: "127.0.0.1:0" }
            """
        }
        for (listener, server) in [("https", plain), ("tls", tls)] {
            let run = try Shell.run(["/usr/bin/python3", repositoryRoot() + "/Tests/tools/grpc_calls.py", "\(harness.port(listener))", pki.caPath],
                                    timeout: 240)
            let line = run.stdout.split(separator: "\n").last.map(String.init) ?? ""
            let result = try XCTUnwrap(try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: [String: Any]],
                                       listener + ": " + run.stdout + run.stderr + server.log)
            let unary = result["unary"] ?? [:]
            XCTAssertEqual(unary["reply"] as? String, "hello", "\(listener): \(unary)")
            XCTAssertEqual(unary["code"] as? String, "OK")
            XCTAssertEqual((unary["initial"] as? [String: String])?["x-test"], "grpc", "initial metadata: \(unary)")
            XCTAssertEqual((unary["trailing"] as? [String: String])?["x-trailer"], "end-grpc", "trailing metadata: \(unary)")
            let big = result["big"] ?? [:]
            XCTAssertEqual(big["got"] as? String, big["sent"] as? String, "a 4 MiB message and its echo")
            let fail = result["fail"] ?? [:]
            XCTAssertEqual(fail["code"] as? String, "NOT_FOUND", "the server's status: \(fail)")
            XCTAssertEqual(fail["details"] as? String, "nothing here")
            XCTAssertEqual((fail["trailing"] as? [String: String])?["x-why"], "test")
            XCTAssertEqual(result["server_stream"]?["messages"] as? Int, 10_000)
            XCTAssertEqual(result["server_stream"]?["ordered"] as? Bool, true)
            XCTAssertEqual(result["client_stream"]?["bytes"] as? Int, 1_024_000)
            XCTAssertEqual(result["bidi"]?["messages"] as? Int, 1_000)
            XCTAssertEqual(result["bidi"]?["same"] as? Bool, true)
            // The server exits after handing its tenth message to its transport: those that
            // reached the gateway reach the client, then UNAVAILABLE in trailers (a gRPC
            // server's way to end a failed stream).
            let die = result["die"] ?? [:]
            XCTAssertEqual(die["code"] as? String, "UNAVAILABLE", "\(listener): \(die)")
            let messages = die["messages"] as? Int ?? -1
            XCTAssertTrue((0...10).contains(messages), "\(die)")
            XCTAssertEqual(die["details"] as? String, messages > 0 ? "upstream failed mid-response" : "upstream unavailable", "\(die)")
        }
        // Counted as the errors they stand for (502), not as the 200s they began with.
        for listener in ["https", "tls"] {
            XCTAssertEqual(metricSum("edge_requests_total{listener=\"\(listener)\",class=\"5xx\"}", admin: harness.gateway.adminPort!), 1, listener)
        }
        await harness.shutdown()
    }

    /// `health_check.kind: grpc` asks each backend the standard `grpc.health.v1.Health/Check`
    /// over the group's HTTP/2: over h2c, a server that says NOT_SERVING goes down (the
    /// reason on /status/upstreams) and calls go to the one that says SERVING; over h2
    /// with TLS the same check passes. Before, a gRPC backend could only be checked by its
    /// TCP port or its TLS handshake, which a NOT_SERVING server still passes.
    func testAGRPCHealthCheckTakesANotServingBackendDown() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dir = TemporaryDirectory()
        let (serving, notServing, tlsPort) = (freePort(), freePort(), freePort())
        let servers = [
            try self.python("grpc_server.py", ["\(serving)"], port: serving, log: dir.file("serving.log")),
            try self.python("grpc_server.py", ["\(notServing)", "--not-serving"], port: notServing, log: dir.file("not-serving.log")),
            try self.python("grpc_server.py", ["\(tlsPort)", leaf.fullchain, leaf.key], port: tlsPort, log: dir.file("tls.log")),
        ]
        defer { for server in servers { server.stop(signal: SIGKILL) } }
        let check = "health_check: { kind: grpc, interval: 100ms, timeout: 2s, unhealthy_after: 1, healthy_after: 1 }"
        let harness = try await GatewayHarness.start { _ in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
            upstreams:
              grpc: { backends: ["127.0.0.1:\(serving)", "127.0.0.1:\(notServing)"], protocol: h2c, \(check) }
              grpc_tls: { backends: ["localhost:\(tlsPort)"], protocol: h2, tls: { ca_file: \(pki.caPath) }, \(check) }
            routes:
              - { path_prefix: /test.Echo/, upstream: grpc }
            admin: { address: "127.0.0.1:0" }
            """
        }
        let admin = harness.gateway.adminPort!
        func status() -> String { (try? Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/status/upstreams"]).stdout) ?? "" }
        /// The grpc_tls backend's checks with this result, whatever the labels' order.
        func tlsChecks(_ result: String) -> Double {
            let text = (try? Shell.run(["curl", "-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout) ?? ""
            return text.split(separator: "\n").filter {
                $0.hasPrefix("edge_upstream_health_checks_total{") && $0.contains("upstream=\"grpc_tls\"") && $0.contains("result=\"\(result)\"")
            }.compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
        }
        let checked = eventually(timeout: 20) {
            let text = status()
            return text.contains("\"address\":\"127.0.0.1:\(notServing)\",\"weight\":1,\"health\":\"down\"")
                && tlsChecks("passed") >= 2
        }
        let text = status()
        XCTAssertTrue(checked, text)
        XCTAssertTrue(text.contains("\"address\":\"127.0.0.1:\(serving)\",\"weight\":1,\"health\":\"up\""), text)
        XCTAssertTrue(text.contains("health check: the server says NOT_SERVING"), text)
        XCTAssertTrue(text.contains("\"address\":\"localhost:\(tlsPort)\",\"weight\":1,\"health\":\"up\""), text)
        XCTAssertEqual(tlsChecks("failed"), 0)
        // Every call goes to the serving backend.
        for _ in 0..<6 {
            let run = try Shell.run(["/usr/bin/python3", repositoryRoot() + "/Tests/tools/grpc_call.py", "\(harness.port("https"))", pki.caPath,
                                     "/test.Echo/Unary"], timeout: 60)
            XCTAssertTrue(run.stdout.contains("\"code\": \"OK\""), run.stdout + run.stderr)
        }
        await harness.shutdown()
    }

    /// HTTP/2 over TLS to nginx (`protocol: h2`, agreed by ALPN): 64 MiB down and up on
    /// concurrent requests from HTTP/1.1 and HTTP/2 clients, checked by hashes (uploads
    /// with a length and chunked, stored by nginx's PUT); nginx's GOAWAY after every fifth
    /// stream (`keepalive_requests 5`) loses none of 36 PUTs from three clients at once
    /// that never retry, each stored as sent; and a backend that does not agree to h2 by
    /// ALPN is a handshake failure that names the reason.
    func testH2ToNginxCarriesLargeBodiesAndSurvivesGoaway() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dir = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir.file("www/files"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.file("www/upload"), withIntermediateDirectories: true)
        _ = try Shell.run(["dd", "if=/dev/urandom", "of=" + dir.file("www/files/big"), "bs=1M", "count=64", "status=none"])
        let h2Port = freePort()
        let h1Port = freePort()
        let nginx = try NginxUpstream(directory: dir, port: h2Port, servers: """
            server {
              listen 127.0.0.1:\(h2Port) ssl http2;
              listen 127.0.0.1:\(h1Port) ssl;
              ssl_certificate \(leaf.fullchain);
              ssl_certificate_key \(leaf.key);
              keepalive_requests 5;
              client_max_body_size 100m;
              root \(dir.file("www"));
              location /files/ { }
              location /upload/ { dav_methods PUT; create_full_put_path on; }
              location /hello { return 200 "$server_protocol $request_method\\n"; }
            }
            """)
        defer { nginx.stop() }
        // Python's ssl server ignores ALPN unless told: the handshake completes without h2.
        let pythonPort = freePort()
        let python = try self.python("tls_upstream.py", [dir.file("sni.log"), "port=\(pythonPort),cert=\(leaf.fullchain),key=\(leaf.key)"],
                                     port: pythonPort, log: dir.file("python.log"))
        defer { python.stop(signal: SIGKILL) }
        let harness = try await GatewayHarness.start { _ in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
            upstreams:
              h2: { backends: ["localhost:\(h2Port)"], protocol: h2, tls: { ca_file: \(pki.caPath) } }
              noh2: { backends: ["localhost:\(h1Port)"], protocol: h2, tls: { ca_file: \(pki.caPath) }, passive_health: { max_fails: 0 } }
              noalpn: { backends: ["localhost:\(pythonPort)"], protocol: h2, tls: { ca_file: \(pki.caPath) }, passive_health: { max_fails: 0 } }
            routes:
              - { path_prefix: /refuses, upstream: noh2 }
              - { path_prefix: /ignores, upstream: noalpn }
              - { upstream: h2 }
            admin: { address: "127.0.0.1:0" }
            """
        }
        let port = harness.port("https")
        let curl = "curl -sS --max-time 120 --cacert \(pki.caPath)"
        let base = "https://localhost:\(port)"
        let hello = try Shell.bash("\(curl) --http1.1 \(base)/hello", timeout: 150)
        XCTAssertEqual(hello.stdout, "HTTP/2.0 GET\n", "nginx saw HTTP/2: \(hello.stderr)")

        let big = dir.file("www/files/big")
        let sums = try Shell.bash("""
            set -e
            cd \(dir.path)
            \(curl) --http1.1 -o down1 \(base)/files/big & a=$!
            \(curl) --http2 -o down2 \(base)/files/big & b=$!
            \(curl) --http1.1 -T \(big) \(base)/upload/length & c=$!
            \(curl) --http2 -T - \(base)/upload/chunked < \(big) & d=$!
            wait $a $b $c $d
            sha256sum www/files/big down1 down2 www/upload/length www/upload/chunked
            """, timeout: 300)
        let hashes = sums.stdout.split(separator: "\n").map { $0.split(separator: " ").first.map(String.init) ?? "" }
        XCTAssertEqual(hashes.count, 5, sums.stdout + sums.stderr)
        XCTAssertEqual(Set(hashes).count, 1, "every copy the same as the file: \(sums.stdout) \(sums.stderr)")

        // nginx ends each connection with GOAWAY after its fifth stream: three clients
        // that never retry PUT 12 bodies each at once, every one stored as sent.
        let puts = try Shell.bash("""
            cd \(dir.path)
            for k in 1 2 3; do
              ( for i in $(seq 12); do printf 'body %s-%s %0500d' $k $i 0 > put-$k-$i
                  \(curl) --http1.1 -T put-$k-$i -o /dev/null -w '%{http_code}\\n' \(base)/upload/put-$k-$i; done ) &
            done
            wait
            for k in 1 2 3; do for i in $(seq 12); do cmp -s put-$k-$i www/upload/put-$k-$i && echo same; done; done
            """, timeout: 300)
        XCTAssertEqual(puts.stdout.split(separator: "\n").filter { $0 == "201" || $0 == "204" }.count, 36, puts.stdout + puts.stderr)
        XCTAssertEqual(puts.stdout.split(separator: "\n").filter { $0 == "same" }.count, 36, puts.stdout + puts.stderr)

        // Streams multiplexed on each upstream connection when nginx's GOAWAY comes: the
        // streams above its last one were not processed and go again on another
        // connection. h2load never retries: 300 PUTs, 60 at a time, all stored.
        try Data(repeating: 0x62, count: 2_000).write(to: URL(fileURLWithPath: dir.file("burst-body")))
        let burst = try Shell.run(["h2load", "-n", "300", "-c", "3", "-m", "20", "-d", dir.file("burst-body"), "-H", ":method: PUT",
                                   "\(base)/upload/burst"], timeout: 180)
        XCTAssertTrue(burst.stdout.contains("300 total, 300 started, 300 done, 300 succeeded, 0 failed, 0 errored"), burst.stdout + burst.stderr)
        XCTAssertTrue(burst.stdout.contains("status codes: 0 2xx") == false && burst.stdout.contains("0 4xx, 0 5xx"), burst.stdout)

        // nginx without http2 refuses the handshake (no_application_protocol); a server
        // that ignores ALPN completes it without h2, and the gateway refuses it instead.
        for path in ["/refuses", "/ignores"] {
            let refused = try Shell.bash("\(curl) --http1.1 -w '\\n%{http_code}' \(base)\(path)", timeout: 150)
            XCTAssertTrue(refused.stdout.hasSuffix("502"), refused.stdout)
        }
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/upstreams"]).stdout
        XCTAssertTrue(status.contains("\"name\":\"h2\",\"balance\":\"round_robin\",\"protocol\":\"h2\""), status)
        XCTAssertTrue(status.contains("no application protocol"), status)
        XCTAssertTrue(status.contains("the upstream did not agree to h2 by ALPN (chose none)"), status)
        await harness.shutdown()
    }

    /// `protocol: auto` offers h2 and http/1.1 by ALPN and speaks what each backend
    /// chose: HTTP/2 to nginx's `http2` listener, HTTP/1.1 to its other one. An http
    /// health check speaks the same (on an h2 group too, which the plan used to refuse).
    /// A WebSocket handshake gets a connection that offers http/1.1 alone, so it reaches
    /// the echo server behind the h2 listener (over HTTP/2 it had no way: 502). And
    /// `max_requests_per_connection` closes an HTTP/1.1 connection after that many.
    func testAutoSpeaksWhatEachBackendChoseByALPN() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dir = TemporaryDirectory()
        let (h2Port, h1Port, wsPort) = (freePort(), freePort(), freePort())
        let ws = try self.python("ws_echo.py", ["server", "\(wsPort)"], port: wsPort, log: dir.file("ws.log"))
        defer { ws.stop(signal: SIGKILL) }
        let log = dir.file("seen.log")
        let nginx = try NginxUpstream(directory: dir, port: h2Port, servers: """
            log_format seen '$server_port $server_protocol $http_user_agent';
            server {
              listen 127.0.0.1:\(h2Port) ssl http2;
              listen 127.0.0.1:\(h1Port) ssl;
              ssl_certificate \(leaf.fullchain);
              ssl_certificate_key \(leaf.key);
              access_log \(log) seen;
              location /ws {
                proxy_pass http://127.0.0.1:\(wsPort);
                proxy_http_version 1.1;
                proxy_set_header Upgrade $http_upgrade;
                proxy_set_header Connection upgrade;
              }
              location / { return 200 "$server_protocol $request_method\\n"; }
            }
            """)
        defer { nginx.stop() }
        let check = "health_check: { kind: http, path: /check, interval: 100ms, timeout: 2s }"
        let harness = try await GatewayHarness.start { _ in
            """
            listeners:
              - { name: http, address: "127.0.0.1:0" }
            upstreams:
              either: { backends: ["localhost:\(h2Port)"], protocol: auto, tls: { ca_file: \(pki.caPath) }, \(check) }
              older: { backends: ["localhost:\(h1Port)"], protocol: auto, tls: { ca_file: \(pki.caPath) }, \(check),
                       pool: { max_requests_per_connection: 2 } }
              fresh: { backends: ["localhost:\(h1Port)"], protocol: auto, tls: { ca_file: \(pki.caPath) } }
              strict: { backends: ["localhost:\(h2Port)"], protocol: h2, tls: { ca_file: \(pki.caPath) }, \(check) }
            routes:
              - { path_prefix: /old, upstream: older }
              - { path_prefix: /fresh, upstream: fresh }
              - { path_prefix: /strict, upstream: strict }
              - { upstream: either }
            admin: { address: "127.0.0.1:0" }
            """
        }
        let base = "http://127.0.0.1:\(harness.port("http"))"
        for (path, expected) in [("/hello", "HTTP/2.0 GET\n"), ("/old/hello", "HTTP/1.1 GET\n"), ("/strict/hello", "HTTP/2.0 GET\n")] {
            let run = try Shell.run(["curl", "-sS", "--max-time", "30", base + path], timeout: 60)
            XCTAssertEqual(run.stdout, expected, path + ": " + run.stderr)
        }
        // Twenty requests at once to a backend not met before: they wait for one connect,
        // as for an HTTP/2 backend; it chooses http/1.1, and the first takes the connection
        // and the others get one each.
        let urls = (1...20).map { "\(base)/fresh/\($0)" }
        let burst = try Shell.run(["curl", "-sS", "--max-time", "30", "--parallel", "--parallel-immediate", "--parallel-max", "20"] + urls, timeout: 60)
        XCTAssertEqual(burst.stdout, String(repeating: "HTTP/1.1 GET\n", count: 20), burst.stderr)
        // max_requests_per_connection: 2 on HTTP/1.1: five more requests, three more connections.
        for _ in 0..<5 { XCTAssertEqual(try Shell.run(["curl", "-sS", "--max-time", "30", base + "/old/again"], timeout: 60).stdout, "HTTP/1.1 GET\n") }
        let echo = try Shell.run(["/usr/bin/python3", repositoryRoot() + "/Tests/tools/ws_echo.py", "client", "127.0.0.1", "\(harness.port("http"))",
                                  "/ws", "--sizes", "5,70000"], timeout: 60)
        XCTAssertTrue(echo.stdout.contains("\"status\": \"HTTP/1.1 101 Switching Protocols\""), echo.stdout + echo.stderr)
        XCTAssertTrue(echo.stdout.contains("\"echoed\": [true, true]"), echo.stdout + echo.stderr)
        // Each group's checks, as nginx saw them: over HTTP/2 where the backend agreed.
        let checked = eventually(timeout: 20) {
            let seen = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return seen.contains("\(h2Port) HTTP/2.0 edge-gateway-health-check") && seen.contains("\(h1Port) HTTP/1.1 edge-gateway-health-check")
        }
        XCTAssertTrue(checked, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/upstreams"]).stdout
        XCTAssertTrue(status.contains("\"name\":\"either\",\"balance\":\"round_robin\",\"protocol\":\"auto\""), status)
        XCTAssertFalse(status.contains("\"health\":\"down\""), status)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
        let groups = try XCTUnwrap(json["upstreams"] as? [[String: Any]])
        func opened(_ name: String) -> (Int?, Int?) {
            let backend = (groups.first { $0["name"] as? String == name }?["backends"] as? [[String: Any]])?.first
            return (backend?["connections_opened"] as? Int, backend?["http2_connections_opened"] as? Int)
        }
        // The WebSocket's connection spoke HTTP/1.1: one of either's two, not HTTP/2.
        XCTAssertEqual(opened("either").0, 2, status)
        XCTAssertEqual(opened("either").1, 1, status)
        XCTAssertEqual(opened("older").1, 0, status)
        XCTAssertEqual(opened("older").0, 3, "six requests, two per connection: \(status)")
        XCTAssertEqual(opened("strict").1, 1, status)
        await harness.shutdown()
    }

    /// Streams are multiplexed within the upstream's SETTINGS_MAX_CONCURRENT_STREAMS: 50
    /// calls at once on one client connection, to a grpcio server that allows 2 streams
    /// per connection, all succeed; the server never sees more than 2 in flight on one
    /// connection, and sees 2 (the connections are shared); the calls spread over about
    /// 25 connections (more open when streams run out, instead of queueing 50 calls on
    /// one); with `max_connections_per_backend: 4` they share 4. An `auto` group over TLS
    /// multiplexes the same way once its backend agreed on h2: the burst waits for one
    /// connect first (it used to open a connection per call, 50). Afterwards no stream is
    /// in flight and the connections idle.
    func testStreamsAreMultiplexedWithinTheUpstreamsConcurrentStreamsLimit() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dir = TemporaryDirectory()
        let (open, capped, tlsPort) = (freePort(), freePort(), freePort())
        let servers = [
            try self.python("grpc_server.py", ["\(open)", "--max-streams", "2"], port: open, log: dir.file("open.log")),
            try self.python("grpc_server.py", ["\(capped)", "--max-streams", "2"], port: capped, log: dir.file("capped.log")),
            try self.python("grpc_server.py", ["\(tlsPort)", leaf.fullchain, leaf.key, "--max-streams", "2"], port: tlsPort, log: dir.file("tls.log")),
        ]
        defer { for server in servers { server.stop(signal: SIGKILL) } }
        let harness = try await GatewayHarness.start { _ in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
            upstreams:
              open: { backends: ["127.0.0.1:\(open)"], protocol: h2c }
              capped: { backends: ["127.0.0.1:\(capped)"], protocol: h2c, pool: { max_connections_per_backend: 4 } }
              either: { backends: ["localhost:\(tlsPort)"], protocol: auto, tls: { ca_file: \(pki.caPath) } }
            routes:
              - { host: capped.localhost, upstream: capped }
              - { host: auto.localhost, upstream: either }
              - { upstream: open }
            admin: { address: "127.0.0.1:0" }
            """
        }
        func burst(_ calls: Int, holdUntil: Int, authority: String? = nil) throws -> [String: Any] {
            var arguments = [repositoryRoot() + "/Tests/tools/grpc_burst.py", "\(harness.port("https"))", pki.caPath, "\(calls)", "\(holdUntil)"]
            if let authority { arguments.append(authority) }
            let run = try Shell.run(["/usr/bin/python3"] + arguments, timeout: 120)
            let json = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
            return try XCTUnwrap(json, run.stdout + run.stderr)
        }
        let first = try burst(50, holdUntil: 50)
        XCTAssertEqual(first["codes"] as? [String: Int], ["OK": 50], "\(first)")
        let stats = try XCTUnwrap(first["stats"] as? [String: Int], "\(first)")
        XCTAssertEqual(stats["max_per_connection"], 2, "\(first)")
        XCTAssertGreaterThanOrEqual(stats["connections"] ?? 0, 20, "more connections when streams ran out: \(first)")
        XCTAssertLessThanOrEqual(stats["connections"] ?? 99, 30, "streams shared connections: \(first)")

        let cappedRun = try burst(50, holdUntil: 8, authority: "capped.localhost")
        XCTAssertEqual(cappedRun["codes"] as? [String: Int], ["OK": 50], "\(cappedRun)")
        let cappedStats = try XCTUnwrap(cappedRun["stats"] as? [String: Int], "\(cappedRun)")
        XCTAssertEqual(cappedStats["max_per_connection"], 2, "\(cappedRun)")
        XCTAssertLessThanOrEqual(cappedStats["connections"] ?? 99, 4, "max_connections_per_backend: \(cappedRun)")

        let autoRun = try burst(50, holdUntil: 50, authority: "auto.localhost")
        XCTAssertEqual(autoRun["codes"] as? [String: Int], ["OK": 50], "\(autoRun)")
        let autoStats = try XCTUnwrap(autoRun["stats"] as? [String: Int], "\(autoRun)")
        XCTAssertEqual(autoStats["max_per_connection"], 2, "\(autoRun)")
        XCTAssertLessThanOrEqual(autoStats["connections"] ?? 99, 30, "auto over TLS: streams shared connections: \(autoRun)")

        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/upstreams"]).stdout
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
        for group in try XCTUnwrap(json["upstreams"] as? [[String: Any]]) {
            let backend = try XCTUnwrap((group["backends"] as? [[String: Any]])?.first, status)
            XCTAssertEqual(backend["streams_in_flight"] as? Int, 0, status)
            XCTAssertEqual(backend["idle_connections"] as? Int, backend["http2_connections_opened"] as? Int, "every connection idles: \(status)")
        }
        await harness.shutdown()
    }
}

extension UpstreamHTTP2Tests {
    /// `pool.ping_interval`: an idle HTTP/2 connection to a backend that stopped answering
    /// (a grpcio server stopped by SIGSTOP: its kernel still holds the connection open, as
    /// a host gone behind a NAT would look) is closed once a PING goes unanswered for
    /// `ping_timeout`, counted and named on /status/upstreams, and the next call opens a
    /// new connection instead of waiting on the dead one. A grpcio server with its default
    /// policy answers PINGs on an idle connection with GOAWAY ENHANCE_YOUR_CALM after a
    /// few; the gateway then closes that connection, and calls go on. Before, neither
    /// connection was PINGed and both stayed until the idle timeout.
    func testAnIdleConnectionThatStopsAnsweringPingsIsClosed() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dir = TemporaryDirectory()
        let (calmPort, stoppedPort) = (freePort(), freePort())
        let calm = try self.python("grpc_server.py", ["\(calmPort)"], port: calmPort, log: dir.file("calm.log"))
        defer { calm.stop(signal: SIGKILL) }
        let stopped = try self.python("grpc_server.py", ["\(stoppedPort)", "--allow-idle-pings"], port: stoppedPort, log: dir.file("stopped.log"))
        defer {
            kill(stopped.pid, SIGCONT)
            stopped.stop(signal: SIGKILL)
        }
        let harness = try await GatewayHarness.start { _ in
            """
            listeners:
              - name: calm
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
              - name: stopped
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
            upstreams:
              calm: { backends: ["127.0.0.1:\(calmPort)"], protocol: h2c, pool: { ping_interval: 100ms, ping_timeout: 2s } }
              stopped: { backends: ["127.0.0.1:\(stoppedPort)"], protocol: h2c, pool: { ping_interval: 100ms, ping_timeout: 1s } }
            routes:
              - { listener: calm, upstream: calm }
              - { listener: stopped, upstream: stopped }
            admin: { address: "127.0.0.1:0" }
            """
        }
        func call(_ listener: String) throws -> String {
            let run = try Shell.run(["/usr/bin/python3", repositoryRoot() + "/Tests/tools/grpc_call.py", "\(harness.port(listener))", pki.caPath,
                                     "/test.Echo/Unary", "20"], timeout: 60)
            let json = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
            return (json?["code"] as? String) ?? run.stdout + run.stderr
        }
        func backend(_ group: String) -> [String: Any] {
            let status = (try? Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/upstreams"]).stdout) ?? ""
            let json = try? JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any]
            let groups = json?["upstreams"] as? [[String: Any]] ?? []
            return (groups.first { $0["name"] as? String == group }?["backends"] as? [[String: Any]])?.first ?? [:]
        }

        XCTAssertEqual(try call("stopped"), "OK")
        XCTAssertEqual(backend("stopped")["idle_connections"] as? Int, 1)
        kill(stopped.pid, SIGSTOP)
        XCTAssertTrue(eventually { backend("stopped")["http2_ping_timeouts"] as? Int ?? 0 >= 1 }, "\(backend("stopped"))")
        let dead = backend("stopped")
        XCTAssertEqual(dead["idle_connections"] as? Int, 0, "\(dead)")
        XCTAssertEqual(dead["last_error"] as? String,
                       "127.0.0.1:\(stoppedPort): no PING ACK within 1000 ms (ping_timeout); the connection was closed", "\(dead)")
        kill(stopped.pid, SIGCONT)
        XCTAssertEqual(try call("stopped"), "OK")
        XCTAssertEqual(backend("stopped")["connections_opened"] as? Int, 2, "a new connection, not the dead one")
        XCTAssertGreaterThanOrEqual(metricSum("edge_upstream_http2_ping_timeouts_total", admin: harness.gateway.adminPort!) ?? 0, 1)

        XCTAssertEqual(try call("calm"), "OK")
        XCTAssertTrue(eventually { backend("calm")["idle_connections"] as? Int == 0 }, "the server's GOAWAY closed it: \(backend("calm"))")
        XCTAssertEqual(backend("calm")["http2_ping_timeouts"] as? Int, 0, "\(backend("calm"))")
        XCTAssertEqual(try call("calm"), "OK")
        await harness.shutdown()
    }
}

extension UpstreamHTTP2Tests {
    /// Back-pressure end to end on a bidirectional call (grpcio both ends, h2c upstream):
    /// a client that sends 64 MiB in 64 KiB messages and reads none of the echoes is held
    /// back. The gateway stops reading the server's replies while its client does not
    /// take them, the server stops reading, the gateway stops reading the client's
    /// messages, and the client's sending stalls after a small part of the 64 MiB (about
    /// 8 MiB, mostly in grpc's own windows), the gateway grown by about 1 MiB. Then the
    /// client reads, and every echo arrives, in order. A gateway that read the server
    /// regardless (tried: window given back whether the client reads or not) took all
    /// 64 MiB and grew by 120 MiB.
    func testABidiCallWhoseClientStopsReadingIsHeldBackEndToEnd() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dir = TemporaryDirectory()
        let port = freePort()
        let server = try self.python("grpc_server.py", ["\(port)"], port: port, log: dir.file("grpc.log"))
        defer { server.stop(signal: SIGKILL) }
        let harness = try await GatewayHarness.start { _ in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
            upstreams:
              grpc: { backends: ["127.0.0.1:\(port)"], protocol: h2c }
            routes:
              - { upstream: grpc }
            admin: { address: "127.0.0.1:0" }
            """
        }
        let warm = try Shell.run(["/usr/bin/python3", repositoryRoot() + "/Tests/tools/grpc_call.py", "\(harness.port("https"))", pki.caPath,
                                  "/test.Echo/Unary"], timeout: 60)
        XCTAssertTrue(warm.stdout.contains("\"OK\""), warm.stdout + warm.stderr)
        let before = memoryOf(pid: getpid()).rss
        let go = dir.file("go")
        let messages = 1024
        let client = try GatewayProcess(commandLine: ["/usr/bin/python3", repositoryRoot() + "/Tests/tools/grpc_backpressure.py",
                                                      "\(harness.port("https"))", pki.caPath, "\(messages)", go], logPath: dir.file("client.log"))
        defer { client.stop(signal: SIGKILL) }
        XCTAssertTrue(eventually(timeout: 120) { client.log.contains("stalled ") }, client.log)
        let grown = memoryOf(pid: getpid()).rss - before
        let sent = client.log.split(separator: "\n").first { $0.hasPrefix("stalled ") }.flatMap { Int($0.dropFirst(8)) } ?? messages
        XCTAssertLessThan(sent, messages / 2, "the client was held back after \(sent) of \(messages) messages of 64 KiB (about 130 here)")
        if !underAddressSanitizer {
            XCTAssertLessThan(grown, 24 * 1024, "the gateway grew by \(grown) KiB while \(sent * 64) KiB were sent and none read")
        }
        FileManager.default.createFile(atPath: go, contents: nil)
        XCTAssertTrue(eventually(timeout: 120) { client.log.contains("\"same\"") }, client.log)
        let line = client.log.split(separator: "\n").last.map(String.init) ?? ""
        let result = try XCTUnwrap(try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], client.log + server.log)
        XCTAssertEqual(result["sent"] as? Int, messages)
        XCTAssertEqual(result["echoed"] as? Int, messages)
        XCTAssertEqual(result["same"] as? Bool, true, "every echo, in order")
        await harness.shutdown()
    }
}

extension UpstreamHTTP2Tests {
    /// A call whose `grpc-timeout` passes while an h2c upstream still works on it: the
    /// client gets DEADLINE_EXCEEDED from the gateway at the deadline (not the server's
    /// answer 5 s later), the upstream's stream is reset and nothing stays in flight, and
    /// the connection stays in the pool, idle. (Over HTTP/1.1 the connection itself would
    /// have to close.)
    func testADeadlineThatPassesResetsTheUpstreamStreamOnly() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dir = TemporaryDirectory()
        let port = freePort()
        let server = try self.python("grpc_server.py", ["\(port)"], port: port, log: dir.file("grpc.log"))
        defer { server.stop(signal: SIGKILL) }
        let harness = try await GatewayHarness.start { _ in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
            upstreams:
              grpc: { backends: ["127.0.0.1:\(port)"], protocol: h2c }
            routes:
              - { upstream: grpc }
            admin: { address: "127.0.0.1:0" }
            """
        }
        func backend() -> [String: Any] {
            let status = (try? Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status/upstreams"]).stdout) ?? ""
            let json = try? JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any]
            return ((json?["upstreams"] as? [[String: Any]])?.first?["backends"] as? [[String: Any]])?.first ?? [:]
        }
        // A gRPC message: uncompressed, 4 bytes long, "1000" (Hold waits for 1,000 calls, or 5 s).
        let body = dir.file("hold.bin")
        FileManager.default.createFile(atPath: body, contents: Data([0, 0, 0, 0, 4]) + Data("1000".utf8))
        let started = Date()
        let late = try Shell.run(["nghttp", "-v", "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", "grpc-timeout: 300m",
                                  "-d", body, "https://localhost:\(harness.port("https"))/test.Echo/Hold"], timeout: 60).stdout
        let took = Date().timeIntervalSince(started)
        XCTAssertTrue(late.contains(":status: 200") && late.contains("grpc-status: 4"), "DEADLINE_EXCEEDED: \(late)")
        XCTAssertTrue(late.contains("grpc-message: deadline exceeded (grpc-timeout)"), late)
        XCTAssertLessThan(took, 4.5, "the gateway's answer at the deadline, not the server's after 5 s")
        XCTAssertTrue(eventually { backend()["streams_in_flight"] as? Int == 0 }, "\(backend())")
        XCTAssertEqual(backend()["idle_connections"] as? Int, 1, "the stream was reset, the connection kept: \(backend())")
        let next = try Shell.run(["/usr/bin/python3", repositoryRoot() + "/Tests/tools/grpc_call.py", "\(harness.port("https"))", pki.caPath,
                                  "/test.Echo/Unary"], timeout: 60)
        XCTAssertTrue(next.stdout.contains("\"OK\""), next.stdout + next.stderr)
        await harness.shutdown()
    }

    /// nginx answers a request whose body it does not read (a `return`, a static file)
    /// as soon as the head is in, then resets the stream with NO_ERROR to stop the rest of
    /// the body (RFC 9113 §8.1), once per request. NIO counts inbound resets against a
    /// rapid-reset limit (200 in 30 s) meant for clients: the upstream connection died
    /// at the 201st and took every stream in flight with it (502s, and for gRPC calls
    /// trailers-only UNAVAILABLE answers that h2load counts as successes: the upstream's
    /// own count shows them). h2load never retries: 600 POSTs of 20 kB, 10 at a time on
    /// one connection, every one answered by nginx.
    func testResetsAfterCompleteResponsesDoNotKillTheUpstreamConnection() async throws {
        let pki = try TestPKI()
        let leaf = try pki.issue(["localhost"])
        let dir = TemporaryDirectory()
        let h2cPort = freePort()
        let nginx = try NginxUpstream(directory: dir, port: h2cPort, servers: """
            log_format status "$status";
            server {
              listen 127.0.0.1:\(h2cPort) http2;
              keepalive_requests 100000;
              access_log \(dir.file("upstream-access.log")) status;
              location / { return 200 "answered before the body\\n"; }
            }
            """)
        defer { nginx.stop() }
        let harness = try await GatewayHarness.start { _ in
            """
            listeners:
              - name: https
                address: "127.0.0.1:0"
                tls: { certificate: \(leaf.fullchain), key: \(leaf.key), h2: true }
            upstreams:
              h2c: { backends: ["127.0.0.1:\(h2cPort)"], protocol: h2c }
            routes:
              - { upstream: h2c }
            admin: { address: "127.0.0.1:0" }
            """
        }
        try Data(repeating: 0x62, count: 20_000).write(to: URL(fileURLWithPath: dir.file("body")))
        let load = try Shell.run(["h2load", "-n", "600", "-c", "1", "-m", "10", "-d", dir.file("body"),
                                  "https://localhost:\(harness.port("https"))/post"], timeout: 180)
        XCTAssertTrue(load.stdout.contains("600 total, 600 started, 600 done, 600 succeeded, 0 failed, 0 errored"), load.stdout + load.stderr)
        XCTAssertTrue(load.stdout.contains("status codes: 600 2xx"), load.stdout)
        XCTAssertTrue(eventually { ((try? String(contentsOfFile: dir.file("upstream-access.log"))) ?? "").split(separator: "\n").count == 600 },
                      "nginx answered every request itself")
        XCTAssertFalse(harness.logs.contains("upstream request failed"), harness.logs.all.suffix(3).joined(separator: "\n"))
        await harness.shutdown()
    }
}
