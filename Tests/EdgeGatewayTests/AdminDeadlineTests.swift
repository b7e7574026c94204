@testable import EdgeGateway
import EdgeTestSupport
import Foundation
import NIOCore
import XCTest

final class AdminDeadlineTests: XCTestCase {
    private let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    /// Without sockets: the first request is timed from the start, the next from the
    /// previous response, none while one is handled; a stale timer does nothing.
    func testTheNextRequestIsDueWithinTheHeaderThenTheIdleTimeout() {
        var deadline = AdminConnectionDeadline(header: .seconds(30), idle: .seconds(75))
        XCTAssertEqual(deadline.opened(now: start), .schedule(start + .seconds(30)))
        XCTAssertEqual(deadline.reached(now: start + .seconds(29)), .schedule(start + .seconds(30)), "early: armed again")
        XCTAssertEqual(deadline.reached(now: start + .seconds(30)), .close)

        XCTAssertEqual(deadline.requestEnded(), .cancel)
        XCTAssertEqual(deadline.reached(now: start + .seconds(500)), .none, "a request is handled: no deadline")
        let answered = start + .seconds(40)
        XCTAssertEqual(deadline.responseEnded(now: answered), .schedule(answered + .seconds(75)))
        XCTAssertEqual(deadline.reached(now: answered + .seconds(74)), .schedule(answered + .seconds(75)))
        XCTAssertEqual(deadline.reached(now: answered + .seconds(75)), .close)
    }

    /// A connection that sends nothing, half a head, a head without its body, or a request
    /// and then nothing, is closed at its deadline; the answer it asked for comes first.
    func testAdminConnectionsThatSendNoWholeRequestAreClosed() async throws {
        let harness = try await GatewayHarness.start { port in
            """
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0", timeouts: { header: 1s, idle: 2s } }
            """
        }
        let admin = harness.gateway.adminPort ?? 0
        func exchange(_ text: String) -> (response: String, closed: Bool, seconds: Double) {
            let begin = Date()
            let (response, closed) = rawExchange(port: admin, send: Array(text.utf8), timeout: 8)
            return (response, closed, Date().timeIntervalSince(begin))
        }
        for partial in ["", "GET /status HTTP/1.1\r\nHost: local", "POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n"] {
            let result = exchange(partial)
            XCTAssertTrue(result.closed, "open after 8 s: \(partial.debugDescription)")
            XCTAssertEqual(result.response, "", partial.debugDescription)
            XCTAssertGreaterThan(result.seconds, 0.8, "closed before the header timeout: \(partial.debugDescription)")
        }
        let kept = exchange("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\nGET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        XCTAssertEqual(kept.response.components(separatedBy: "HTTP/1.1 200").count - 1, 2, "two pipelined requests, two answers: \(kept.response)")
        XCTAssertTrue(kept.closed, "a kept-alive admin connection stayed open 8 s")
        XCTAssertGreaterThan(kept.seconds, 1.8, "closed before the idle timeout")
        let malformed = exchange("GET /status HTTP/1.1\r\nHost: localhost\r\nbad header\r\n\r\n")
        XCTAssertTrue(malformed.response.hasPrefix("HTTP/1.1 400"), malformed.response)
        XCTAssertTrue(malformed.closed)
        XCTAssertLessThan(malformed.seconds, 0.9, "a request NIO cannot parse closes the connection at once, not at the deadline")
        await harness.shutdown()
    }

    func testAZeroAdminTimeoutIsRefusedByName() throws {
        let config = try GatewayConfig.parse(yaml: """
            listeners: [ { name: http, address: "127.0.0.1:0" } ]
            upstreams: { app: { backends: ["127.0.0.1:1"] } }
            routes: [ { upstream: app } ]
            admin: { timeouts: { idle: 0s } }
            """)
        XCTAssertThrowsError(try Gateway.prepare(config: config, baseDirectory: "/tmp", logger: .init(label: "test"))) { error in
            XCTAssertTrue("\(error)".contains("admin.timeouts.idle: must be more than 0"), "\(error)")
        }
    }
}
