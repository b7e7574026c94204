@testable import EdgeGateway
import EdgeTestSupport
import Foundation
import XCTest

/// A configuration generation goes prepared, starting, running, draining, stopped, once:
/// building it binds nothing, and a second start is refused instead of binding sockets
/// that nothing would stop.
final class GatewayLifecycleTests: XCTestCase {
    func yaml(_ port: Int) -> String {
        """
        listeners: [ { name: http, address: "127.0.0.1:0" } ]
        upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
        routes: [ { upstream: app } ]
        admin: { address: "127.0.0.1:0" }
        """
    }

    func testAGenerationStartsOnceAndStopsOnce() async throws {
        let prepared = try Gateway.prepare(config: try GatewayConfig.parse(yaml: self.yaml(9)), baseDirectory: "/", logger: LogCapture().logger())
        XCTAssertEqual(prepared.lifecycle, .prepared)
        XCTAssertNil(prepared.boundPort(listener: "http"), "a plan binds nothing")
        XCTAssertFalse(prepared.isReady)

        let harness = try await GatewayHarness.start { self.yaml($0) }
        let gateway = harness.gateway
        XCTAssertEqual(gateway.lifecycle, .running)
        XCTAssertTrue(gateway.isReady)
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(gateway.adminPort!)/status"]).stdout
        XCTAssertTrue(status.contains(#""ready":true,"lifecycle":"running""#), status)
        do {
            try await gateway.start(group: harness.group)
            XCTFail("a second start of one generation")
        } catch {
            XCTAssertTrue("\(error)".contains("cannot start: this configuration generation is running (a generation starts once)"), "\(error)")
        }
        XCTAssertEqual(try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(harness.port("http"))/"]).stdout, "200",
                       "the refused start touched nothing")
        await harness.shutdown()
        XCTAssertEqual(gateway.lifecycle, .stopped)
        XCTAssertFalse(gateway.isReady)
        await prepared.shutdown(grace: .seconds(1))
        XCTAssertEqual(prepared.lifecycle, .stopped, "a generation that never started stops too")
    }

    /// A shutdown that lands while `start` binds (hostile timing: the two race, twenty
    /// times) waits for it and drains everything it bound; one that comes first leaves
    /// the start refused. Either way nothing is left accepting.
    func testAShutdownDuringStartLeavesNothingAccepting() async throws {
        let harness = try await GatewayHarness.start { self.yaml($0) }
        defer { Task { await harness.shutdown() } }
        let yaml = """
            listeners: [ { name: a, address: "127.0.0.1:0" }, { name: b, address: "127.0.0.1:0" }, { name: c, address: "127.0.0.1:0" } ]
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        for _ in 0..<20 {
            let gateway = try Gateway.prepare(config: try GatewayConfig.parse(yaml: yaml), baseDirectory: "/", logger: LogCapture().logger())
            let starting = Task { try await gateway.start(group: harness.group) }
            await gateway.shutdown(grace: .seconds(1))
            _ = try? await starting.value
            XCTAssertEqual(gateway.lifecycle, .stopped)
            for port in ["a", "b", "c"].compactMap({ gateway.boundPort(listener: $0) }) + [gateway.adminPort].compactMap({ $0 }) {
                let socket = connectedSocket(port: port)
                XCTAssertLessThan(socket, 0, "port \(port) still accepts after the shutdown")
                if socket >= 0 { close(socket) }
            }
        }
    }

    /// A start that fails (its port is taken) leaves a generation that still shuts down:
    /// the shutdown does not wait for a start that is over.
    func testAFailedStartStillShutsDown() async throws {
        let harness = try await GatewayHarness.start { self.yaml($0) }
        let taken = harness.port("http")
        let yaml = """
            listeners: [ { name: http, address: "127.0.0.1:\(taken)" } ]
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        let gateway = try Gateway.prepare(config: try GatewayConfig.parse(yaml: yaml), baseDirectory: "/", logger: LogCapture().logger())
        do {
            try await gateway.start(group: harness.group)
            XCTFail("the port is taken")
        } catch {
            XCTAssertTrue("\(error)".contains("cannot bind"), "\(error)")
        }
        XCTAssertEqual(gateway.lifecycle, .starting)
        XCTAssertFalse(gateway.isReady)
        await gateway.shutdown(grace: .seconds(1))
        XCTAssertEqual(gateway.lifecycle, .stopped)
        await harness.shutdown()
    }
}
