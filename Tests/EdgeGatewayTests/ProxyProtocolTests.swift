import EdgeGateway
import EdgeProxy
import EdgeTestSupport
import Foundation
import NIOCore
import XCTest

/// `proxy_protocol: true` listeners behind a layer-4 balancer: the client address comes
/// from the PROXY protocol header (versions 1 and 2), with HAProxy in TCP mode in front
/// and with hand-made headers.
final class ProxyProtocolTests: XCTestCase {
    static let pki = try! TestPKI()
    static let leaf = try! pki.issue(["localhost"])

    func config(upstreamPort: Int, accessLog: String? = nil) -> String {
        """
        listeners:
          - name: https
            address: "127.0.0.1:0"
            proxy_protocol: true
            timeouts: { handshake: 1s }
            tls:
              certificate: \(Self.leaf.fullchain)
              key: \(Self.leaf.key)
              h2: true
          - name: http
            address: "127.0.0.1:0"
            proxy_protocol: true
          - name: direct
            address: "127.0.0.1:0"
        upstreams:
          app:
            backends: ["127.0.0.1:\(upstreamPort)"]
            balance: consistent_hash
        routes:
          - upstream: app
        admin:
          address: "127.0.0.1:0"
        \(accessLog.map { "access_log: { path: \($0), format: json }" } ?? "")
        """
    }

    // MARK: the parser

    private func parse(_ bytes: [UInt8]) throws -> ProxyProtocol.Parsed {
        try bytes.withUnsafeBytes { (raw) throws(ProxyProtocol.Malformed) in try ProxyProtocol.parse(raw) }
    }

    private func refusal(_ bytes: [UInt8]) -> String? {
        do {
            _ = try self.parse(bytes)
            return nil
        } catch {
            return "\(error)"
        }
    }

    private static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    private static func v2(command: UInt8 = 0x21, family: UInt8, block: [UInt8]) -> [UInt8] {
        v2Signature + [command, family, UInt8(block.count >> 8), UInt8(block.count & 0xFF)] + block
    }

    func testVersionOneHeadersAreParsedAndFaultsNamed() throws {
        let v1 = Array("PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\nGET".utf8)
        XCTAssertEqual(try self.parse(v1), .complete(.init(ip: "203.0.113.7", port: 51234), length: 44))
        // Every prefix of a header is incomplete, not refused.
        for n in 0..<44 { XCTAssertEqual(try self.parse(Array(v1.prefix(n))), .incomplete, "prefix of \(n) bytes") }
        // IPv6 comes out in its canonical form (as X-Forwarded-For carries it).
        XCTAssertEqual(try self.parse(Array("PROXY TCP6 2001:DB8:0:0::1 2001:db8::2 1 65535\r\n".utf8)),
                       .complete(.init(ip: "2001:db8::1", port: 1), length: 48))
        // UNKNOWN: the connection's own peer is the client; the rest of the line is ignored.
        XCTAssertEqual(try self.parse(Array("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".utf8)), .complete(nil, length: 35))
        let faults: [(String, String)] = [
            ("PROXY TCP4 300.1.1.1 192.0.2.1 1 2\r\n", "\"300.1.1.1\" is not an IPv4 address"),
            ("PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", "is not an IPv4 address"),
            ("PROXY TCP6 203.0.113.7 2001:db8::2 1 2\r\n", "is not an IPv6 address"),
            ("PROXY TCP4 203.0.113.7 192.0.2.1 1 65536\r\n", "must be numbers from 0 to 65535"),
            ("PROXY TCP4 203.0.113.7 192.0.2.1 -1 2\r\n", "must be numbers"),
            ("PROXY TCP4  203.0.113.7 192.0.2.1 1 2\r\n", "single spaces"),
            ("PROXY UDP4 203.0.113.7 192.0.2.1 1 2\r\n", "unknown protocol \"UDP4\""),
            ("PROXY TCP4 203.0.113.7 192.0.2.1 1 2\n", "ends with LF, not CR LF"),
            ("PROXY " + String(repeating: "A", count: 120), "without CR LF in its first 107 bytes"),
            ("GET / HTTP/1.1\r\n", "starts with \"GET / HTTP/1.1"),
            ("PROXX", "starts with \"PROXX\""),
        ]
        for (header, reason) in faults {
            let message = self.refusal(Array(header.utf8))
            XCTAssertTrue(message?.contains(reason) == true, "\(header.debugDescription): \(message ?? "accepted")")
        }
        // A TLS ClientHello says so at once, from its first byte.
        XCTAssertTrue(self.refusal([0x16])?.contains("starts with a TLS handshake") == true)
    }

    func testVersionTwoHeadersAreParsedWithTheirTLVsAndFaultsNamed() throws {
        // TCP over IPv4 with a TLV after the addresses (AWS adds its endpoint ID so).
        let tlv: [UInt8] = [0xEA, 0x00, 0x04, 0x76, 0x70, 0x63, 0x65]
        let tcp4 = Self.v2(family: 0x11, block: [203, 0, 113, 7, 192, 0, 2, 1, 0xC8, 0x22, 0x01, 0xBB] + tlv)
        XCTAssertEqual(try self.parse(tcp4 + Array("GET".utf8)), .complete(.init(ip: "203.0.113.7", port: 51234), length: tcp4.count))
        for n in 0..<tcp4.count { XCTAssertEqual(try self.parse(Array(tcp4.prefix(n))), .incomplete, "prefix of \(n) bytes") }
        var v6 = [UInt8](repeating: 0, count: 36)
        v6[0] = 0x20; v6[1] = 0x01; v6[2] = 0x0D; v6[3] = 0xB8; v6[15] = 0x07  // 2001:db8::7
        v6[32] = 0x01; v6[33] = 0xBB
        XCTAssertEqual(try self.parse(Self.v2(family: 0x21, block: v6)), .complete(.init(ip: "2001:db8::7", port: 443), length: 52))
        // LOCAL (the balancer's own health check) and UNSPEC name no client.
        XCTAssertEqual(try self.parse(Self.v2(command: 0x20, family: 0x00, block: [])), .complete(nil, length: 16))
        XCTAssertEqual(try self.parse(Self.v2(command: 0x20, family: 0x11, block: [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2])), .complete(nil, length: 28))
        XCTAssertEqual(try self.parse(Self.v2(family: 0x00, block: [])), .complete(nil, length: 16))
        let faults: [([UInt8], String)] = [
            (Self.v2(command: 0x11, family: 0x11, block: []), "v2 header of version 1"),
            (Self.v2(command: 0x22, family: 0x11, block: []), "unknown command 2"),
            (Self.v2(family: 0x11, block: [1, 2, 3]), "TCP4 address block of 3 bytes (12 needed)"),
            (Self.v2(family: 0x21, block: [UInt8](repeating: 0, count: 12)), "TCP6 address block of 12 bytes (36 needed)"),
            (Self.v2(family: 0x12, block: [UInt8](repeating: 0, count: 12)), "not a TCP stream"),
            (Self.v2Signature + [0x21, 0x11, 0x10, 0x00], "4112 bytes (at most 4096 accepted)"),
            ([0x0D, 0x0A, 0x0D, 0x0A, 0x01], "no PROXY protocol header"),
        ]
        for (header, reason) in faults {
            let message = self.refusal(header)
            XCTAssertTrue(message?.contains(reason) == true, "\(header): \(message ?? "accepted")")
        }
    }

    // MARK: the listener

    private func send(port: Int, header: [UInt8], tls: Bool, path: String = "/headers", from source: String = "127.0.0.1") throws -> (response: String, closed: Bool, error: String?) {
        let hex = header.map { String(format: "%02x", $0) }.joined()
        let result = try Shell.run(["python3", repositoryRoot() + "/Tests/tools/proxy_client.py", "\(port)", tls ? Self.pki.caPath : "-", hex, path, source], timeout: 30)
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
        return (object["response"] as? String ?? "", object["closed"] as? Bool ?? false, object["error"] as? String)
    }

    /// Hand-made headers of both versions, over TLS and plain HTTP: the client they name
    /// is the one X-Forwarded-For and the access log see (and hashing by client address).
    func testTheHeadersClientIsForwardedAndLogged() async throws {
        let directory = TemporaryDirectory()
        let log = directory.file("access.log")
        let harness = try await GatewayHarness.start(directory: directory) { self.config(upstreamPort: $0, accessLog: log) }
        let https = harness.port("https"), http = harness.port("http")
        let v1 = Array("PROXY TCP4 203.0.113.7 127.0.0.1 51234 \(https)\r\n".utf8)
        let overTLS = try self.send(port: https, header: v1, tls: true)
        XCTAssertTrue(overTLS.response.contains("x-forwarded-for: 203.0.113.7\n"), overTLS.response)
        XCTAssertTrue(overTLS.response.contains("x-forwarded-proto: https"), overTLS.response)
        let v2 = Self.v2(family: 0x21, block: [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [0x09] + [UInt8](repeating: 0, count: 16) + [0, 80, 0, 80])
        let plain = try self.send(port: http, header: v2, tls: false)
        XCTAssertTrue(plain.response.contains("x-forwarded-for: 2001:db8::9\n"), plain.response)
        // LOCAL (a balancer's health check): the connection's own peer.
        let local = try self.send(port: http, header: Self.v2(command: 0x20, family: 0x00, block: []), tls: false)
        XCTAssertTrue(local.response.contains("x-forwarded-for: 127.0.0.1\n"), local.response)
        // The header and the TLS ClientHello in one segment: both are read.
        let unknown = try self.send(port: https, header: Array("PROXY UNKNOWN\r\n".utf8), tls: true)
        XCTAssertTrue(unknown.response.contains("x-forwarded-for: 127.0.0.1\n"), unknown.response)
        await harness.shutdown()
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 4, lines.joined(separator: "\n"))
        // Each event loop writes its own lines: in any order.
        XCTAssertTrue(lines.contains { $0.contains(#""listener":"https","client":"203.0.113.7""#) }, lines.joined(separator: "\n"))
        XCTAssertTrue(lines.contains { $0.contains(#""listener":"http","client":"2001:db8::9""#) }, lines.joined(separator: "\n"))
    }

    /// A connection without a valid header is closed, never served with a guessed client,
    /// and logged with the listener, the peer and the reason; the gateway keeps serving.
    func testConnectionsWithoutAValidHeaderAreRefusedAndLogged() async throws {
        let harness = try await GatewayHarness.start { self.config(upstreamPort: $0) }
        let https = harness.port("https"), http = harness.port("http")
        // A client that speaks TLS at once (no balancer in front).
        let direct = try Shell.run(["curl", "-sS", "--max-time", "10", "--cacert", Self.pki.caPath, "https://localhost:\(https)/"])
        XCTAssertNotEqual(direct.status, 0, direct.stdout)
        XCTAssertTrue(eventually(timeout: 5) { harness.logs.contains("starts with a TLS handshake") }, harness.logs.all.joined(separator: "\n"))
        XCTAssertTrue(harness.logs.contains("connection refused: bad PROXY protocol header listener=https peer=127.0.0.1:"), harness.logs.all.joined(separator: "\n"))
        pause(1.1)  // refusals are logged at most once a second per loop
        let forged = try self.send(port: http, header: Array("PROXY TCP4 300.1.1.1 127.0.0.1 1 2\r\n".utf8), tls: false)
        XCTAssertTrue(forged.closed, forged.response)
        XCTAssertTrue(eventually(timeout: 5) { harness.logs.contains("\"300.1.1.1\" is not an IPv4 address") }, harness.logs.all.joined(separator: "\n"))
        // Silence: closed once the handshake timeout (1 s) has passed.
        pause(1.1)
        let started = Date()
        let silent = try Shell.run(["python3", "-c", """
            import socket, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
            print("closed" if s.recv(1) == b"" else "data")
            """, "\(https)"], timeout: 20)
        XCTAssertEqual(silent.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "closed", silent.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(started), 8)
        XCTAssertTrue(eventually(timeout: 5) { harness.logs.contains("no PROXY protocol header within 1 s (timeouts.handshake)") },
                      harness.logs.all.joined(separator: "\n"))
        XCTAssertTrue(harness.logs.contains("listening address=127.0.0.1:\(https) listener=https proxy_protocol=true tls=true"), harness.logs.all.joined(separator: "\n"))
        XCTAssertTrue(harness.logs.contains("listening address=127.0.0.1:\(harness.port("direct")) listener=direct tls=false"), harness.logs.all.joined(separator: "\n"))
        // Still serving, and a listener without proxy_protocol is unaffected.
        let good = try self.send(port: https, header: Array("PROXY TCP4 198.51.100.1 127.0.0.1 1 2\r\n".utf8), tls: true)
        XCTAssertTrue(good.response.contains("x-forwarded-for: 198.51.100.1\n"), good.response)
        let plain = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.port("direct"))/headers"])
        XCTAssertTrue(plain.stdout.contains("x-forwarded-for: 127.0.0.1"), plain.stdout)
        // Counted by listener: two on https (the TLS client, the silent one), one on http.
        let metrics = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/metrics"]).stdout
        XCTAssertTrue(metrics.contains(#"edge_proxy_protocol_refused_total{listener="https"} 2"#), metrics)
        XCTAssertTrue(metrics.contains(#"edge_proxy_protocol_refused_total{listener="http"} 1"#), metrics)
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status"]).stdout
        XCTAssertTrue(status.contains(#""name":"https","address":"127.0.0.1:0","port":\#(https),"tls":true,"tls_profile":"intermediate","h2":true,"mutual_tls":false,"proxy_protocol":true}"#), status)
        XCTAssertTrue(status.contains(#""tls":false,"tls_profile":null,"h2":false,"mutual_tls":false,"proxy_protocol":false}"#), status)
        await harness.shutdown()
    }

    // MARK: proxy_protocol_from

    func testAddressRangesParseAndMatchAndNameTheirFaults() throws {
        func address(_ ip: String) throws -> SocketAddress { try SocketAddress(ipAddress: ip, port: 443) }
        let net = try AddressRange(parsing: "10.0.0.0/8")
        XCTAssertTrue(net.contains(try address("10.200.3.4")))
        XCTAssertFalse(net.contains(try address("11.0.0.1")))
        XCTAssertTrue(net.contains(try address("::ffff:10.1.1.1")), "a dual-stack listener's IPv4 peer")
        XCTAssertFalse(net.contains(try address("::a01:101")), "not IPv4-mapped")
        let host = try AddressRange(parsing: "192.0.2.7")
        XCTAssertTrue(host.contains(try address("192.0.2.7")))
        XCTAssertFalse(host.contains(try address("192.0.2.6")))
        let odd = try AddressRange(parsing: "172.16.0.0/12")
        XCTAssertTrue(odd.contains(try address("172.31.255.255")))
        XCTAssertFalse(odd.contains(try address("172.32.0.0")))
        let v6 = try AddressRange(parsing: "2001:db8::/33")
        XCTAssertTrue(v6.contains(try address("2001:db8:7fff::1")))
        XCTAssertFalse(v6.contains(try address("2001:db8:8000::1")))
        XCTAssertFalse(v6.contains(try address("10.0.0.1")))
        XCTAssertTrue(try AddressRange(parsing: "0.0.0.0/0").contains(try address("203.0.113.9")))
        XCTAssertEqual(v6.description, "2001:db8::/33")
        func fault(_ text: String) -> String {
            do { _ = try AddressRange(parsing: text); return "" } catch { return error.description }
        }
        XCTAssertEqual(fault("10.1.2.3/8"), #""10.1.2.3/8" has bits set after its /8 prefix: the range is 10.0.0.0/8"#)
        XCTAssertEqual(fault("10.0.0.0/33"), #""10.0.0.0/33": the prefix length must be 0 to 32"#)
        XCTAssertEqual(fault("2001:db8::/x"), #""2001:db8::/x": the prefix length must be 0 to 128"#)
        XCTAssertTrue(fault("balancer.internal").contains("is not an IPv4 or IPv6 address or CIDR range"), fault("balancer.internal"))
        XCTAssertTrue(fault("10.0.0.0/").contains("prefix length"), fault("10.0.0.0/"))
        XCTAssertTrue(fault("10.0.0.0/+8").contains("prefix length"), fault("10.0.0.0/+8"))
    }

    /// With `proxy_protocol_from`, only the balancer's addresses may send a header: a
    /// connection from anywhere else is refused before a byte is read, logged and
    /// counted; one from a listed address is served as the client its header names.
    func testOnlyListedPeersMaySendAHeader() async throws {
        let harness = try await GatewayHarness.start { upstream in
            """
            listeners:
              - name: http
                address: "127.0.0.1:0"
                proxy_protocol: true
                proxy_protocol_from: ["127.0.0.2", "10.0.0.0/8", "2001:db8::/32"]
            upstreams:
              app: { backends: ["127.0.0.1:\(upstream)"] }
            routes:
              - upstream: app
            admin:
              address: "127.0.0.1:0"
            """
        }
        let http = harness.port("http")
        let header = Array("PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n".utf8)
        let listed = try self.send(port: http, header: header, tls: false, from: "127.0.0.2")
        XCTAssertTrue(listed.response.contains("x-forwarded-for: 203.0.113.7\n"), listed.response)
        // A valid header from a peer that is not listed: never believed.
        let other = try self.send(port: http, header: header, tls: false, from: "127.0.0.3")
        XCTAssertTrue(other.closed, other.response)
        XCTAssertFalse(other.response.contains("203.0.113.7"), other.response)
        XCTAssertTrue(eventually(timeout: 5) {
            harness.logs.contains("connection refused: not an allowed PROXY protocol source listener=http peer=127.0.0.3:")
                && harness.logs.contains("reason=the peer is not in proxy_protocol_from")
        }, harness.logs.all.joined(separator: "\n"))
        XCTAssertTrue(harness.logs.contains("listening address=127.0.0.1:\(http) listener=http proxy_protocol=true proxy_protocol_from=127.0.0.2,10.0.0.0/8,2001:db8::/32 tls=false"),
                      harness.logs.all.joined(separator: "\n"))
        let again = try self.send(port: http, header: header, tls: false, from: "127.0.0.2")
        XCTAssertTrue(again.response.contains("x-forwarded-for: 203.0.113.7\n"), again.response)
        let metrics = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/metrics"]).stdout
        XCTAssertTrue(metrics.contains(#"edge_proxy_protocol_refused_total{listener="http"} 1"#), metrics)
        let status = try Shell.run(["curl", "-sS", "http://127.0.0.1:\(harness.gateway.adminPort!)/status"]).stdout
        XCTAssertTrue(status.contains(#""proxy_protocol":true,"proxy_protocol_from":["127.0.0.2","10.0.0.0/8","2001:db8::/32"]}"#), status)
        await harness.shutdown()
    }

    /// HAProxy in TCP mode (TLS passed through) in front of the gateway, sending version 1
    /// and version 2 headers: clients connecting from 127.0.0.2 and 127.0.0.3 reach the
    /// upstream as themselves over HTTP/1.1 and HTTP/2, though every connection the
    /// gateway accepts comes from HAProxy.
    func testBehindHAProxyTheClientAddressSurvives() async throws {
        let harness = try await GatewayHarness.start { self.config(upstreamPort: $0) }
        let https = harness.port("https")
        let (v1Port, v2Port) = (freePort(), freePort())
        let cfg = harness.directory.file("haproxy.cfg")
        try harness.directory.write("haproxy.cfg", """
            global
              maxconn 100
            defaults
              mode tcp
              timeout connect 5s
              timeout client 30s
              timeout server 30s
            listen v1
              bind 127.0.0.1:\(v1Port)
              server gateway 127.0.0.1:\(https) send-proxy
            listen v2
              bind 127.0.0.1:\(v2Port)
              server gateway 127.0.0.1:\(https) send-proxy-v2

            """)
        let haproxy = Process()
        haproxy.executableURL = URL(fileURLWithPath: "/usr/sbin/haproxy")
        haproxy.arguments = ["-db", "-f", cfg]
        haproxy.standardOutput = FileHandle.nullDevice
        haproxy.standardError = FileHandle.nullDevice
        try haproxy.run()
        defer { haproxy.terminate(); haproxy.waitUntilExit() }
        XCTAssertTrue(GatewayProcess.Probe.wait(port: v1Port) && GatewayProcess.Probe.wait(port: v2Port), "haproxy did not start")
        for (port, source, version) in [(v1Port, "127.0.0.2", "1.1"), (v2Port, "127.0.0.3", "2")] {
            let result = try Shell.run(["curl", "-sS", "--max-time", "10", "--cacert", Self.pki.caPath, "--interface", source,
                                        version == "2" ? "--http2" : "--http1.1", "-w", "\n%{http_version}",
                                        "--connect-to", "localhost:\(port):127.0.0.1:\(port)", "https://localhost:\(port)/headers"])
            XCTAssertEqual(result.status, 0, result.stderr)
            XCTAssertTrue(result.stdout.contains("x-forwarded-for: \(source)\n"), result.stdout)
            XCTAssertTrue(result.stdout.hasSuffix("\n\(version)"), result.stdout)
        }
        await harness.shutdown()
    }

    /// Draining (SIGTERM, a handoff) closes a connection still waiting for its header at
    /// once, as one still in its TLS handshake: it has no request to finish.
    func testDrainingClosesConnectionsStillWaitingForTheHeader() async throws {
        let harness = try await GatewayHarness.start { self.config(upstreamPort: $0) }
        let drain = await harness.drainWithSilentConnection(port: harness.port("http"))  // timeouts.handshake: 10 s
        XCTAssertLessThan(drain.seconds, 6, "closed at the drain, not at the end of the 10 s grace period")
        XCTAssertTrue(drain.closed, "the connection is closed")
        await harness.shutdown()
    }
}
