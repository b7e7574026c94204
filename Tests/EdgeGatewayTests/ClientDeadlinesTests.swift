@testable import EdgeProxy
import EdgeTestSupport
import Foundation
import NIOCore
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Which deadline of a client connection is due, and when it must be reached next,
/// without sockets or a clock.
final class ClientDeadlinesTests: XCTestCase {
    typealias Standing = ClientDeadlines.Standing

    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
    func at(_ seconds: Double) -> NIODeadline { self.t0 + .nanoseconds(Int64(seconds * 1e9)) }

    /// Everything due at `now`, in order, as the handler would take it (the standing fixed).
    func drain(_ timers: inout ClientDeadlines, at now: NIODeadline, _ standing: Standing) -> [ClientDeadlines.Due] {
        var due: [ClientDeadlines.Due] = []
        while let next = timers.due(at: now, standing, bodyTimeout: .seconds(60)), due.count < 10 { due.append(next) }
        return due
    }

    func testBetweenRequestsTheClientDeadlineIsTheHeaderOrTheIdleTimeout() {
        var timers = ClientDeadlines()
        timers.client = self.at(10)
        let first = Standing(betweenRequests: true, headAwaited: true)
        XCTAssertEqual(drain(&timers, at: self.at(9.9), first), [])
        XCTAssertEqual(timers.next(first), self.at(10))
        XCTAssertEqual(drain(&timers, at: self.at(10), first), [.headerTimeout])
        XCTAssertNil(timers.next(first), "spent")
        timers.client = self.at(70)
        XCTAssertEqual(drain(&timers, at: self.at(70), Standing(betweenRequests: true)), [.idleTimeout])
    }

    /// During an exchange the header/idle deadline cannot act; the read deadline can.
    func testDuringAnExchangeOnlyTheUpstreamAndBodyDeadlinesAct() {
        var timers = ClientDeadlines()
        timers.client = self.at(5)
        timers.upstreamRead = self.at(60)
        timers.body = self.at(30)
        let exchange = Standing(readingBody: true, awaitingResponse: true)
        XCTAssertEqual(timers.next(exchange), self.at(30), "the stale client deadline does not wake the connection")
        XCTAssertEqual(drain(&timers, at: self.at(29), exchange), [])
        XCTAssertEqual(drain(&timers, at: self.at(60), exchange), [.bodyTimeout, .readTimeout])
        XCTAssertNil(timers.next(exchange))
    }

    /// The gateway holding the client's reads (its upstream is full) is not the client
    /// being late: the body deadline moves on instead of firing.
    func testTheBodyDeadlineWaitsWhileTheGatewayHoldsReads() {
        var timers = ClientDeadlines()
        timers.body = self.at(60)
        let held = Standing(readingBody: true, gatewayHoldsReads: true, awaitingResponse: true)
        XCTAssertEqual(drain(&timers, at: self.at(61), held), [])
        XCTAssertEqual(timers.body, self.at(121))
        XCTAssertEqual(timers.next(held), self.at(121))
        var ended = timers
        XCTAssertEqual(drain(&ended, at: self.at(200), Standing(awaitingResponse: true)), [], "no body being read: nothing to time out")
        XCTAssertNil(ended.body)
    }

    /// Reached early for a stale idle deadline (the first request's header timeout, moved
    /// later when the request ended), a draining connection re-queues for its quiet
    /// period, not only for the idle deadline that woke it: it closes at the end of the
    /// quiet period, not at its idle timeout a minute later.
    func testADrainQuietPeriodIsNotLostToAnEarlierWakeUp() {
        var timers = ClientDeadlines()
        timers.client = self.at(62)           // idle timeout after a request that ended at 2 s
        timers.drainQuietUntil = self.at(10.5) // the drain began at 9.5 s
        let idle = Standing(betweenRequests: true)
        XCTAssertEqual(drain(&timers, at: self.at(10), idle), [], "woken at 10 s by the header timeout's entry")
        XCTAssertEqual(timers.next(idle), self.at(10.5))
        XCTAssertEqual(drain(&timers, at: self.at(10.5), idle), [.drained])
    }

    func testTheDrainClosesOnlyAQuietIdleConnectionAndIsSpentEitherWay() {
        var timers = ClientDeadlines()
        timers.drainQuietUntil = self.at(1)
        var begun = Standing(betweenRequests: true)
        begun.quiet = { false }  // a head's first bytes, or a handshake, arrived
        XCTAssertEqual(drain(&timers, at: self.at(1), begun), [])
        XCTAssertNil(timers.drainQuietUntil, "spent: a later idle period may start another")
        timers.drainQuietUntil = self.at(2)
        XCTAssertEqual(drain(&timers, at: self.at(2), Standing(awaitingResponse: true)), [], "a request in flight gets connection: close instead")
        timers.drainQuietUntil = self.at(3)
        var asked = 0
        var quiet = Standing(betweenRequests: true)
        quiet.quiet = { asked += 1; return true }
        XCTAssertEqual(drain(&timers, at: self.at(2.9), quiet), [])
        XCTAssertEqual(asked, 0, "the pipeline is not asked before the quiet period ends")
        XCTAssertEqual(drain(&timers, at: self.at(3), quiet), [.drained])
    }

    /// Lingering after an early response: the pause and the limit close it, whatever
    /// the connection's other deadlines say, and a lingering connection never drains.
    func testALingeringCloseEndsAtItsPauseOrLimit() {
        var timers = ClientDeadlines()
        timers.lingerUntil = self.at(30)
        timers.client = self.at(5)
        timers.drainQuietUntil = self.at(1)
        let closing = Standing()
        XCTAssertEqual(timers.next(closing), self.at(1))
        XCTAssertEqual(drain(&timers, at: self.at(1), closing), [])
        XCTAssertEqual(timers.next(closing), self.at(5), "closing: the pause still counts")
        XCTAssertEqual(drain(&timers, at: self.at(5), closing), [.lingerOver])
        XCTAssertNil(timers.lingerUntil)
        XCTAssertNil(timers.next(closing))
    }

    /// The same on a real keep-alive connection: its first request ends at once, leaving
    /// the header timeout's entry (1 s) queued behind the idle deadline (30 s); the drain
    /// begins right after the response, and its quiet period (3 s) ends after that entry
    /// is due. The connection closes at the end of the quiet period; before, the entry
    /// woke it, re-queued it for the idle deadline alone, and it stayed open past the
    /// 10 s grace period.
    func testADrainWhoseQuietPeriodOutlastsAStaleHeaderDeadlineClosesWhenItEnds() async throws {
        let harness = try await GatewayHarness.start { port in
            """
            listeners:
              - name: http
                address: "127.0.0.1:0"
                timeouts: { header: 1s, idle: 30s }
            upstreams:
              app: { backends: ["127.0.0.1:\(port)"] }
            routes:
              - upstream: app
            drain_quiet_period: 3s
            """
        }
        let socket = connectedSocket(port: harness.port("http"))
        defer { close(socket) }
        var timeout = timeval(tv_sec: 12, tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
        _ = request.withCString { send(socket, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(socket, &buffer, buffer.count, 0)
        XCTAssertTrue(n > 0 && String(decoding: buffer[0..<n], as: UTF8.self).hasPrefix("HTTP/1.1 200"))
        let started = Date()
        let drained = Task { await harness.gateway.shutdown(grace: .seconds(10)) }
        let eof = recv(socket, &buffer, buffer.count, 0)
        let seconds = Date().timeIntervalSince(started)
        XCTAssertEqual(eof, 0, "closed by the gateway")
        XCTAssertGreaterThan(seconds, 2, "not before the quiet period ends")
        XCTAssertLessThan(seconds, 8, "closed after the quiet period, not at the end of the grace period")
        await drained.value
        await harness.shutdown()
    }
}
