@testable import EdgeProxy
import NIOCore
import XCTest

/// The limit on a client's resets and control frames, without a clock: a burst up to
/// the limit passes, one more does not, and the allowance comes back as the window slides.
final class HTTP2RateLimitTests: XCTestCase {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    func testABurstUpToTheLimitPassesAndOneMoreDoesNot() {
        var limit = HTTP2RateLimit(limit: 200, window: .seconds(30))
        for i in 0..<200 {
            XCTAssertFalse(limit.exceeded(at: self.start + .microseconds(Int64(i))), "event \(i + 1)")
        }
        XCTAssertTrue(limit.exceeded(at: self.start + .milliseconds(1)))
    }

    func testTheAllowanceComesBackAsTheWindowSlides() {
        var limit = HTTP2RateLimit(limit: 10, window: .seconds(30))
        for _ in 0..<10 { XCTAssertFalse(limit.exceeded(at: self.start)) }
        // Half a window later, half the first window's events still count: 5 more pass.
        let later = self.start + .seconds(45)
        for i in 0..<5 { XCTAssertFalse(limit.exceeded(at: later), "event \(i + 1) after 45 s") }
        XCTAssertTrue(limit.exceeded(at: later))
        // Two windows on, nothing of the old ones counts.
        let much = self.start + .seconds(95)
        for i in 0..<10 { XCTAssertFalse(limit.exceeded(at: much), "event \(i + 1) after 95 s") }
        XCTAssertTrue(limit.exceeded(at: much))
    }

    func testASteadyRateUnderTheLimitNeverTrips() {
        // 200 in 30 s allows 6.6 a second for ever: 6 a second for ten minutes passes.
        var limit = HTTP2RateLimit(limit: 200, window: .seconds(30))
        for i in 0..<3_600 {
            XCTAssertFalse(limit.exceeded(at: self.start + .milliseconds(Int64(i) * 1000 / 6)), "event \(i + 1)")
        }
    }

    func testASteadyRateOverTheLimitTrips() {
        // 8 a second against 200 in 30 s: tripped within the first minute.
        var limit = HTTP2RateLimit(limit: 200, window: .seconds(30))
        var tripped: Int?
        for i in 0..<800 where tripped == nil {
            if limit.exceeded(at: self.start + .milliseconds(Int64(i) * 125)) { tripped = i }
        }
        XCTAssertNotNil(tripped)
        XCTAssertLessThan(tripped ?? .max, 480)
    }
}
