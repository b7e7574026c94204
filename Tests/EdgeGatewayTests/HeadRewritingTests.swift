@testable import EdgeProxy
import EdgeTLS
import NIOCore
import XCTest

/// The heads the proxy writes, built from parsed heads without sockets (#31: head rewriting
/// out of ProxyHandler). End-to-end, ProxyTests and RequestHardeningTests send the same
/// through real connections.
final class HeadRewritingTests: XCTestCase {
    var heads = ReusableBuffer(maximumKeptCapacity: 16 * 1_024)

    func group(host: String? = nil) throws -> UpstreamGroup {
        UpstreamGroup(name: "app", backends: [try Backend(host: "127.0.0.1", port: 8080)], tls: nil, timeouts: .init(), hostHeader: host)
    }

    /// A client that presented `certificate` (Envoy's XFCC value), or none.
    func client(_ ip: String = "192.0.2.7", certificate: String? = nil) -> DownstreamInfo {
        var info = DownstreamInfo(clientIP: ip, clientPort: 50_000)
        var identity = ClientIdentity(tls: nil)
        identity.forwardedClientCert = certificate
        info.clientIdentity = identity
        return info
    }

    func upstream(_ request: String, group: UpstreamGroup? = nil, upgrade: Bool = false, scheme: String = "https", mutualTLS: Bool = false,
                  info: DownstreamInfo? = nil) throws -> String {
        let head = try HTTP1Parser.parseRequest(Array(request.utf8))
        let out = HeadRewriting.upstreamHead(for: head, group: try group ?? self.group(), upgrade: upgrade, scheme: scheme, mutualTLS: mutualTLS,
                                             info: info ?? self.client(), heads: &self.heads)
        return String(buffer: out)
    }

    func downstream(_ response: String, request: String = "GET / HTTP/1.1\r\nHost: a\r\n\r\n", closing: Bool = false, hsts: String? = nil) throws
        -> (head: String, chunked: Bool, close: Bool) {
        let (out, chunked, close) = HeadRewriting.downstreamHead(for: try HTTP1Parser.parseResponse(Array(response.utf8)),
                                                                 request: try HTTP1Parser.parseRequest(Array(request.utf8)),
                                                                 closing: closing, hsts: hsts, heads: &self.heads)
        return (String(buffer: out), chunked, close)
    }

    /// Hop-by-hop fields go (and those Connection names), a client's X-Forwarded-Client-Cert
    /// goes without mutual TLS, the client's address is appended to X-Forwarded-For, and
    /// X-Forwarded-Proto/-Host and Forwarded are the gateway's own.
    func testTheUpstreamHeadDropsHopByHopAndForgedFieldsAndAddsForwarding() throws {
        XCTAssertEqual(try upstream("""
            GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n\
            X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Client-Cert: forged\r\nX-Forwarded-Proto: http\r\nX-Keep: yes\r\n\r\n
            """), """
            GET /x HTTP/1.1\r\nHost: a.test\r\nX-Keep: yes\r\nx-forwarded-for: 10.0.0.1, 192.0.2.7\r\nx-forwarded-proto: https\r\n\
            x-forwarded-host: a.test\r\nforwarded: for=192.0.2.7;host="a.test";proto=https\r\n\r\n
            """)
    }

    /// An HTTP/1.0 request goes on as HTTP/1.1; a group's `host_header` replaces Host.
    func testAGroupHostAndAnHTTP10Request() throws {
        XCTAssertEqual(try upstream("GET /x HTTP/1.0\r\nHost: a.test\r\n\r\n", group: try group(host: "app.internal"), scheme: "http"), """
            GET /x HTTP/1.1\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: a.test\r\n\
            forwarded: for=192.0.2.7;host="a.test";proto=http\r\nhost: app.internal\r\n\r\n
            """)
    }

    /// Only the upgrade the gateway tunnels goes on, and only its token (`h2c` beside it
    /// would reach an upstream's HTTP/2 past the gateway's checks); without a tunnel, none.
    func testOnlyTheWebSocketUpgradeGoesOn() throws {
        let request = "GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n\r\n"
        let tunnel = try upstream(request, upgrade: true)
        XCTAssertTrue(tunnel.contains("\r\nconnection: upgrade\r\nupgrade: websocket\r\n") && !tunnel.contains("h2c"), tunnel)
        let plain = try upstream(request, upgrade: false)
        XCTAssertFalse(plain.lowercased().contains("upgrade"), plain)
    }

    /// With mutual TLS, the verified identity replaces whatever the client sent; without a
    /// certificate (optional mode) the verdict says NONE.
    func testWithMutualTLSTheVerifiedIdentityIsForwarded() throws {
        let request = "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Client-Cert: forged\r\nX-Client-Verify: SUCCESS\r\n\r\n"
        let verified = try upstream(request, mutualTLS: true, info: client(certificate: "Hash=ab;Subject=\"CN=c\""))
        XCTAssertTrue(verified.contains("x-forwarded-client-cert: Hash=ab;Subject=\"CN=c\"\r\nx-client-verify: SUCCESS\r\n"), verified)
        XCTAssertFalse(verified.contains("forged"), verified)
        let none = try upstream(request, mutualTLS: true, info: client())
        XCTAssertTrue(none.contains("x-client-verify: NONE\r\n") && !none.contains("x-forwarded-client-cert") && !none.contains("SUCCESS"), none)
    }

    /// A value the gateway adds that could end a line early is found before anything is written.
    func testAddedValuesThatCouldSplitTheHeadAreFound() throws {
        XCTAssertEqual(HeadRewriting.unsafeAddedField(group: try group(), mutualTLS: true, info: client("1.2.3.4\r\n", certificate: "a\r\nb")),
                       "x-forwarded-client-cert", "checked first")
        XCTAssertNil(HeadRewriting.unsafeAddedField(group: try group(), mutualTLS: false, info: client("1.2.3.4", certificate: "a\r\nb")),
                     "not sent without mutual TLS")
        let info = DownstreamInfo(clientIP: "192.0.2.7\r\nx-evil: 1", clientPort: 1)
        XCTAssertEqual(HeadRewriting.unsafeAddedField(group: try group(), mutualTLS: false, info: info), "x-forwarded-for")
        XCTAssertEqual(HeadRewriting.unsafeAddedField(group: try group(host: "a\0b"), mutualTLS: false, info: DownstreamInfo(clientIP: "1.2.3.4", clientPort: 1)), "host")
        XCTAssertNil(HeadRewriting.unsafeAddedField(group: try group(host: "app.internal"), mutualTLS: true, info: DownstreamInfo(clientIP: "1.2.3.4", clientPort: 1)))
    }

    /// The response head for the client's HTTP version: chunked for HTTP/1.1 when the length
    /// is unknown, close for HTTP/1.0, the listener's HSTS instead of the upstream's, the
    /// upstream's Connection never copied, and close while draining.
    func testTheDownstreamHeadFramesForTheClient() throws {
        let chunked = try downstream("HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nStrict-Transport-Security: max-age=1\r\nX-A: b\r\n\r\n",
                                     hsts: "max-age=63072000")
        XCTAssertEqual(chunked.head, "HTTP/1.1 200 OK\r\nX-A: b\r\nstrict-transport-security: max-age=63072000\r\ntransfer-encoding: chunked\r\n\r\n")
        XCTAssertTrue(chunked.chunked)
        XCTAssertFalse(chunked.close)
        let old = try downstream("HTTP/1.1 200 OK\r\nX-A: b\r\n\r\n", request: "GET / HTTP/1.0\r\n\r\n")
        XCTAssertEqual(old.head, "HTTP/1.0 200 OK\r\nX-A: b\r\nconnection: close\r\n\r\n")
        XCTAssertEqual([old.chunked, old.close], [false, true])
        let kept = try downstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", request: "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(kept.head, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nconnection: keep-alive\r\n\r\n")
        XCTAssertEqual([kept.chunked, kept.close], [false, false])
        // HTTP/1.0 cannot chunk: a body of unknown length ends with the connection, keep-alive asked or not.
        let unknown = try downstream("HTTP/1.1 200 OK\r\n\r\n", request: "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(unknown.head, "HTTP/1.0 200 OK\r\nconnection: close\r\n\r\n")
        XCTAssertEqual([unknown.chunked, unknown.close], [false, true])
        let draining = try downstream("HTTP/1.1 204 No Content\r\n\r\n", closing: true)
        XCTAssertEqual(draining.head, "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        XCTAssertEqual([draining.chunked, draining.close], [false, true], "no body: nothing to chunk")
        // The answer to HEAD has no body, whatever its length fields say: nothing to chunk.
        let head = try downstream("HTTP/1.1 200 OK\r\n\r\n", request: "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        XCTAssertEqual(head.head, "HTTP/1.1 200 OK\r\n\r\n")
        XCTAssertEqual([head.chunked, head.close], [false, false])
    }
}
