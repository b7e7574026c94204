@testable import EdgeProxy
import XCTest

/// One backend's HTTP/2 connections and waiting requests as a pure state machine: which
/// waiter gets which stream, when connections open, when waiters fail.
final class HTTP2LaneTests: XCTestCase {
    final class Connection: StreamRoom {
        let name: String
        var freeStreams: Int
        var capacity: Int?
        init(_ name: String, free: Int = 1, capacity: Int? = nil) {
            self.name = name
            self.freeStreams = free
            self.capacity = capacity
        }
    }
    final class Waiter {
        let name: String
        init(_ name: String) { self.name = name }
    }
    typealias Lane = HTTP2Lane<Connection, Waiter>

    /// The actions as text, leases performed (the connection's room shrinks) as the pool does.
    func run(_ actions: [Lane.Action]) -> [String] {
        actions.map { action in
            switch action {
            case .lease(let connection, let waiter):
                connection.freeStreams -= 1
                return "\(waiter.name)->\(connection.name)"
            case .connect:
                return "connect"
            case .fail(let waiter):
                return "fail \(waiter.name)"
            }
        }
    }

    func waiters(_ count: Int) -> [Waiter] { (1...count).map { Waiter("w\($0)") } }

    /// An auto group's backend chose http/1.1 on the connect its waiters waited for: the
    /// first waiter takes that connection; with no HTTP/2 connection and no other connect
    /// left, the others leave the lane (the pool opens a connection each). While an
    /// HTTP/2 connection is there, they keep waiting for its streams.
    func testAConnectThatGaveNoStreamsServesOneWaiter() {
        var lane = Lane(maxStreams: 100, maxConnections: 0)
        var out: [String] = []
        for waiter in self.waiters(3) { out += self.run(lane.wait(waiter)) }
        XCTAssertEqual(out, ["connect"])
        let gave = lane.connectGaveNoStreams()
        XCTAssertEqual(gave.served?.name, "w1")
        XCTAssertEqual(gave.released.map(\.name), ["w2", "w3"])
        XCTAssertEqual(self.run(gave.actions), [])
        XCTAssertTrue(lane.isEmpty)

        var busy = Lane(maxStreams: 100, maxConnections: 0)
        let h2 = Connection("c1", free: 0, capacity: 1)
        XCTAssertEqual(self.run(busy.connected(h2, viaLane: false)), [])
        out = []
        for waiter in self.waiters(3) { out += self.run(busy.wait(waiter)) }
        XCTAssertEqual(out, ["connect", "connect", "connect"], "one stream per connection, as c1 takes")
        let again = busy.connectGaveNoStreams()
        XCTAssertEqual(again.served?.name, "w1")
        XCTAssertEqual(again.released.count, 0, "the connects still under way (and c1) may carry them")
        XCTAssertEqual(self.run(again.actions), [])
        XCTAssertEqual(busy.waiters.map(\.name), ["w2", "w3"])
        h2.freeStreams = 1
        XCTAssertEqual(self.run(busy.roomChanged(h2)), ["w2->c1"])
    }

    /// Fifty requests at once for a backend with no connection: one connect, not fifty.
    /// Its SETTINGS allow 2 streams: two waiters take them, and connects open for the
    /// others, two each; later connections are assumed to take what the last one did.
    func testABurstWaitsForOneConnectThenSpreadsByTheUpstreamsLimit() {
        var lane = Lane(maxStreams: 100, maxConnections: 0)
        var out: [String] = []
        for waiter in self.waiters(50) { out += self.run(lane.wait(waiter)) }
        XCTAssertEqual(out, ["connect"])
        let first = Connection("c1", free: 1)  // before its SETTINGS: one stream
        XCTAssertEqual(self.run(lane.connected(first)), ["w1->c1"], "unsettled: it may carry them all")
        first.capacity = 2
        first.freeStreams = 1
        let spread = self.run(lane.roomChanged(first))
        XCTAssertEqual(spread.first, "w2->c1")
        XCTAssertEqual(spread.filter { $0 == "connect" }.count, 24, "48 waiters, 2 per connection")
        XCTAssertEqual(lane.expectedCapacity, 2)
        let second = Connection("c2", free: 2)  // assumed to take 2, as c1 did
        XCTAssertEqual(self.run(lane.connected(second)), ["w3->c2", "w4->c2"])
        XCTAssertEqual(lane.waiters.count, 46)
    }

    /// At `max_connections_per_backend`, waiters wait for a stream to end; a connection
    /// that goes away lets another open.
    func testTheConnectionLimitMakesRequestsWaitForStreams() {
        var lane = Lane(maxStreams: 2, maxConnections: 1)
        let ws = self.waiters(4)
        XCTAssertEqual(self.run(lane.wait(ws[0])), ["connect"])
        XCTAssertEqual(self.run(lane.wait(ws[1])), [])
        XCTAssertEqual(self.run(lane.wait(ws[2])), [], "no second connection")
        let only = Connection("c1", free: 2, capacity: 2)
        XCTAssertEqual(self.run(lane.connected(only)), ["w1->c1", "w2->c1"])
        XCTAssertEqual(self.run(lane.wait(ws[3])), [])
        only.freeStreams = 1  // a stream ended
        XCTAssertEqual(self.run(lane.roomChanged(only)), ["w3->c1"])
        only.freeStreams = 0
        XCTAssertEqual(self.run(lane.removed(only)), ["connect"], "GOAWAY: another may open")
        XCTAssertTrue(lane.timedOut(ws[3]))
        XCTAssertFalse(lane.timedOut(ws[3]), "once")
    }

    /// A failed connect is not replaced (no connect storm against a backend that refuses
    /// them); it fails the waiters when nothing else can carry them (each request then
    /// tries another backend); while another connect is under way, or a connection may
    /// free a stream, they keep waiting.
    func testAFailedConnectFailsTheWaitersOnlyWhenNothingIsLeft() {
        var lane = Lane(maxStreams: 1, maxConnections: 0)
        let ws = self.waiters(3)
        XCTAssertEqual(self.run(lane.wait(ws[0])), ["connect"])
        XCTAssertEqual(self.run(lane.wait(ws[1])), ["connect"])
        XCTAssertEqual(self.run(lane.connectFailed()), [], "one connect still under way, none more")
        XCTAssertEqual(self.run(lane.connectFailed()), ["fail w1", "fail w2"])
        XCTAssertTrue(lane.isEmpty)

        let busy = Connection("c1", free: 0, capacity: 1)
        XCTAssertEqual(self.run(lane.wait(ws[2])), ["connect"])
        _ = lane.connected(busy, viaLane: false)
        XCTAssertEqual(self.run(lane.connectFailed()), [], "a stream of c1 may free")
        busy.freeStreams = 1
        XCTAssertEqual(self.run(lane.roomChanged(busy)), ["w3->c1"])
    }

    /// Two GOAWAYs in a row that refused streams after the same number, the second on a
    /// connection made after the first, teach the lane (one alone, or one reload's on
    /// two connections, is no limit): connects open for the waiters by that number per
    /// connection (nginx's keepalive_requests). It is forgotten after 64 connections.
    func testALearnedRequestLimitOpensMoreConnections() {
        var lane = Lane(maxStreams: 100, maxConnections: 0)
        let busy = Connection("c1", free: 0, capacity: 100)
        _ = lane.connected(busy, viaLane: false)
        _ = lane.connected(Connection("c2", free: 0, capacity: 100), viaLane: false)
        lane.learnRequestLimit(5, connection: 1)
        XCTAssertNil(lane.requestLimit, "once is not a limit")
        // Overlapping connections: c3 is made, then c2 (made before c1's GOAWAY) says the
        // same, which is not counted and does not move the reference; c3 then counts.
        var overlapping = lane
        _ = overlapping.connected(Connection("o3", free: 0, capacity: 100), viaLane: false)
        overlapping.learnRequestLimit(5, connection: 2)
        XCTAssertNil(overlapping.requestLimit, "a connection made before the first GOAWAY: one reload seen twice")
        overlapping.learnRequestLimit(5, connection: 3)
        XCTAssertEqual(overlapping.requestLimit, 5, "c3 was made after c1's GOAWAY")
        lane.learnRequestLimit(5, connection: 2)
        XCTAssertNil(lane.requestLimit)
        _ = lane.connected(Connection("c3", free: 0, capacity: 100), viaLane: false)
        lane.learnRequestLimit(1, connection: 3)
        _ = lane.connected(Connection("c4", free: 0, capacity: 100), viaLane: false)
        lane.learnRequestLimit(5, connection: 4)
        XCTAssertNil(lane.requestLimit, "not twice in a row")
        _ = lane.connected(Connection("c5", free: 0, capacity: 100), viaLane: false)
        lane.learnRequestLimit(5, connection: 5)
        XCTAssertEqual(lane.requestLimit, 5)
        var forgetting = lane
        for k in 0..<Lane.learnedLimitConnections { _ = forgetting.connected(Connection("f\(k)", free: 0, capacity: 5), viaLane: false) }
        XCTAssertNil(forgetting.requestLimit)
        var out: [String] = []
        for waiter in self.waiters(12) { out += self.run(lane.wait(waiter)) }
        XCTAssertEqual(out, ["connect", "connect", "connect"], "12 waiters, 5 per connection")
    }
}
