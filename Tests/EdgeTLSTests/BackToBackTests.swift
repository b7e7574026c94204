import EdgeTLS
import EdgeTestSupport
import NIOCore
import NIOEmbedded
import NIOTLS
import XCTest

/// Records events and errors that reach the end of a pipeline.
final class EventRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var received = ByteBuffer()
    /// The capacity of each buffer read, as handed on.
    var capacities: [Int] = []
    var errors: [Error] = []
    var events: [TLSUserEvent] = []
    var inactive = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = Self.unwrapInboundIn(data)
        self.capacities.append(buffer.capacity)
        self.received.writeBuffer(&buffer)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { self.errors.append(error) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent { self.events.append(event) }
    }

    func channelInactive(context: ChannelHandlerContext) { self.inactive = true }
}

/// Client and server handlers talking in memory, no sockets (like swift-nio-ssl's BackToBackEmbeddedChannel).
final class BackToBackTests: XCTestCase {
    static let pki = try! TestPKI()
    static let leaf = try! pki.issue(["localhost"])

    func serverContext(alpn: [String] = ["h2", "http/1.1"]) throws -> TLSContext {
        let chain = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: Self.leaf.fullchain))))
        let key = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: Self.leaf.key)))).key!
        var policy = TLSServerPolicy()
        policy.alpnProtocols = alpn
        return try TLSContext.server(chain: chain.certificates, key: key, policy: policy)
    }

    func clientContext(alpn: [String] = ["http/1.1"]) throws -> TLSContext {
        var configuration = TLSClientConfiguration()
        configuration.caFile = Self.pki.caPath
        configuration.alpnProtocols = alpn
        return try TLSContext.client(configuration: configuration)
    }

    struct Pair {
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let clientEvents: EventRecorder
        let serverEvents: EventRecorder

        /// Moves bytes both ways until nothing is in flight.
        func interact() throws {
            for _ in 0..<100 {
                var moved = false
                while let data = try self.client.readOutbound(as: ByteBuffer.self) {
                    moved = true
                    if self.server.isActive { try self.server.writeInbound(data) }
                }
                while let data = try self.server.readOutbound(as: ByteBuffer.self) {
                    moved = true
                    if self.client.isActive { try self.client.writeInbound(data) }
                }
                if !moved { return }
            }
        }
    }

    func makePair(verifyName: String = "localhost", configuration: TLSHandlerConfiguration = .init()) throws -> Pair {
        let loop = EmbeddedEventLoop()
        let client = EmbeddedChannel(loop: loop)
        let server = EmbeddedChannel(loop: loop)
        let clientEvents = EventRecorder(), serverEvents = EventRecorder()
        try server.pipeline.syncOperations.addHandler(OpenSSLHandler(serverContext: serverContext(), configuration: configuration))
        try server.pipeline.syncOperations.addHandler(serverEvents)
        try client.pipeline.syncOperations.addHandler(OpenSSLHandler(clientContext: clientContext(), serverName: "localhost", verifyHostnames: [verifyName]))
        try client.pipeline.syncOperations.addHandler(clientEvents)
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        try server.connect(to: address).wait()
        try client.connect(to: address).wait()
        return Pair(client: client, server: server, clientEvents: clientEvents, serverEvents: serverEvents)
    }

    func testHandshakeNegotiatesALPNAndCarriesDataBothWays() throws {
        let pair = try makePair()
        try pair.interact()
        XCTAssertEqual(pair.clientEvents.events, [.handshakeCompleted(negotiatedProtocol: "http/1.1")])
        XCTAssertEqual(pair.serverEvents.events, [.handshakeCompleted(negotiatedProtocol: "http/1.1")])
        try pair.client.writeAndFlush(ByteBuffer(string: "ping from client")).wait()
        try pair.interact()
        XCTAssertEqual(pair.serverEvents.received.getString(at: 0, length: pair.serverEvents.received.readableBytes), "ping from client")
        // A large write is split into records and reassembled intact.
        let big = ByteBuffer(repeating: 0x5a, count: 1_000_000)
        pair.server.write(big, promise: nil)
        pair.server.flush()
        try pair.interact()
        XCTAssertEqual(pair.clientEvents.received.readableBytes, 1_000_000)
        XCTAssertTrue(pair.clientEvents.errors.isEmpty && pair.serverEvents.errors.isEmpty)
    }

    /// `compactReads()` (set for HTTP/2): each read goes on in a buffer of its own size,
    /// not in the loop's shared plaintext buffer (1 KiB at least), which NIO's HTTP/2
    /// frame decoder would keep for as long as the connection idles.
    func testCompactedReadsArriveInBuffersOfTheirOwnSize() throws {
        let pair = try makePair()
        try pair.interact()
        try pair.client.writeAndFlush(ByteBuffer(string: "ping")).wait()
        try pair.interact()
        XCTAssertGreaterThanOrEqual(pair.serverEvents.capacities.last ?? 0, 1_024, "the shared buffer, without compaction")
        try pair.server.pipeline.syncOperations.handler(type: OpenSSLHandler.self).compactReads()
        try pair.client.writeAndFlush(ByteBuffer(string: "pong")).wait()
        try pair.interact()
        XCTAssertLessThanOrEqual(pair.serverEvents.capacities.last ?? .max, 16, "\(pair.serverEvents.capacities)")
        XCTAssertEqual(pair.serverEvents.received.getString(at: 0, length: pair.serverEvents.received.readableBytes), "pingpong")
    }

    func testWritesBeforeHandshakeAreSentAfterIt() throws {
        let pair = try makePair()
        pair.client.write(ByteBuffer(string: "early"), promise: nil)
        pair.client.flush()
        try pair.interact()
        XCTAssertEqual(pair.serverEvents.received.readableBytes, 5)
    }

    func testCleanCloseExchangesCloseNotify() throws {
        let pair = try makePair()
        try pair.interact()
        let closed = pair.client.close()
        try pair.interact()
        XCTAssertNoThrow(try closed.wait())
        XCTAssertFalse(pair.server.isActive, "server answers close_notify and closes")
        XCTAssertFalse(pair.client.isActive)
        XCTAssertFalse(pair.serverEvents.errors.contains { ($0 as? TLSError)?.isUncleanShutdown == true })
        XCTAssertFalse(pair.clientEvents.errors.contains { ($0 as? TLSError)?.isUncleanShutdown == true })
    }

    func testUncleanEOFIsReportedDistinctly() throws {
        let pair = try makePair()
        try pair.interact()
        pair.server.pipeline.fireChannelInactive()
        XCTAssertTrue(pair.serverEvents.errors.contains { ($0 as? TLSError)?.isUncleanShutdown == true }, "\(pair.serverEvents.errors)")
    }

    func testEOFDuringHandshakeIsReportedDistinctly() throws {
        let pair = try makePair()
        // Deliver only the ClientHello, then the peer vanishes.
        if let hello = try pair.client.readOutbound(as: ByteBuffer.self) { try pair.server.writeInbound(hello) }
        pair.server.pipeline.fireChannelInactive()
        XCTAssertTrue(pair.serverEvents.errors.contains { ($0 as? TLSError)?.isEOFDuringHandshake == true }, "\(pair.serverEvents.errors)")
    }

    func testHostnameMismatchFailsTheHandshakeWithTheReason() throws {
        let pair = try makePair(verifyName: "other.example")
        try pair.interact()
        let failure = pair.clientEvents.errors.compactMap { $0 as? TLSError }.first { $0.isHandshakeFailure }
        XCTAssertNotNil(failure)
        XCTAssertTrue(failure?.reason.contains("hostname mismatch") ?? false, failure?.reason ?? "no error")
        XCTAssertFalse(pair.client.isActive)
    }

    func testSilentClientIsDroppedAfterTheHandshakeTimeout() throws {
        var configuration = TLSHandlerConfiguration()
        configuration.handshakeTimeout = .seconds(2)
        let pair = try makePair(configuration: configuration)
        _ = try pair.client.readOutbound(as: ByteBuffer.self)  // ClientHello never arrives
        (pair.server.eventLoop as! EmbeddedEventLoop).advanceTime(by: .seconds(3))
        XCTAssertFalse(pair.server.isActive)
        XCTAssertTrue(pair.serverEvents.errors.contains { ($0 as? TLSError)?.isHandshakeTimeout == true })
    }

    func testMismatchedKeyIsRefusedByTheContext() throws {
        let other = try Self.pki.issue(["other"])
        let chain = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: Self.leaf.fullchain))))
        let wrongKey = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: other.key)))).key!
        XCTAssertFalse(keyMatches(wrongKey, certificate: chain.certificates[0]))
        XCTAssertThrowsError(try TLSContext.server(chain: chain.certificates, key: wrongKey, policy: TLSServerPolicy()))
    }

    func testPrivateKeyDescriptionNeverShowsKeyMaterial() throws {
        let key = try PEMBundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: Self.leaf.key)))).key!
        XCTAssertEqual("\(key)", "PrivateKey(ECDSA P-256)")
    }
}
