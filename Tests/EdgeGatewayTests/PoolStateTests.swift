@testable import EdgeProxy
import NIOCore
import XCTest

/// The keep-alive pool's state machine, without sockets or clocks: connections are
/// plain objects, time is what each event says it is.
final class PoolStateTests: XCTestCase {
    final class Connection: CustomStringConvertible {
        let name: String
        init(_ name: String) { self.name = name }
        var description: String { self.name }
    }

    typealias Pool = PoolState<String, Connection>

    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let idle = TimeAmount.seconds(60)

    /// Releases `connection` under `key` at `start + at`, asserting it was pooled.
    @discardableResult
    func release(_ pool: inout Pool, _ connection: Connection, key: String, at offset: TimeAmount = .zero, known: Pool.Slot? = nil,
                 idle: TimeAmount? = nil, maxIdle: Int = 8,
                 file: StaticString = #filePath, line: UInt = #line) -> (slot: Pool.Slot, evicted: Connection?, wakeup: NIODeadline?)? {
        switch pool.release(connection, key: key, known: known, now: self.start + offset, idleTimeout: idle ?? self.idle, maxIdle: maxIdle) {
        case .close:
            XCTFail("closed, not pooled", file: file, line: line)
            return nil
        case .pooled(let slot, let evicted, let wakeup):
            return (slot, evicted, wakeup)
        }
    }

    func testTheMostRecentlyUsedConnectionIsTakenFirstAndKeysAreApart() {
        var pool = Pool()
        XCTAssertNil(pool.slot(for: "a"), "no stack before a connection idled")
        let (a1, a2, b1) = (Connection("a1"), Connection("a2"), Connection("b1"))
        let slotA = release(&pool, a1, key: "a")!.slot
        release(&pool, a2, key: "a", known: slotA)
        let slotB = release(&pool, b1, key: "b")!.slot
        XCTAssertEqual(pool.slot(for: "a"), slotA)
        XCTAssertNotEqual(slotA, slotB)
        XCTAssertEqual(pool.idleCount, 3)
        XCTAssertTrue(pool.take(from: slotA) === a2, "the warmest connection first")
        XCTAssertTrue(pool.take(from: slotA) === a1)
        XCTAssertNil(pool.take(from: slotA), "an empty stack")
        XCTAssertTrue(pool.take(from: slotB) === b1, "another key's connection was never handed out for the first")
        XCTAssertEqual(pool.idleCount, 0)
    }

    func testTheCapEvictsTheLeastRecentlyUsedAndZeroKeepsNone() {
        var pool = Pool()
        let connections = (0..<4).map { Connection("c\($0)") }
        var slot: Pool.Slot?
        for (index, connection) in connections.prefix(3).enumerated() {
            let result = release(&pool, connection, key: "a", at: .seconds(Int64(index)), known: slot, maxIdle: 3)!
            XCTAssertNil(result.evicted)
            slot = result.slot
        }
        let full = release(&pool, connections[3], key: "a", at: .seconds(3), known: slot, maxIdle: 3)!
        XCTAssertTrue(full.evicted === connections[0], "the coldest connection makes room: \(String(describing: full.evicted))")
        XCTAssertEqual(pool.idle(for: "a").map(\.name), ["c1", "c2", "c3"])
        guard case .close = pool.release(Connection("x"), key: "a", known: slot, now: self.start, idleTimeout: self.idle, maxIdle: 0) else {
            return XCTFail("max_idle_per_backend: 0 keeps nothing")
        }
        XCTAssertEqual(pool.idleCount, 3)
    }

    /// One timer for the pool: armed by the first idle connection, moved only by one that
    /// is due earlier (a group with a shorter idle timeout), never by later ones.
    func testTheTimerIsArmedOnlyWhenTheEarliestDeadlineMovesEarlier() {
        var pool = Pool()
        let first = release(&pool, Connection("a1"), key: "a")!
        XCTAssertEqual(first.wakeup, self.start + self.idle)
        XCTAssertNil(release(&pool, Connection("a2"), key: "a", at: .seconds(5), known: first.slot)!.wakeup,
                     "a later deadline leaves the timer where it is")
        let short = release(&pool, Connection("b1"), key: "b", at: .seconds(6), idle: .seconds(1))!
        XCTAssertEqual(short.wakeup, self.start + .seconds(7), "a shorter idle timeout moves the timer earlier")
        XCTAssertEqual(pool.wakeup, self.start + .seconds(7))
    }

    func testTheTimerExpiresWhatIsDueAndIsDueNextAtTheEarliestRemainingDeadline() {
        var pool = Pool()
        let slotA = release(&pool, Connection("a1"), key: "a")!.slot          // due at 60
        release(&pool, Connection("a2"), key: "a", at: .seconds(30), known: slotA)  // due at 90
        release(&pool, Connection("b1"), key: "b", at: .seconds(10))           // due at 70
        var (expired, next) = pool.timerFired(now: self.start + .seconds(59))
        XCTAssertEqual(expired.map(\.name), [], "early: nothing is due")
        XCTAssertEqual(next, self.start + .seconds(60))
        (expired, next) = pool.timerFired(now: self.start + .seconds(75))
        XCTAssertEqual(expired.map(\.name).sorted(), ["a1", "b1"])
        XCTAssertEqual(next, self.start + .seconds(90))
        XCTAssertEqual(pool.idle(for: "a").map(\.name), ["a2"])
        (expired, next) = pool.timerFired(now: self.start + .seconds(90))
        XCTAssertEqual(expired.map(\.name), ["a2"], "due at its deadline, not after")
        XCTAssertNil(next, "nothing idles: no timer")
        XCTAssertNil(pool.wakeup)
        XCTAssertEqual(release(&pool, Connection("a3"), key: "a", at: .seconds(100), known: slotA)!.wakeup, self.start + .seconds(160),
                       "the next idle connection arms the timer again")
    }

    /// A connection reused and released again is due at its new deadline, behind the
    /// connections that idled meanwhile.
    func testAReusedConnectionIdlesAgainFromItsRelease() {
        var pool = Pool()
        let (a1, a2) = (Connection("a1"), Connection("a2"))
        let slot = release(&pool, a1, key: "a")!.slot
        release(&pool, a2, key: "a", at: .seconds(10), known: slot)
        XCTAssertTrue(pool.take(from: slot) === a2)
        XCTAssertTrue(pool.take(from: slot) === a1)
        release(&pool, a2, key: "a", at: .seconds(20), known: slot)
        release(&pool, a1, key: "a", at: .seconds(50), known: slot)
        let (expired, next) = pool.timerFired(now: self.start + .seconds(85))
        XCTAssertEqual(expired.map(\.name), ["a2"])
        XCTAssertEqual(next, self.start + .seconds(110))
    }

    func testAnIdleConnectionThatClosesLeavesAndATakenOneIsNotTouched() {
        var pool = Pool()
        let (a1, a2, a3) = (Connection("a1"), Connection("a2"), Connection("a3"))
        let slot = release(&pool, a1, key: "a")!.slot
        release(&pool, a2, key: "a", known: slot)
        release(&pool, a3, key: "a", known: slot)
        XCTAssertTrue(pool.closed(a2, in: slot), "closed by the backend while idle")
        XCTAssertEqual(pool.idle(for: "a").map(\.name), ["a1", "a3"])
        XCTAssertTrue(pool.take(from: slot) === a3)
        XCTAssertFalse(pool.closed(a3, in: slot), "taken: its exchange hears of the close, not the pool")
        XCTAssertFalse(pool.closed(a2, in: slot), "once only")
        XCTAssertEqual(pool.idleCount, 1)
    }

    /// The configuration generation ended: everything idle is handed back to be closed,
    /// slots of the old epoch find nothing, and releasing with one looks the key up afresh.
    func testRemoveAllEndsTheEpoch() {
        var pool = Pool()
        let (a1, b1, a2) = (Connection("a1"), Connection("b1"), Connection("a2"))
        let old = release(&pool, a1, key: "a")!.slot
        release(&pool, b1, key: "b")
        XCTAssertEqual(pool.removeAll().map(\.name).sorted(), ["a1", "b1"])
        XCTAssertNil(pool.wakeup)
        XCTAssertFalse(pool.isCurrent(old))
        XCTAssertNil(pool.slot(for: "a"))
        XCTAssertNil(pool.take(from: old), "a stale slot finds nothing")
        XCTAssertFalse(pool.closed(a1, in: old))
        let fresh = release(&pool, a2, key: "a", known: old)!
        XCTAssertTrue(pool.isCurrent(fresh.slot))
        XCTAssertNotNil(fresh.wakeup, "the new epoch arms its own timer")
        XCTAssertTrue(pool.take(from: fresh.slot) === a2)
        XCTAssertTrue(pool.timerFired(now: self.start + .seconds(3600)).expired.isEmpty)
    }
}
