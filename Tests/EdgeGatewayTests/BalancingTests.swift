@testable import EdgeProxy
import NIOCore
import NIOHTTP1
import XCTest

/// Distribution of each balancing algorithm, and health-aware selection.
final class BalancingTests: XCTestCase {
    func group(_ weights: [Int], _ algorithm: BalanceAlgorithm) throws -> UpstreamGroup {
        let backends = try weights.enumerated().map { try Backend(host: "127.0.0.\($0.offset + 1)", port: 8080, weight: $0.element) }
        return UpstreamGroup(name: "t", backends: backends, tls: nil, timeouts: .init(), hostHeader: nil, algorithm: algorithm)
    }

    func key(_ text: String = "") -> UpstreamGroup.RequestKey {
        UpstreamGroup.RequestKey(client: try? SocketAddress(ipAddress: "10.\(abs(text.hashValue) % 250).\(abs(text.hashValue / 250) % 250).\(abs(text.hashValue / 62500) % 250)", port: 1), head: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/p/\(text)?q=1",
                                                                          headers: ["X-User": text]))
    }

    func counts(_ group: UpstreamGroup, _ n: Int, key: (Int) -> UpstreamGroup.RequestKey) -> [Int] {
        var counts = Array(repeating: 0, count: group.backends.count)
        for i in 0..<n { counts[group.select(key(i))!] += 1 }
        return counts
    }

    func testRoundRobinAndWeightedRoundRobinAreExact() throws {
        XCTAssertEqual(counts(try group([1, 1, 1], .roundRobin), 300) { _ in self.key() }, [100, 100, 100])
        let weighted = try group([1, 2, 3], .roundRobin)
        XCTAssertEqual(counts(weighted, 600) { _ in self.key() }, [100, 200, 300])
        // Smooth: the heavy backend is interleaved, never sent its whole share in a row (nginx's algorithm).
        let smooth = try group([5, 1, 1], .roundRobin)
        let sequence = (0..<7).map { _ in smooth.select(key())! }
        XCTAssertEqual(sequence, [0, 0, 1, 0, 2, 0, 0])
    }

    func testWeightedRandomFollowsTheWeights() throws {
        let c = counts(try group([1, 3], .random), 8000) { _ in self.key() }
        let share = Double(c[0]) / 8000
        XCTAssertEqual(share, 0.25, accuracy: 0.03, "\(c)")
    }

    func testLeastConnectionsPicksTheLeastLoadedPerWeight() throws {
        let g = try group([1, 1, 2], .leastConnections)
        g.states[0].active.store(3, ordering: .relaxed)
        g.states[1].active.store(1, ordering: .relaxed)
        g.states[2].active.store(3, ordering: .relaxed)  // 1.5 per unit of weight
        XCTAssertEqual(g.select(key()), 1)
        g.states[1].active.store(2, ordering: .relaxed)  // 2 vs 1.5
        XCTAssertEqual(g.select(key()), 2)
        // Equal load spreads instead of piling on the first backend.
        let idle = try group([1, 1, 1], .leastConnections)
        XCTAssertEqual(Set((0..<3).map { _ in idle.select(key())! }), [0, 1, 2])
    }

    func testConsistentHashMovesOnlyTheKeysOfARemovedBackend() throws {
        for hashKey in [HashKey.header("x-user"), .clientAddress, .path] {
            let five = try group([1, 1, 1, 1, 1], .consistentHash(hashKey))
            let keys = (0..<10_000).map { "user-\($0)" }
            let before = keys.map { five.select(key($0))! }
            let spread = (0..<5).map { b in Double(before.filter { $0 == b }.count) / Double(keys.count) }
            XCTAssertTrue(spread.allSatisfy { (0.12...0.28).contains($0) }, "uneven ring for \(hashKey): \(spread)")
            // The same key always lands on the same backend.
            XCTAssertEqual(keys.prefix(100).map { five.select(key($0))! }, Array(before.prefix(100)))
            // Backend 2 goes away (health check down): only its keys move.
            five.states[2].checkHealthy.store(false, ordering: .relaxed)
            let after = keys.map { five.select(key($0))! }
            let moved = zip(before, after).filter { $0 != $1 }
            XCTAssertTrue(moved.allSatisfy { $0.0 == 2 }, "a key of a healthy backend moved")
            let fraction = Double(moved.count) / Double(keys.count)
            XCTAssertEqual(fraction, 0.2, accuracy: 0.08, "about 1/N of the keys move (\(hashKey))")
        }
    }

    /// The proxy hashes the client address from the text it formatted once per
    /// connection: the same backend as the address itself would pick.
    func testTheProxysClientKeyPicksAsTheAddressWould() throws {
        let g = try group([1, 1, 1, 1, 1], .consistentHash(.clientAddress))
        let head = try HTTP1Parser.parseRequest(Array("GET /p HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
        for i in 0..<500 {
            let address = try SocketAddress(ipAddress: i % 5 == 0 ? "2001:db8::\(i)" : "10.\(i % 256).\(i / 256).\((i * 7) % 256)", port: 1000 + i)
            let proxy = UpstreamGroup.RequestKey(clientIP: DownstreamInfo(remoteAddress: address).clientIP, request: head)
            XCTAssertEqual(g.select(proxy), g.select(UpstreamGroup.RequestKey(client: address, head: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/p"))))
            XCTAssertEqual(proxy.text(for: .clientAddress), address.ipAddress)
        }
    }

    func testUnavailableBackendsAreSkippedAndAllDownGivesNone() throws {
        for algorithm in [BalanceAlgorithm.roundRobin, .random, .leastConnections, .consistentHash(.path)] {
            let g = try group([1, 2, 1], algorithm)
            g.states[1].checkHealthy.store(false, ordering: .relaxed)
            XCTAssertFalse(counts(g, 200) { self.key("\($0)") }[1] > 0, "\(algorithm) picked a down backend")
            XCTAssertNotEqual(g.select(key(), tried: [0]), 0, "\(algorithm) picked a backend already tried")
            // Passive ejection after consecutive connect failures.
            for _ in 0..<3 { _ = g.backendFailed(0, reason: "refused") }
            XCTAssertEqual(g.select(key()), 2, "\(algorithm)")
            g.states[2].checkHealthy.store(false, ordering: .relaxed)
            XCTAssertNil(g.select(key()), "\(algorithm): every backend is down")
        }
    }
}
