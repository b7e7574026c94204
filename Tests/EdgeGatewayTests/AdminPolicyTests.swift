@testable import EdgeGateway
import EdgeTestSupport
import Foundation
import NIOHTTP1
import XCTest

/// The admin endpoint answers its operator, not a web page in the operator's browser
/// (#29 item 10): DNS rebinding, cross-site requests and simple-request reloads are refused.
final class AdminPolicyTests: XCTestCase {
    func head(_ method: HTTPMethod, _ uri: String, _ headers: [(String, String)]) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HTTPHeaders(headers))
    }

    func testHostsOriginsAndReloadsWithoutSockets() {
        let policy = AdminRequestPolicy(allowedHosts: ["admin.internal"])
        for host in ["127.0.0.1:9901", "localhost:9901", "[::1]:9901", "10.0.0.5", "admin.internal:9901", "LOCALHOST"] {
            XCTAssertNil(policy.refusal(head(.GET, "/status", [("Host", host)])), host)
        }
        XCTAssertNil(policy.refusal(head(.GET, "/status", [])), "no Host (HTTP/1.0 tools)")
        // DNS rebinding: the attacker's own name, resolving to 127.0.0.1.
        XCTAssertEqual(policy.refusal(head(.GET, "/status", [("Host", "rebind.attacker.test:9901")]))?.0, .misdirectedRequest)
        XCTAssertEqual(policy.refusal(head(.GET, "/metrics", [("Host", "127.0.0.1"), ("Host", "evil.test")]))?.0, .badRequest)
        // Cross-site requests, by fetch metadata or Origin.
        XCTAssertEqual(policy.refusal(head(.GET, "/status", [("Host", "127.0.0.1"), ("Sec-Fetch-Site", "cross-site")]))?.0, .forbidden)
        XCTAssertEqual(policy.refusal(head(.GET, "/status", [("Host", "127.0.0.1"), ("Sec-Fetch-Site", "same-site")]))?.0, .forbidden)
        XCTAssertNil(policy.refusal(head(.GET, "/", [("Host", "127.0.0.1"), ("Sec-Fetch-Site", "none")])), "typed into the address bar")
        XCTAssertEqual(policy.refusal(head(.POST, "/reload", [("Host", "127.0.0.1"), ("Origin", "https://evil.test"),
                                                              ("X-Edge-Gateway-Reload", "1")]))?.0, .forbidden)
        XCTAssertNil(policy.refusal(head(.GET, "/status", [("Host", "127.0.0.1:9901"), ("Origin", "http://127.0.0.1:9901")])))
        // A reload must be a request no browser sends cross-site without a preflight.
        XCTAssertEqual(policy.refusal(head(.POST, "/reload", [("Host", "127.0.0.1"), ("Content-Type", "text/plain")]))?.0, .forbidden)
        XCTAssertNil(policy.refusal(head(.POST, "/reload", [("Host", "127.0.0.1"), ("X-Edge-Gateway-Reload", "1")])))
        XCTAssertNil(policy.refusal(head(.POST, "/reload", [("Host", "127.0.0.1"), ("Content-Type", "application/json")])))
    }

    func testLoopbackIsParsedNotMatchedAsText() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "localhost"] { XCTAssertTrue(isLoopbackHost(host), host) }
        for host in ["127.evil.test", "0.0.0.0", "10.0.0.1", "::", "::2", "1270.0.0.1"] { XCTAssertFalse(isLoopbackHost(host), host) }
    }

    /// The same with curl against a running endpoint: a cross-site simple POST does not reload.
    func testACrossSiteSimplePostDoesNotReload() async throws {
        let harness = try await GatewayHarness.start { port in
            """
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let admin = harness.gateway.adminPort ?? 0
        func curl(_ args: [String]) throws -> String {
            try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"] + args).stdout
        }
        XCTAssertEqual(try curl(["-X", "POST", "-H", "Content-Type: text/plain", "-H", "Origin: https://evil.test", "http://127.0.0.1:\(admin)/reload"]), "403")
        XCTAssertEqual(try curl(["-X", "POST", "http://127.0.0.1:\(admin)/reload"]), "403", "a reload needs the header")
        XCTAssertEqual(try curl(["-H", "Host: rebind.attacker.test", "http://127.0.0.1:\(admin)/status"]), "421")
        // doc-command: curl -X POST -H 'X-Edge-Gateway-Reload: 1' http://127.0.0.1:9901/reload
        XCTAssertEqual(try curl(["-X", "POST", "-H", "X-Edge-Gateway-Reload: 1", "http://127.0.0.1:\(admin)/reload"]), "200")
        XCTAssertTrue(harness.logs.contains("admin request refused"))
        await harness.shutdown()
    }
}
