@testable import EdgeProxy
import NIOCore
import XCTest

/// The idle timeout and the drain of a client's HTTP/2 connection, as events and the
/// actions they return: no channel, no clock.
final class HTTP2ConnectionLifetimeTests: XCTestCase {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func testAConnectionWithoutStreamsIdlesOutAfterTheTimeout() {
        var lifetime = HTTP2ConnectionLifetime(timeout: .seconds(60), now: self.start)
        XCTAssertEqual(lifetime.deadline, self.start + .seconds(60))
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .seconds(59)), .none, "reached early: not yet")
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .seconds(60)), .goAwayAndClose(lastStream: 0))
        XCTAssertEqual(lifetime.quiesce(now: self.start + .seconds(61), ping: 1), .none, "closing already")
        // A client that reads nothing keeps the GOAWAY from going out: the close comes anyway.
        XCTAssertEqual(lifetime.deadline, self.start + .seconds(60) + HTTP2ConnectionLifetime.goAwayWait)
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .seconds(64)), .none)
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .seconds(65)), .close)
        XCTAssertNil(lifetime.deadline)
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .seconds(120)), .none, "closed already")
    }

    /// A stream in flight keeps the connection however long it takes; the timeout starts
    /// again when the last stream closes, and a stream closed without being created (a
    /// request the engine refused) counts for nothing.
    func testOpenStreamsHoldTheIdleTimeoutAndTheLastOneClosingRestartsIt() {
        var lifetime = HTTP2ConnectionLifetime(timeout: .seconds(60), now: self.start)
        lifetime.streamOpened(1)
        lifetime.streamOpened(3)
        XCTAssertNil(lifetime.deadline)
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .seconds(60)), .none, "the deadline queued before lapses")
        XCTAssertEqual(lifetime.streamClosed(5, now: self.start + .seconds(61)), .none, "never created")
        XCTAssertEqual(lifetime.streamClosed(1, now: self.start + .seconds(62)), .none)
        XCTAssertNil(lifetime.deadline, "stream 3 is open")
        XCTAssertEqual(lifetime.streamClosed(3, now: self.start + .seconds(100)), .none)
        XCTAssertEqual(lifetime.deadline, self.start + .seconds(160))
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .seconds(160)), .goAwayAndClose(lastStream: 3))
    }

    /// The drain: the first GOAWAY and a PING; the final GOAWAY at the PING's ACK (not
    /// another PING's), naming the last stream; the close once the open streams are done.
    func testTheDrainWaitsForThePingThenForTheOpenStreams() {
        var lifetime = HTTP2ConnectionLifetime(timeout: .seconds(60), now: self.start)
        lifetime.streamOpened(1)
        XCTAssertEqual(lifetime.quiesce(now: self.start, ping: 42), .announceDrain(ping: 42))
        XCTAssertEqual(lifetime.quiesce(now: self.start, ping: 43), .none, "one drain")
        XCTAssertEqual(lifetime.deadline, self.start + HTTP2ConnectionLifetime.pingWait)
        lifetime.streamOpened(3)  // on its way as the first GOAWAY went out
        XCTAssertEqual(lifetime.streamClosed(1, now: self.start), .none)
        XCTAssertEqual(lifetime.streamClosed(3, now: self.start), .none, "streams may still come before the final GOAWAY")
        lifetime.streamOpened(5)
        XCTAssertEqual(lifetime.pingAcknowledged(41), .none)
        XCTAssertEqual(lifetime.pingAcknowledged(42), .finalGoAway(lastStream: 5, close: false))
        XCTAssertNil(lifetime.deadline)
        XCTAssertEqual(lifetime.pingAcknowledged(42), .none)
        XCTAssertEqual(lifetime.streamClosed(5, now: self.start), .close)
    }

    /// A client that never answers the PING gets the final GOAWAY after a second; with
    /// nothing open, the close comes with it.
    func testTheDrainsFinalGoAwayComesWithoutTheAckAfterTheWait() {
        var lifetime = HTTP2ConnectionLifetime(timeout: .seconds(60), now: self.start)
        XCTAssertEqual(lifetime.quiesce(now: self.start, ping: 1), .announceDrain(ping: 1))
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .milliseconds(999)), .none)
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .seconds(1)), .finalGoAway(lastStream: 0, close: true))
        XCTAssertNil(lifetime.deadline)
        XCTAssertEqual(lifetime.deadlineReached(now: self.start + .seconds(100)), .none, "no idle timeout after the drain")
    }
}
