@testable import EdgeProxy
import XCTest

/// The retry and failover rule as a table (#31): every failure before the response, for a
/// GET and a POST, held or not, on a reused connection or not, with backends left or not.
/// The end-to-end tests (UpstreamTests, FaultTests, UpstreamTLSFailoverTests) show the
/// handler performs it; this shows the rule.
final class RetryPolicyTests: XCTestCase {
    typealias D = FailedAttempt.Decision

    func decide(_ failure: FailedAttempt.Failure, get: Bool = true, held: Bool = true, ended: Bool = true, reused: Bool = false,
                retriedStale: Bool = false, unprocessed: Int = 0, attempts: Int = 1, max: Int = 3, withinNextUpstream: Bool = true) -> D {
        FailedAttempt(failure: failure, idempotent: get, held: held, requestEnded: ended, reused: reused, retriedStale: retriedStale,
                      unprocessedRetries: unprocessed, attempts: attempts, maxAttempts: max, withinNextUpstream: withinNextUpstream).decision
    }

    /// Nothing was sent: any request moves on while backends are left.
    func testAFailedConnectMovesOnForAnyRequest() {
        XCTAssertEqual(decide(.connect), .anotherBackend)
        XCTAssertEqual(decide(.connect, get: false, held: false, ended: false), .anotherBackend, "a POST too: nothing was sent")
        XCTAssertEqual(decide(.connect, attempts: 2, max: 3), .anotherBackend)
        XCTAssertEqual(decide(.connect, attempts: 3, max: 3), .fail, "max_connect_attempts reached")
        XCTAssertEqual(decide(.connect, attempts: 1, max: 1), .fail, "max_connect_attempts: 1 never moves on")
        XCTAssertEqual(decide(.connect, reused: true), .anotherBackend, "a connect never reuses")
    }

    /// The upstream read nothing, but what was sent must still be held to send again.
    func testATLS13RefusalMovesOnWhenTheRequestIsHeld() {
        XCTAssertEqual(decide(.refusedAfterHandshake), .anotherBackend)
        XCTAssertEqual(decide(.refusedAfterHandshake, get: false), .anotherBackend, "a held POST too: it was not read")
        XCTAssertEqual(decide(.refusedAfterHandshake, held: false), .fail, "a body beyond the retry buffer is gone")
        XCTAssertEqual(decide(.refusedAfterHandshake, attempts: 3), .fail)
    }

    /// A reused connection that broke was closed idle by the upstream: the request goes
    /// once to a fresh connection (an idempotent one, or a whole small POST); after that,
    /// or on a new connection, only an idempotent request moves on to another backend.
    func testABrokenConnection() {
        XCTAssertEqual(decide(.broken, reused: true), .freshConnection)
        XCTAssertEqual(decide(.broken, get: false, reused: true), .freshConnection, "a whole held POST: the upstream closed it idle")
        XCTAssertEqual(decide(.broken, get: false, ended: false, reused: true), .fail, "a POST still being sent may have been read")
        XCTAssertEqual(decide(.broken, get: true, ended: false, reused: true), .freshConnection)
        XCTAssertEqual(decide(.broken, reused: true, retriedStale: true), .anotherBackend, "once only; then as a new connection")
        XCTAssertEqual(decide(.broken, held: false, reused: true), .fail, "nothing held to send again")
        XCTAssertEqual(decide(.broken, reused: true, attempts: 3), .freshConnection, "the stale replay is not an attempt")
        XCTAssertEqual(decide(.broken), .anotherBackend, "nginx's proxy_next_upstream error")
        XCTAssertEqual(decide(.broken, get: false), .fail, "a POST may have been acted on")
        XCTAssertEqual(decide(.broken, attempts: 3), .fail)
        XCTAssertEqual(decide(.broken, held: false), .fail)
    }

    /// An HTTP/2 upstream that refused the stream (REFUSED_STREAM, or above its GOAWAY's
    /// last stream) processed nothing: any held request goes again, a POST still being
    /// sent too, on another connection to the same backend up to three times (one request
    /// can meet GOAWAYs in a row on a busy multiplexed backend), then to another backend.
    /// A stream reset with another code is a broken connection that was not idle
    /// (`reused: false` for the handler): only an idempotent request moves on.
    func testARefusedStreamWasNotProcessed() {
        XCTAssertEqual(decide(.notProcessed), .freshConnection)
        XCTAssertEqual(decide(.notProcessed, get: false, ended: false), .freshConnection, "a POST, even one still being sent")
        XCTAssertEqual(decide(.notProcessed, attempts: 3), .freshConnection, "the same backend, not counted")
        XCTAssertEqual(decide(.notProcessed, retriedStale: true, unprocessed: 2), .freshConnection, "refused again: still routine")
        XCTAssertEqual(decide(.notProcessed, retriedStale: true, unprocessed: 3), .anotherBackend, "refused three times: elsewhere")
        XCTAssertEqual(decide(.notProcessed, retriedStale: true, unprocessed: 3, attempts: 3), .fail)
        XCTAssertEqual(decide(.notProcessed, held: false), .fail, "a body beyond the retry buffer is gone")
        XCTAssertEqual(decide(.broken, get: false, reused: false), .fail, "a POST whose stream was reset may have been acted on")
    }

    /// A hung backend: an idempotent held request moves on within next_upstream.
    func testAReadTimeout() {
        XCTAssertEqual(decide(.readTimeout), .anotherBackend)
        XCTAssertEqual(decide(.readTimeout, withinNextUpstream: false), .fail, "timeouts.next_upstream passed")
        XCTAssertEqual(decide(.readTimeout, get: false), .fail, "a POST gets 504")
        XCTAssertEqual(decide(.readTimeout, held: false), .fail)
        XCTAssertEqual(decide(.readTimeout, attempts: 3), .fail)
        XCTAssertEqual(decide(.readTimeout, reused: true), .anotherBackend, "no fresh-connection replay for a timeout")
    }

    /// A backend that answered badly has acted on the request: never again.
    func testABadAnswerIsNeverRetried() {
        for get in [true, false] {
            for reused in [true, false] {
                XCTAssertEqual(decide(.other, get: get, reused: reused), .fail)
            }
        }
    }
}
