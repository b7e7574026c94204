import CEdgeShims
@testable import EdgeTLS
import EdgeTestSupport
import NIOCore
import NIOEmbedded
import NIOTLS
import XCTest

/// A selector that serves one context for `localhost` (and, unless strict, for every
/// other name) and counts what it is asked.
private final class CountingSelector: ServerNameSelector, @unchecked Sendable {
    let context: TLSContext
    let strict: Bool
    // Read and written on the embedded loop's thread only.
    var asked: [String?] = []

    init(context: TLSContext, strict: Bool) {
        self.context = context
        self.strict = strict
    }

    func select(serverName: String?) -> ServerNameSelection {
        self.asked.append(serverName)
        if self.strict, serverName != "localhost" { return .reject }
        return .use(self.context)
    }
}

/// SNI is resolved once per ClientHello, by the client-hello callback, with the name
/// normalized once; the servername callback acts on that verdict. Real handshakes in
/// memory (client and server `OpenSSLHandler`s on one embedded loop).
final class ServerNameSelectionTests: XCTestCase {
    static let pki = try! TestPKI()
    static let leaf = try! pki.issue(["localhost"])

    private func lineageContext() throws -> TLSContext {
        let chain = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: Self.leaf.fullchain))))
        let key = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: Self.leaf.key)))).key!
        return try TLSContext.server(chain: chain.certificates, key: key, policy: TLSServerPolicy())
    }

    /// One handshake from a client sending `serverName` to a listener whose selector
    /// is `selector`; the client's errors, and whether it completed.
    private func handshake(serverName: String?, selector: CountingSelector, clientGroups: String? = nil) throws -> (completed: Bool, errors: [TLSError]) {
        let loop = EmbeddedEventLoop()
        let client = EmbeddedChannel(loop: loop)
        let server = EmbeddedChannel(loop: loop)
        let clientEvents = EventRecorder()
        let listener = try TLSContext.listener(policy: TLSServerPolicy(), selector: selector)
        var configuration = TLSClientConfiguration()
        configuration.caFile = Self.pki.caPath
        let clientContext = try TLSContext.client(configuration: configuration)
        if let clientGroups {
            // Offering a first key share the server does not accept forces a HelloRetryRequest.
            XCTAssertEqual(edge_SSL_CTX_set1_groups_list(clientContext.pointer, clientGroups), 1)
        }
        try server.pipeline.syncOperations.addHandler(OpenSSLHandler(serverContext: listener))
        try client.pipeline.syncOperations.addHandler(OpenSSLHandler(clientContext: clientContext, serverName: serverName, verifyHostnames: ["localhost"]))
        try client.pipeline.syncOperations.addHandler(clientEvents)
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        try server.connect(to: address).wait()
        try client.connect(to: address).wait()
        for _ in 0..<100 {
            var moved = false
            while let data = try client.readOutbound(as: ByteBuffer.self) {
                moved = true
                if server.isActive { _ = try? server.writeInbound(data) }  // a refusal throws here too
            }
            while let data = try server.readOutbound(as: ByteBuffer.self) {
                moved = true
                if client.isActive { _ = try? client.writeInbound(data) }
            }
            if !moved { break }
        }
        let completed = clientEvents.events.contains { if case .handshakeCompleted = $0 { return true } else { return false } }
        return (completed, clientEvents.errors.compactMap { $0 as? TLSError })
    }

    func testOneLookupPerHandshakeWithTheNameNormalizedOnce() throws {
        let selector = CountingSelector(context: try lineageContext(), strict: false)
        XCTAssertTrue(try handshake(serverName: "LocalHost", selector: selector).completed)
        XCTAssertEqual(selector.asked, ["localhost"], "one lookup, by the client-hello callback, lower-cased")
        selector.asked = []
        XCTAssertTrue(try handshake(serverName: nil, selector: selector).completed)
        XCTAssertEqual(selector.asked, [nil], "a ClientHello without SNI is looked up once too")
    }

    func testARejectedNameIsLookedUpOnceAndRefusedWithUnrecognizedName() throws {
        let selector = CountingSelector(context: try lineageContext(), strict: true)
        let result = try handshake(serverName: "other.example", selector: selector)
        XCTAssertFalse(result.completed)
        XCTAssertEqual(selector.asked, ["other.example"])
        let reasons = result.errors.map(\.reason).joined(separator: "; ")
        XCTAssertTrue(reasons.contains("unrecognized name"), reasons)
    }

    /// After a HelloRetryRequest the second ClientHello is looked up again (its SNI is
    /// the client's to restate), never answered with the first one's verdict.
    func testASecondClientHelloAfterHelloRetryRequestIsLookedUpAgain() throws {
        let selector = CountingSelector(context: try lineageContext(), strict: false)
        let result = try handshake(serverName: "localhost", selector: selector, clientGroups: "secp521r1:X25519")
        XCTAssertTrue(result.completed, "\(result.errors)")
        XCTAssertEqual(selector.asked, ["localhost", "localhost"], "one lookup per ClientHello")
    }

    func testNormalizationLowerCasesASCIILettersOnly() {
        XCTAssertEqual(ServerName.normalized("WWW.Example.COM"), "www.example.com")
        XCTAssertEqual(ServerName.normalized(Array("A-Z.[@`{]".utf8)), "a-z.[@`{]", "only A–Z change")
        XCTAssertEqual(ServerName.normalized(Array("caf\u{C9}.example".utf8)), "caf\u{C9}.example", "non-ASCII bytes are left alone")
    }

    func testIndexMatchesExactNamesThenOneLabelWildcards() {
        var index = ServerNameIndex<Int>()
        index.insert("*.Example.com", 1)
        index.insert("www.example.com", 2)
        XCTAssertEqual(index.match("www.example.com"), 2, "the exact name wins over the wildcard")
        XCTAssertEqual(index.match("api.example.com"), 1)
        XCTAssertNil(index.match("example.com"), "a wildcard does not match its own domain")
        XCTAssertNil(index.match("a.b.example.com"), "a wildcard matches one label only")
        XCTAssertNil(index.match("localhost"))
        XCTAssertEqual(Set(index.patterns.map(\.pattern)), ["*.example.com", "www.example.com"])
        // The parent is found by character, as the router finds it: a dot followed by a
        // combining mark is not where the parent begins, so this host matches the same
        // `*.example.com` its route does, and gets that pattern's client authentication.
        XCTAssertEqual(index.match("x.\u{301}a.example.com"), 1)
    }

    /// What the second ClientHello after a HelloRetryRequest is checked against: it may
    /// go on only where it is served the same leaf under the same admission.
    func testAContextServesLikeAnotherOnlyWithTheSameLeafAndAdmission() throws {
        let same = try lineageContext()
        XCTAssertTrue(try lineageContext().servesLike(same), "another snapshot's context for the same lineage")
        var requiring = TLSServerPolicy()
        requiring.clientCAFile = Self.pki.caPath
        requiring.requireClientCertificate = true
        let chain = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: Self.leaf.fullchain))))
        let key = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: Self.leaf.key)))).key!
        XCTAssertFalse(try TLSContext.server(chain: chain.certificates, key: key, policy: requiring).servesLike(same), "another client authentication")
        let other = try Self.pki.issue(["other.example"])
        let otherChain = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: other.fullchain))))
        let otherKey = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: other.key)))).key!
        XCTAssertFalse(try TLSContext.server(chain: otherChain.certificates, key: otherKey, policy: TLSServerPolicy()).servesLike(same), "another certificate")
    }
}
