@testable import EdgeProxy
import NIOCore
import XCTest

/// The PING schedule of an idle HTTP/2 upstream connection, with a made-up clock.
final class HTTP2PingLivenessTests: XCTestCase {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    func at(_ ms: Int64) -> NIODeadline { self.start + .milliseconds(ms) }

    /// Idle: a PING one interval after the connection idled, the next one an interval
    /// after its ACK; none while busy.
    func testAnIdleConnectionIsPingedEveryInterval() {
        var liveness = HTTP2PingLiveness(interval: .milliseconds(100), timeout: .milliseconds(50), now: self.start)
        XCTAssertEqual(liveness.idled(at: self.at(10)), self.at(110))
        XCTAssertEqual(liveness.check(at: self.at(60), idle: true), .wait(until: self.at(110)), "early: wait")
        XCTAssertEqual(liveness.check(at: self.at(110), idle: true), .ping(1, due: self.at(160)))
        XCTAssertEqual(liveness.check(at: self.at(130), idle: true), .wait(until: self.at(160)), "the ACK is not due yet")
        liveness.heard(at: self.at(120))
        XCTAssertEqual(liveness.check(at: self.at(160), idle: true), .wait(until: self.at(220)), "the next an interval after the ACK")
        XCTAssertEqual(liveness.check(at: self.at(220), idle: true), .ping(2, due: self.at(270)))
        liveness.heard(at: self.at(225))
        XCTAssertEqual(liveness.check(at: self.at(270), idle: false), .stop, "busy: no PING, no timer")
        XCTAssertEqual(liveness.idled(at: self.at(500)), self.at(600), "idle again: an interval from now")
    }

    /// Nothing heard by the deadline: dead, with a reason naming the setting. What was
    /// heard before the PING went out does not count for it.
    func testSilenceUntilTheDeadlineMeansDead() {
        var liveness = HTTP2PingLiveness(interval: .milliseconds(100), timeout: .milliseconds(50), now: self.start)
        liveness.heard(at: self.at(90))
        XCTAssertEqual(liveness.check(at: self.at(100), idle: true), .ping(1, due: self.at(150)))
        XCTAssertEqual(liveness.check(at: self.at(150), idle: true), .dead(reason: "no PING ACK within 50 ms (ping_timeout)"))
    }

    /// A PING outstanding when a stream is leased keeps its deadline: a connection that
    /// sends nothing back is dead whatever it now carries. Idling again does not move the
    /// deadline either; any frame from the backend does.
    func testAnOutstandingPingKeepsItsDeadlineWhenBusy() {
        var liveness = HTTP2PingLiveness(interval: .milliseconds(100), timeout: .milliseconds(50), now: self.start)
        XCTAssertEqual(liveness.check(at: self.at(100), idle: true), .ping(1, due: self.at(150)))
        XCTAssertEqual(liveness.check(at: self.at(120), idle: false), .wait(until: self.at(150)))
        XCTAssertEqual(liveness.idled(at: self.at(130)), self.at(150))
        XCTAssertEqual(liveness.check(at: self.at(150), idle: false), .dead(reason: "no PING ACK within 50 ms (ping_timeout)"))

        var busy = HTTP2PingLiveness(interval: .milliseconds(100), timeout: .milliseconds(50), now: self.start)
        XCTAssertEqual(busy.check(at: self.at(100), idle: true), .ping(1, due: self.at(150)))
        busy.heard(at: self.at(140))  // a response's DATA, the ACK still behind it
        XCTAssertEqual(busy.check(at: self.at(150), idle: false), .stop)
    }
}
