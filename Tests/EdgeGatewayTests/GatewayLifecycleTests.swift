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
            XCTAssertTrue("\(error)".contains("was started before (it is running)"), "\(error)")
        }
        XCTAssertEqual(try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(harness.port("http"))/"]).stdout, "200",
                       "the refused start touched nothing")
        await harness.shutdown()
        XCTAssertEqual(gateway.lifecycle, .stopped)
        XCTAssertFalse(gateway.isReady)
        await prepared.shutdown(grace: .seconds(1))
        XCTAssertEqual(prepared.lifecycle, .stopped, "a generation that never started stops too")
    }
}
