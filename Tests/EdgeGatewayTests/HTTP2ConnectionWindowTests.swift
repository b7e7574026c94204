@testable import EdgeProxy
import XCTest

/// The receive window of a connection the gateway manages itself, as NIO counts it.
final class HTTP2ConnectionWindowTests: XCTestCase {
    /// Topped up to the target once a good part was used, and not again while the last
    /// update is still in NIO (whose count does not have it yet).
    func testToppedUpOnceAtATime() {
        var window = HTTP2ConnectionWindow(boost: 1 << 20)
        XCTAssertEqual(window.target, 65_535 + (1 << 20))
        window.nioReported(window.target - 1_000)
        XCTAssertNil(window.topUp(), "too little used to be worth a frame")
        window.nioReported(window.target - 40_000)
        XCTAssertEqual(window.topUp(), 40_000)
        window.nioReported(window.target - 50_000)  // NIO's count, without the update in flight
        XCTAssertNil(window.topUp(), "the last update has not left NIO")
        window.updateWritten()
        XCTAssertNil(window.topUp(), "NIO's count from before the update left it is stale")
        window.nioReported(window.target - 50_000)
        XCTAssertEqual(window.topUp(), 50_000)
    }
}
