@testable import EdgeGateway
import EdgeProxy
import EdgeTLS
import XCTest

/// The upstream counters of `/metrics`, which follow the backends' own totals, without sockets.
final class UpstreamMetricsTests: XCTestCase {
    func group() throws -> UpstreamGroup {
        let tls = UpstreamTLS(context: try TLSContext.client(configuration: TLSClientConfiguration()), serverName: "app.internal")
        return UpstreamGroup(name: "app", backends: [try Backend(host: "127.0.0.1", port: 8443)], tls: tls, timeouts: .init(), hostHeader: nil)
    }

    func failed(_ group: UpstreamGroup, _ reason: UpstreamHandshakeFailure) {
        group.states[0].tlsHandshakeFailures[UpstreamHandshakeFailure.allCases.firstIndex(of: reason)!].wrappingIncrement(ordering: .relaxed)
    }

    func value(_ exposition: String, _ series: String) -> String? {
        exposition.split(separator: "\n").first { $0.hasPrefix(series + " ") }.map { String($0.dropFirst(series.count + 1)) }
    }

    /// A reload gives every backend entry new figures, from zero. Before, the counters waited
    /// for the new figures to pass the old ones: failures after a reload went uncounted.
    func testCountersGoOnAcrossAReload() throws {
        let metrics = GatewayMetrics()
        let before = try group()
        before.states[0].requests.wrappingIncrement(by: 5, ordering: .relaxed)
        failed(before, .certificateExpired)
        failed(before, .certificateExpired)
        var text = metrics.render(reports: [], stores: [], groups: [before], now: 0)
        let requests = #"edge_upstream_requests_total{upstream="app",backend="127.0.0.1:8443"}"#
        let expired = #"edge_upstream_tls_handshake_failures_total{upstream="app",backend="127.0.0.1:8443",reason="certificate_expired"}"#
        let refused = #"edge_upstream_tls_handshake_failures_total{upstream="app",backend="127.0.0.1:8443",reason="client_certificate_refused"}"#
        XCTAssertEqual(value(text, requests), "5")
        XCTAssertEqual(value(text, expired), "2")
        XCTAssertEqual(value(text, refused), "0", "every reason is a series from the start")

        let after = try group()  // the reloaded configuration: same name and backend, new entry
        after.states[0].requests.wrappingIncrement(by: 1, ordering: .relaxed)
        failed(after, .certificateExpired)
        text = metrics.render(reports: [], stores: [], groups: [after], now: 0)
        XCTAssertEqual(value(text, requests), "6")
        XCTAssertEqual(value(text, expired), "3")
        text = metrics.render(reports: [], stores: [], groups: [after], now: 0)
        XCTAssertEqual(value(text, expired), "3", "counted once")

        // The old configuration drains (and its admin connections render with it): what it
        // counts still adds up, and renders with either configuration count nothing twice.
        before.states[0].requests.wrappingIncrement(by: 2, ordering: .relaxed)
        text = metrics.render(reports: [], stores: [], groups: [before], now: 0)
        XCTAssertEqual(value(text, requests), "8")
        for _ in 0..<2 {
            XCTAssertEqual(value(metrics.render(reports: [], stores: [], groups: [after], now: 0), requests), "8")
            XCTAssertEqual(value(metrics.render(reports: [], stores: [], groups: [before], now: 0), requests), "8")
        }
    }

    /// A plain upstream has no handshake series, and one without an active check no check series.
    func testPlainUpstreamsHaveNoHandshakeSeries() throws {
        let plain = UpstreamGroup(name: "plain", backends: [try Backend(host: "127.0.0.1", port: 8080)], tls: nil, timeouts: .init(), hostHeader: nil)
        let text = GatewayMetrics().render(reports: [], stores: [], groups: [plain], now: 0)
        XCTAssertFalse(text.contains("edge_upstream_tls_handshake_failures_total{"), text)
        XCTAssertFalse(text.contains("edge_upstream_health_checks_total{"), text)
        XCTAssertNotNil(value(text, #"edge_upstream_requests_total{upstream="plain",backend="127.0.0.1:8080"}"#), text)
    }

    /// Checks passed and failed are counted per backend, both series from the start.
    func testHealthChecksAreCountedByResult() throws {
        let checked = UpstreamGroup(name: "checked", backends: [try Backend(host: "127.0.0.1", port: 8080)], tls: nil, timeouts: .init(),
                                    hostHeader: nil, healthCheck: HealthCheckSettings())
        let metrics = GatewayMetrics()
        let passed = #"edge_upstream_health_checks_total{upstream="checked",backend="127.0.0.1:8080",result="passed"}"#
        let failed = #"edge_upstream_health_checks_total{upstream="checked",backend="127.0.0.1:8080",result="failed"}"#
        var text = metrics.render(reports: [], stores: [], groups: [checked], now: 0)
        XCTAssertEqual(value(text, passed), "0", text)
        XCTAssertEqual(value(text, failed), "0", text)
        checked.healthChecked(0, passed: true)
        checked.healthChecked(0, passed: true)
        checked.healthChecked(0, passed: false)
        text = metrics.render(reports: [], stores: [], groups: [checked], now: 0)
        XCTAssertEqual(value(text, passed), "2")
        XCTAssertEqual(value(text, failed), "1")
    }
}
