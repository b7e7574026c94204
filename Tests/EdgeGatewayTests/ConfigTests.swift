import EdgeGateway
import EdgeProxy
import EdgeTestSupport
import Foundation
import XCTest

/// Configuration parsing and `edge-gateway check`, with the real binary.
final class ConfigTests: XCTestCase {
    static let pki = try! TestPKI()
    static let leaf = try! pki.issue(["localhost"])

    func config(cert: String, key: String, extra: String = "") -> String {
        """
        listeners:
          - name: https
            address: "127.0.0.1:\(freePort())"
            tls: { certificate: \(cert), key: \(key) }
        upstreams:
          app: { backends: ["127.0.0.1:9"] }
        routes:
          - upstream: app
        \(extra)
        """
    }

    func check(_ yaml: String) throws -> ProcessResult {
        let dir = TemporaryDirectory()
        try dir.write("config.yaml", yaml)
        return try Shell.run([gatewayBinary(), "check", "-c", dir.file("config.yaml")])
    }

    func testValidConfigurationPasses() throws {
        let result = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key))
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("is valid"), result.stdout)
    }

    func testUnknownKeysAreErrorsThatNameTheKeyPath() throws {
        XCTAssertThrowsError(try GatewayConfig.parse(yaml: "listeners: []\nroutes: []\nadmin: { adress: x }\n")) { error in
            XCTAssertEqual("\(error)".hasPrefix("admin.adress: unknown key 'adress' (did you mean 'address'?)"), true, "\(error)")
        }
        let result = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key) + "\nupstreams_typo: {}\n")
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("upstreams_typo: unknown key"), result.stderr)
        let nested = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key).replacingOccurrences(of: "backends:", with: "backend:"))
        XCTAssertTrue(nested.stderr.contains("upstreams.app.backend: unknown key 'backend' (did you mean 'backends'?)"), nested.stderr)
    }

    /// Every problem in the file at once, not the first one and then the next after a fix:
    /// misspelt keys anywhere, several bad values in one listener, a missing required key
    /// (the rest still read), and, when nothing had to be left out, the gateway's own
    /// checks beside the typos.
    func testEveryProblemIsReportedAtOnce() throws {
        let broken = try check("""
            listeners:
              - { name: a, address: "127.0.0.1:0", timeouts: { idle: 5x, header: later }, max_request_head_bytes: lots }
              - { name: b, adress: ":8080" }
            upstreams:
              app: { backends: ["127.0.0.1:9"] }
              other: { backend: ["127.0.0.1:9"] }
            routes:
              - { upstream: app }
              - { path_prefx: /x, upstream: app }
            admin: { address: "127.0.0.1:0" }
            shutdown_grace_period: soon
            """)
        XCTAssertEqual(broken.status, 1)
        for expected in ["listeners[0].timeouts.idle: invalid duration '5x'", "listeners[0].timeouts.header: invalid duration 'later'",
                         "listeners[0].max_request_head_bytes: expected a number", "listeners[1].adress: unknown key 'adress' (did you mean 'address'?)",
                         "listeners[1].address: required key is missing", "upstreams.other.backend: unknown key 'backend' (did you mean 'backends'?)",
                         "routes[1].path_prefx: unknown key 'path_prefx' (did you mean 'path_prefix'?)", "shutdown_grace_period: invalid duration 'soon'"] {
            XCTAssertTrue(broken.stderr.contains(expected), "missing '\(expected)' in:\n\(broken.stderr)")
        }
        XCTAssertFalse(broken.stderr.contains("no upstream named"), "no cross-reference check on a file that did not decode: \(broken.stderr)")
        // Only misspelt keys: the rest decodes, and the gateway's checks run as well.
        let typos = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key)
            .replacingOccurrences(of: "  - upstream: app", with: "  - { upstream: missing, path_prefx: /x }") + "\nworkerz: 2\n")
        XCTAssertEqual(typos.status, 1)
        for expected in ["routes[0].path_prefx: unknown key", "workerz: unknown key 'workerz' (did you mean 'workers'?)",
                         "routes[0].upstream: no upstream named 'missing'"] {
            XCTAssertTrue(typos.stderr.contains(expected), "missing '\(expected)' in:\n\(typos.stderr)")
        }
        XCTAssertEqual(typos.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") }.count, 3, typos.stderr)
    }

    /// A path_prefix that is not in normal form would never match (requests are matched
    /// in normal form): the error says what to write instead.
    func testPathPrefixesMustBeInNormalForm() throws {
        let result = try check("""
            listeners: [ { name: a, address: "127.0.0.1:0" } ]
            upstreams: { app: { backends: ["127.0.0.1:1"] } }
            routes: [ { path_prefix: /%7Euser, upstream: app }, { path_prefix: "/a/../b", upstream: app }, { path_prefix: "/x/..;/y", upstream: app } ]
            """)
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertTrue(result.stderr.contains("routes[0].path_prefix: '/%7Euser' never matches, requests are matched in normal form: write '/~user'"), result.stderr)
        XCTAssertTrue(result.stderr.contains("routes[1].path_prefix: '/a/../b' never matches"), result.stderr)
        XCTAssertTrue(result.stderr.contains("routes[2].path_prefix: '/x/..;/y' is not a path a request can have"), result.stderr)
    }

    /// Durations that converting to nanoseconds would trap on (found by the fuzz target
    /// FuzzConfig: `infs` stopped `check` with a crash) are errors naming the key.
    func testDurationsBeyondRangeAreErrorsNotCrashes() throws {
        let result = try check("""
            listeners: [ { name: a, address: "127.0.0.1:0", timeouts: { idle: infs, header: 1e30s, body: .inf, handshake: -1 } } ]
            upstreams: { app: { backends: ["127.0.0.1:1"] } }
            routes: [ { upstream: app } ]
            """)
        XCTAssertEqual(result.status, 1, result.stderr)
        for key in ["timeouts.idle", "timeouts.header", "timeouts.body", "timeouts.handshake"] {
            XCTAssertTrue(result.stderr.contains("listeners[0].\(key)"), "missing \(key) in:\n\(result.stderr)")
        }
    }

    func testBadValuesNameTheKey() throws {
        let result = try check("""
            listeners:
              - { name: a, address: "nonsense" }
              - { name: a, address: "127.0.0.1:99999" }
            upstreams:
              app: { backends: ["127.0.0.1:x"], timeouts: { connect: 2s } }
            routes:
              - { upstream: missing }
            admin: { address: "0.0.0.0:9901" }
            """)
        XCTAssertEqual(result.status, 1)
        for expected in ["listeners[0].address", "listeners[1].name: duplicate", "listeners[1].address: invalid port",
                         "upstreams.app.backends[0]", "routes[0].upstream: no upstream named 'missing'", "admin.address: '0.0.0.0:9901' is not a loopback"] {
            XCTAssertTrue(result.stderr.contains(expected), "missing '\(expected)' in:\n\(result.stderr)")
        }
        let duration = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key).replacingOccurrences(of: "app: { backends: [\"127.0.0.1:9\"] }", with: "app: { backends: [\"127.0.0.1:9\"], timeouts: { read: soon } }"))
        XCTAssertTrue(duration.stderr.contains("upstreams.app.timeouts.read: invalid duration 'soon'"), duration.stderr)
        let tickets = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key)
            .replacingOccurrences(of: "key: \(Self.leaf.key) }", with: "key: \(Self.leaf.key), session_tickets: { num_tickets: 0 } }"))
        XCTAssertTrue(tickets.stderr.contains("listeners[0].tls.session_tickets.num_tickets: must be 1 to 8"), tickets.stderr)
        let body = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key)
            .replacingOccurrences(of: "    tls: {", with: "    max_request_body_bytes: 0\n    tls: {"))
        XCTAssertTrue(body.stderr.contains("listeners[0].max_request_body_bytes: must be at least 1"), body.stderr)
        let preload = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key)
            .replacingOccurrences(of: "key: \(Self.leaf.key) }", with: "key: \(Self.leaf.key), hsts: { preload: true } }"))
        XCTAssertTrue(preload.stderr.contains("listeners[0].tls.hsts.preload: needs include_subdomains: true"), preload.stderr)
        let from = try check("""
            listeners:
              - { name: a, address: "127.0.0.1:0", proxy_protocol: true, proxy_protocol_from: ["10.1.2.3/8", "2001:db8::/129", "balancer.internal"] }
              - { name: b, address: "127.0.0.1:0", proxy_protocol_from: ["10.0.0.0/8"] }
              - { name: c, address: "127.0.0.1:0", proxy_protocol: true, proxy_protocol_from: [] }
            upstreams:
              app: { backends: ["127.0.0.1:9"] }
            routes:
              - { upstream: app }
            """)
        XCTAssertEqual(from.status, 1)
        for expected in [#"listeners[0].proxy_protocol_from[0]: "10.1.2.3/8" has bits set after its /8 prefix: the range is 10.0.0.0/8"#,
                         #"listeners[0].proxy_protocol_from[1]: "2001:db8::/129": the prefix length must be 0 to 128"#,
                         #"listeners[0].proxy_protocol_from[2]: "balancer.internal" is not an IPv4 or IPv6 address or CIDR range"#,
                         "listeners[1].proxy_protocol_from: applies only with proxy_protocol: true",
                         "listeners[2].proxy_protocol_from: lists no address"] {
            XCTAssertTrue(from.stderr.contains(expected), "missing '\(expected)' in:\n\(from.stderr)")
        }
        let accessLog = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key) + "\naccess_log: { path: /nonexistent/access.log, format: clf }\n")
        XCTAssertTrue(accessLog.stderr.contains("access_log.format: must be combined or json, got 'clf'"), accessLog.stderr)
        let unwritable = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key) + "\naccess_log: { path: /nonexistent/access.log }\n")
        XCTAssertTrue(unwritable.stderr.contains("access_log.path: /nonexistent/access.log: cannot be created in /nonexistent: No such file or directory"), unwritable.stderr)
        // The OCSP cache directory is looked at, never created, by `check`.
        let ocsp = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key) + "\nocsp: { cache_dir: \(Self.leaf.key), responder_timeout: 2m }\n")
        XCTAssertTrue(ocsp.stderr.contains("ocsp.responder_timeout: between 1s and 60s"), ocsp.stderr)
        let notDirectory = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key) + "\nocsp: { cache_dir: \(Self.leaf.key) }\n")
        XCTAssertTrue(notDirectory.stderr.contains("ocsp.cache_dir: \(Self.leaf.key) is not a directory"), notDirectory.stderr)
        let missing = FileManager.default.temporaryDirectory.appendingPathComponent("ocsp-\(UUID().uuidString)").path
        XCTAssertEqual(try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key) + "\nocsp: { cache_dir: \(missing) }\n").status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: missing), "check creates nothing")
    }

    func testBadRoutesNameTheRouteAndTheKey() throws {
        let dir = TemporaryDirectory()
        try dir.write("www/file.txt", "x")
        let result = try check(config(cert: Self.leaf.fullchain, key: Self.leaf.key).replacingOccurrences(of: "  - upstream: app", with: """
              - { upstream: app, redirect: {} }
              - { path_prefix: /x }
              - { listener: plain, upstream: app }
              - { redirect: { scheme: ftp, status: 200, port: 0, host: "a b" } }
              - { root: \(dir.file("missing")) }
              - { root: \(dir.file("www/file.txt")) }
              - { upstream: app, max_request_body_bytes: 0 }
              - { root: \(dir.file("www")) }
            """))
        XCTAssertEqual(result.status, 1)
        for expected in ["routes[0]: needs exactly one of upstream, redirect, root (has 2)", "routes[1]: needs exactly one of upstream, redirect, root (has none)",
                         "routes[2].listener: no listener named 'plain' (known: https)",
                         "routes[3].redirect.scheme: must be https or http, got 'ftp'", "routes[3].redirect.status: must be one of 301, 302, 303, 307, 308, got 200",
                         "routes[3].redirect.port: must be 1-65535, got 0", "routes[3].redirect.host: 'a b' is not a DNS name or an IP address",
                         "routes[4].root: \(dir.file("missing")): No such file or directory", "routes[5].root: \(dir.file("www/file.txt")): not a directory",
                         "routes[6].max_request_body_bytes: must be at least 1, got 0"] {
            XCTAssertTrue(result.stderr.contains(expected), "missing '\(expected)' in:\n\(result.stderr)")
        }
        XCTAssertThrowsError(try GatewayConfig.parse(yaml: "listeners: []\nroutes: [ { redirect: { stauts: 301 } } ]\n")) { error in
            XCTAssertTrue("\(error)".hasPrefix("routes[0].redirect.stauts: unknown key 'stauts' (did you mean 'status'?)"), "\(error)")
        }
    }

    /// Keys that take one of a few words are decoded as enums: a word outside them names
    /// the key and the choices, the gateway's own checks still run beside it, and the
    /// other spellings operators know are taken.
    func testWordsOutsideAKeysChoicesNameTheChoices() throws {
        let yaml = config(cert: Self.leaf.fullchain, key: Self.leaf.key)
            .replacingOccurrences(of: "tls: { certificate:", with: "tls: { profile: old, min_version: TLSv1.4, client_auth: { ca_file: \(Self.pki.caPath), mode: maybe }, certificate:")
            .replacingOccurrences(of: "backends: [\"127.0.0.1:9\"]", with: "backends: [\"127.0.0.1:9\"], balance: fastest, max_connect_attempts: 0")
        let result = try check(yaml)
        XCTAssertEqual(result.status, 1)
        for expected in ["listeners[0].tls.profile: 'old' is not one of intermediate, modern",
                         "listeners[0].tls.min_version: 'TLSv1.4' is not one of TLSv1.2, TLSv1.3",
                         "listeners[0].tls.client_auth.mode: 'maybe' is not one of required, optional",
                         "upstreams.app.balance: 'fastest' is not one of round_robin, weighted_round_robin, random, least_conn, consistent_hash",
                         "upstreams.app.max_connect_attempts: must be at least 1"] {
            XCTAssertTrue(result.stderr.contains(expected), "missing '\(expected)' in:\n\(result.stderr)")
        }
        for (word, expected) in [("least_connections", BalanceChoice.leastConn), ("ketama", .consistentHash), ("weighted_round_robin", .weightedRoundRobin)] {
            let config = try GatewayConfig.parse(yaml: "listeners: []\nupstreams: { app: { backends: [\"127.0.0.1:1\"], balance: \(word) } }\nroutes: []\n")
            XCTAssertEqual(config.upstreams["app"]?.balance, expected, word)
        }
    }

    /// `protocol` must fit the group's transport: h2 and auto (ALPN) are over the group's
    /// TLS, h2c plain; a grpc check and PINGs need a group that may speak HTTP/2 (an http
    /// check speaks the group's protocol). Each problem names the key; HAProxy's and the
    /// HTTP/1.1 spellings are taken.
    func testAnUpstreamProtocolMustFitItsTransport() throws {
        let yaml = config(cert: Self.leaf.fullchain, key: Self.leaf.key).replacingOccurrences(of: "  app: { backends: [\"127.0.0.1:9\"] }", with: """
              app: { backends: ["127.0.0.1:9"], protocol: h2 }
              tlsplain: { backends: ["127.0.0.1:9"], protocol: h2c, tls: { ca_file: \(Self.pki.caPath) } }
              probe: { backends: ["127.0.0.1:9"], protocol: h2c, health_check: { kind: http } }
              either: { backends: ["127.0.0.1:9"], protocol: auto }
              limits: { backends: ["127.0.0.1:9"], protocol: h2c, pool: { max_streams_per_connection: 0, max_connections_per_backend: -1, max_requests_per_connection: -2 } }
              three: { backends: ["127.0.0.1:9"], protocol: http3 }
              pings: { backends: ["127.0.0.1:9"], pool: { ping_interval: 10s, ping_timeout: 0s } }
              nopings: { backends: ["127.0.0.1:9"], protocol: h2c, pool: { ping_interval: 0s } }
              slowpings: { backends: ["127.0.0.1:9"], protocol: h2c, pool: { ping_interval: 60s }, timeouts: { idle: 30s } }
              orphan: { backends: ["127.0.0.1:9"], protocol: h2c, pool: { ping_timeout: 1s } }
              grpcplain: { backends: ["127.0.0.1:9"], health_check: { kind: grpc } }
              svc: { backends: ["127.0.0.1:9"], health_check: { kind: http, service: x } }
            """)
        let result = try check(yaml)
        XCTAssertEqual(result.status, 1)
        for expected in ["upstreams.app.protocol: h2 is HTTP/2 over TLS and needs the group's tls settings; use h2c for plain HTTP/2",
                         "upstreams.tlsplain.protocol: h2c is HTTP/2 without TLS; use h2 with the group's tls settings",
                         "upstreams.either.protocol: auto chooses between h2 and http/1.1 by ALPN, which needs the group's tls settings; use h2c for plain HTTP/2",
                         "upstreams.three.protocol: 'http3' is not one of http1, h2, h2c, auto",
                         "upstreams.limits.pool.max_streams_per_connection: must be at least 1, got 0",
                         "upstreams.limits.pool.max_connections_per_backend: must not be negative (0 is no limit)",
                         "upstreams.limits.pool.max_requests_per_connection: must not be negative (0 is no limit)",
                         "upstreams.pings.pool.ping_interval: only HTTP/2 connections are PINGed; the group's protocol is http1 (use h2, h2c or auto)",
                         "upstreams.pings.pool.ping_timeout: must be more than 0",
                         "upstreams.nopings.pool.ping_interval: must be more than 0 (leave it out for no PINGs)",
                         "upstreams.slowpings.pool.ping_interval: 60s is not shorter than timeouts.idle (30s): an idle connection would close before its first PING",
                         "upstreams.orphan.pool.ping_timeout: only used with pool.ping_interval",
                         "upstreams.grpcplain.health_check.kind: a grpc check speaks HTTP/2: set the group's protocol to h2, h2c or auto",
                         "upstreams.svc.health_check.service: only used with kind: grpc"] {
            XCTAssertTrue(result.stderr.contains(expected), "missing '\(expected)' in:\n\(result.stderr)")
        }
        XCTAssertFalse(result.stderr.contains("upstreams.probe"), result.stderr)
        for (word, expected) in [("http2", UpstreamProtocol.h2), ("http/1.1", .http1), ("h2c", .h2c), ("auto", .auto)] {
            let config = try GatewayConfig.parse(yaml: "listeners: []\nupstreams: { app: { backends: [\"127.0.0.1:1\"], protocol: \"\(word)\" } }\nroutes: []\n")
            XCTAssertEqual(config.upstreams["app"]?.upstreamProtocol, expected, word)
        }
    }

    func testBadCertificateFilesFailWithTheFileAndTheReason() throws {
        let dir = TemporaryDirectory()
        let other = try Self.pki.issue(["other"])
        try dir.write("garbage.pem", "this is not PEM\n")
        try dir.write("empty.pem", "")
        try FileManager.default.createDirectory(atPath: dir.file("adir.pem"), withIntermediateDirectories: true)
        let truncated = try String(contentsOfFile: Self.leaf.fullchain, encoding: .utf8).prefix(300)
        try dir.write("truncated.pem", String(truncated))
        let cases: [(cert: String, key: String, expect: String)] = [
            (dir.file("missing.pem"), Self.leaf.key, "missing.pem: No such file or directory"),
            (dir.file("adir.pem"), Self.leaf.key, "adir.pem: is a directory, not a regular file"),
            (dir.file("garbage.pem"), Self.leaf.key, "garbage.pem: no CERTIFICATE block found"),
            (dir.file("empty.pem"), Self.leaf.key, "empty.pem: file is empty"),
            (dir.file("truncated.pem"), Self.leaf.key, "truncated.pem: malformed PEM"),
            (Self.leaf.fullchain, dir.file("garbage.pem"), "garbage.pem: no PRIVATE KEY block found"),
            (Self.leaf.fullchain, other.key, "private key does not match the certificate"),
        ]
        for c in cases {
            let result = try check(config(cert: c.cert, key: c.key))
            XCTAssertEqual(result.status, 1, "\(c.expect): \(result.stdout)")
            XCTAssertTrue(result.stderr.contains(c.expect), "expected '\(c.expect)' in: \(result.stderr)")
            XCTAssertTrue(result.stderr.contains("listeners[0].tls"), result.stderr)
        }
    }

    func testChainOutOfOrderIsRefused() throws {
        let dir = TemporaryDirectory()
        let leafPEM = try String(contentsOfFile: Self.leaf.certificate, encoding: .utf8)
        let intermediate = try String(contentsOfFile: Self.pki.intermediatePath, encoding: .utf8)
        let root = try String(contentsOfFile: Self.pki.caPath, encoding: .utf8)
        try dir.write("wrong-order.pem", leafPEM + root + intermediate)
        let result = try check(config(cert: dir.file("wrong-order.pem"), key: Self.leaf.key))
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("chain out of order"), result.stderr)
    }

    func testRunRefusesBadCertificatesBeforeBindingAnyPort() throws {
        let dir = TemporaryDirectory()
        let port = freePort()
        try dir.write("garbage.pem", "nope")
        try dir.write("config.yaml", """
            listeners:
              - { name: http, address: "127.0.0.1:\(port)" }
              - name: https
                address: "127.0.0.1:\(freePort())"
                tls: { certificate: \(dir.file("garbage.pem")), key: \(Self.leaf.key) }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:\(freePort())" }
            """)
        let process = try GatewayProcess(config: dir.file("config.yaml"), logPath: dir.file("log"))
        process.process.waitUntilExit()
        XCTAssertEqual(process.process.terminationStatus, 1)
        XCTAssertTrue(process.log.contains("garbage.pem: no CERTIFICATE block found"), process.log)
        XCTAssertFalse(process.log.contains("listening"), "no port is bound: \(process.log)")
    }

    func testHelpAndVersion() throws {
        let help = try Shell.run([gatewayBinary(), "--help"])
        XCTAssertTrue(help.stdout.contains("run") && help.stdout.contains("check"), help.stdout)
        let version = try Shell.run([gatewayBinary(), "--version"])
        XCTAssertEqual(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines), gatewayVersion)
    }
}
