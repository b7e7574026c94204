@testable import EdgeProxy
import Logging
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import XCTest

/// The frame-level HTTP/2 downstream on an embedded channel, behind the gateway's
/// engine: a client's bytes in, the frames written read back. The requests are answered
/// by the gateway itself (a redirect, a 404), so no upstream is involved.
final class HTTP2DownstreamTests: XCTestCase {
    var channel: EmbeddedChannel!
    var engine: HTTP2ServerEngine!
    var downstream: HTTP2Downstream!
    var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
    var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
    var reader = HTTP2FrameReader(expectsClientPreface: false)

    override func setUpWithError() throws {
        self.channel = EmbeddedChannel()
        let loop = LoopContext(eventLoop: self.channel.embeddedEventLoop)
        let router = Router(routes: [.init(host: nil, pathPrefix: "/moved", action: .redirect(Redirect(status: 301)))])
        let listener = ProxyListener(name: "h2", scheme: "https", router: router, loop: loop, logger: Logger(label: "test"))
        self.engine = HTTP2ServerEngine(maxConcurrentStreams: 10, maxHeaderListSize: 16_384) { _ in }
        self.downstream = HTTP2Downstream(listener: listener, info: DownstreamInfo(clientIP: "127.0.0.1", clientPort: 1), strictTransportSecurity: nil,
                                          eventLoop: self.channel.embeddedEventLoop)
        self.engine.streams = self.downstream
        self.downstream.engine = self.engine
        try self.channel.pipeline.syncOperations.addHandlers([self.engine, self.downstream])
        try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var preface = ByteBuffer(bytes: http2ClientPreface)
        HTTP2FrameWriter.settings([], into: &preface)
        self.receive(preface)
        XCTAssertEqual(try self.written(), ["settings", "0 window 1048576", "settings-ack"], "the connection's window, enlarged at once")
    }

    override func tearDown() {
        _ = try? self.channel.finish(acceptAlreadyClosed: true)
    }

    func request(_ path: String, stream: UInt32, end: Bool = true, extra: [(String, String)] = []) throws -> ByteBuffer {
        var block = ByteBuffer()
        let headers = HPACKHeaders([(":method", end ? "GET" : "POST"), (":scheme", "https"), (":authority", "a.test"), (":path", path)] + extra)
        try self.encoder.encode(headers: headers, to: &block)
        var bytes = ByteBuffer()
        HTTP2FrameWriter.headers(stream: stream, block: block, endStream: end, maxFrameSize: 16_384, into: &bytes)
        return bytes
    }

    func settings(initialWindowSize: UInt32) -> ByteBuffer {
        var bytes = ByteBuffer()
        HTTP2FrameWriter.settings([HTTP2WireSetting(identifier: HTTP2WireSetting.initialWindowSize, value: initialWindowSize)], into: &bytes)
        return bytes
    }

    /// The client's bytes, in one read batch.
    func receive(_ parts: ByteBuffer...) {
        var bytes = ByteBuffer()
        for var part in parts { bytes.writeBuffer(&part) }
        XCTAssertNoThrow(try self.channel.writeInbound(bytes))
        self.channel.pipeline.fireChannelReadComplete()
    }

    /// What was written, one line per frame: "stream kind details".
    func written() throws -> [String] {
        var bytes = ByteBuffer()
        while var chunk = try self.channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&chunk) }
        var out: [String] = []
        let names: [HTTP2WireError.Code: String] = [.noError: "noError", .protocolError: "protocolError", .cancel: "cancel"]
        while let frame = try self.reader.next(from: &bytes) {
            switch frame {
            case .settings: out.append("settings")
            case .settingsAck: out.append("settings-ack")
            case .headers(let id, var block, let end, _):
                out.append("\(id) headers \(try self.decoder.decodeHeaders(from: &block).first(name: ":status") ?? "trailers")\(end ? " end" : "")")
            case .data(let id, _, let end, _): out.append("\(id) data\(end ? " end" : "")")
            case .resetStream(let id, let code): out.append("\(id) reset \(HTTP2WireError.Code(rawValue: code).flatMap { names[$0] } ?? "\(code)")")
            case .windowUpdate(let id, let increment): out.append("\(id) window \(increment)")
            case .goAway(let last, let code, _): out.append("0 goaway \(last == UInt32(Int32.max) ? "max" : "\(last)") \(HTTP2WireError.Code(rawValue: code).flatMap { names[$0] } ?? "\(code)")")
            case .ping(let data, let ack): out.append("ping \(data)\(ack ? " ack" : "")")
            default: out.append("other")
            }
        }
        return out
    }

    /// Two streams in one read batch: each answered on its own stream, flushed once at
    /// the batch's end; a stream closed both ways leaves the table on the next turn.
    func testEachStreamIsAnsweredOnItsOwnStream() throws {
        self.receive(try self.request("/moved/a", stream: 1), try self.request("/nowhere", stream: 3))
        let frames = try self.written()
        XCTAssertEqual(frames.filter { $0.hasPrefix("1 ") }.first, "1 headers 301", "\(frames)")
        XCTAssertEqual(frames.filter { $0.hasPrefix("3 ") }.first, "3 headers 404", "\(frames)")
        XCTAssertTrue(frames.contains("1 data end") && frames.contains("3 data end"), "\(frames)")
        XCTAssertNotNil(self.downstream.stream(1), "its proxy is told on the next turn, not within its own write")
        self.channel.embeddedEventLoop.run()
        XCTAssertNil(self.downstream.stream(1), "closed both ways: gone")
        XCTAssertNil(self.downstream.stream(3))
    }

    /// The proxy closing a stream whose response and request both ended resets nothing:
    /// the response's end may still wait in the engine for the client's window, and a
    /// reset would drop it. One still open is reset with CANCEL.
    func testClosingAStreamThatEndedBothWaysResetsNothing() throws {
        self.receive(self.settings(initialWindowSize: 0), try self.request("/moved/a", stream: 1))
        XCTAssertEqual(try self.written(), ["settings-ack", "1 headers 301"], "the body waits for the stream's window")
        let done = try XCTUnwrap(self.downstream.stream(1))
        XCTAssertFalse(done.closed)
        done.close()
        XCTAssertEqual(try self.written(), [], "no reset after both ends")
        self.receive(self.settings(initialWindowSize: 65_535))
        XCTAssertEqual(try self.written(), ["settings-ack", "1 data end"], "the response's end went out after all")

        self.receive(try self.request("/moved/b", stream: 3, end: false))
        let frames = try self.written()
        XCTAssertEqual(frames.first, "3 headers 301", "\(frames)")
        // The answer came before the request body: the client is told to stop sending
        // (NO_ERROR), which keeps the answer, rather than CANCEL, which fails it.
        XCTAssertTrue(frames.contains("3 reset noError"), "\(frames)")
        self.receive(try self.request("/nowhere", stream: 5, end: false))
        _ = try self.written()
        let open = try XCTUnwrap(self.downstream.stream(5))
        XCTAssertTrue(open.closed, "reset with NO_ERROR already")
    }

    /// A malformed request (an upper-case field name, RFC 9113 §8.2.1) is reset with
    /// PROTOCOL_ERROR and never reaches the proxy's routing; its stream leaves the table.
    func testAMalformedRequestIsResetAndForgotten() throws {
        self.receive(try self.request("/moved/a", stream: 1, extra: [("X-Upper", "1")]))
        XCTAssertEqual(try self.written(), ["1 reset protocolError"])
        self.channel.embeddedEventLoop.run()
        XCTAssertNil(self.downstream.stream(1))
    }

    /// A stream opened while the connection is backed up starts unwritable and is told
    /// when that ends (its upstream read otherwise waited for the read timeout).
    func testAStreamOpenedWhileTheConnectionIsBackedUpIsToldWhenItClears() throws {
        self.channel.isWritable = false
        self.receive(try self.request("/nowhere", stream: 1, end: false))
        let stream = try XCTUnwrap(self.downstream.stream(1))
        XCTAssertFalse(stream.reportedWritable)
        self.channel.isWritable = true
        self.channel.pipeline.fireChannelWritabilityChanged()
        XCTAssertTrue(stream.reportedWritable)
    }

    /// A stream reset here is forgotten; a HEADERS frame on it afterwards (trailers
    /// behind the reset, which the client sent before it saw it) opens nothing again:
    /// the engine drops it, and the table would open nothing at or below the last
    /// stream it opened had the engine handed it on.
    func testAStreamResetHereIsNotOpenedAgainByItsTrailers() throws {
        self.receive(self.settings(initialWindowSize: 0), try self.request("/moved/a", stream: 1))
        XCTAssertEqual(try self.written(), ["settings-ack", "1 headers 301"])
        try XCTUnwrap(self.downstream.stream(1)).reset()
        XCTAssertEqual(try self.written(), ["1 reset cancel"])
        self.channel.embeddedEventLoop.run()
        XCTAssertNil(self.downstream.stream(1))
        var block = ByteBuffer()
        try self.encoder.encode(headers: ["x-trailer": "1"], to: &block)
        var trailers = ByteBuffer()
        HTTP2FrameWriter.headers(stream: 1, block: block, endStream: true, maxFrameSize: 16_384, into: &trailers)
        self.receive(trailers)
        XCTAssertEqual(try self.written(), [])
        XCTAssertNil(self.downstream.stream(1))
        self.downstream.received(.headers(.init(headers: [":method": "GET", ":scheme": "https", ":path": "/moved/b"], endStream: true)), on: 1)
        XCTAssertNil(self.downstream.stream(1), "not opened again")
        XCTAssertEqual(try self.written(), [])
    }

    /// The idle timeout counts the streams the engine created: one it closed without
    /// creating (a request it refused) does not make a connection with an open stream look
    /// idle. It waits in the loop's deadline heap, not in a timer of its own.
    func testTheIdleTimeoutCountsOnlyCreatedStreams() throws {
        let idle = ProxyLimits().idleTimeout
        self.downstream.streamCreated(1)
        self.downstream.streamClosed(3)
        self.channel.embeddedEventLoop.advanceTime(by: idle + .seconds(1))
        XCTAssertEqual(try self.written(), [], "stream 1 is open: no GOAWAY")
        XCTAssertTrue(self.channel.isActive)
        self.downstream.streamClosed(1)
        self.channel.embeddedEventLoop.advanceTime(by: idle - .seconds(1))
        XCTAssertEqual(try self.written(), [], "idle for less than the timeout")
        self.channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        XCTAssertEqual(try self.written(), ["0 goaway 1 noError"])
        XCTAssertFalse(self.channel.isActive)
    }

    /// The drain: GOAWAY with the largest stream ID and a PING; at its ACK the final
    /// GOAWAY names the last stream; the connection closes when that stream is done.
    func testTheDrainAnnouncesThenNamesTheLastStreamAndClosesWhenItIsDone() throws {
        self.downstream.streamCreated(5)  // as the engine tells it
        self.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        let announced = try self.written()
        XCTAssertEqual(announced.map { $0.hasPrefix("ping") ? "ping" : $0 }, ["0 goaway max noError", "ping"])
        let ping = try XCTUnwrap(UInt64(announced.last?.dropFirst(5) ?? ""))
        var bytes = ByteBuffer()
        HTTP2FrameWriter.ping(7, ack: true, into: &bytes)
        self.receive(bytes)
        XCTAssertEqual(try self.written(), [], "not the drain's PING")
        bytes.clear()
        HTTP2FrameWriter.ping(ping, ack: true, into: &bytes)
        self.receive(bytes)
        XCTAssertEqual(try self.written(), ["0 goaway 5 noError"])
        self.channel.embeddedEventLoop.run()
        XCTAssertTrue(self.channel.isActive, "stream 5 is still open")
        self.downstream.streamClosed(5)
        self.channel.embeddedEventLoop.run()
        XCTAssertFalse(self.channel.isActive)
    }

    /// A request body the gateway does not want (answered before it came): the stream
    /// is reset with NO_ERROR, and no window goes back on it however much arrives.
    func testNoWindowGoesBackOnAStreamAnsweredEarly() throws {
        self.receive(try self.request("/moved/upload", stream: 1, end: false, extra: [("content-length", "70000")]))
        _ = try self.written()
        let stream = try XCTUnwrap(self.downstream.stream(1))
        XCTAssertTrue(stream.closed, "answered and reset with NO_ERROR: its body is not wanted")
        XCTAssertEqual(stream.unacknowledged, 0)
        stream.unacknowledged = 40_000
        stream.read()
        XCTAssertEqual(try self.written(), [], "no WINDOW_UPDATE on a stream reset already")
    }
}

/// The engine and the streams' table together on an embedded channel: a client's bytes
/// in, the engine's bytes out.
final class HTTP2EngineAndStreamsTests: XCTestCase {
    var channel: EmbeddedChannel!
    var engine: HTTP2ServerEngine!
    var downstream: HTTP2Downstream!
    var reader = HTTP2FrameReader(expectsClientPreface: false)

    override func setUpWithError() throws {
        self.channel = EmbeddedChannel()
        let loop = LoopContext(eventLoop: self.channel.embeddedEventLoop)
        let router = Router(routes: [.init(host: nil, pathPrefix: "/moved", action: .redirect(Redirect(status: 301)))])
        let listener = ProxyListener(name: "h2", scheme: "https", router: router, loop: loop, logger: Logger(label: "test"))
        self.engine = HTTP2ServerEngine(maxConcurrentStreams: 10, maxHeaderListSize: 16_384) { _ in }
        self.downstream = HTTP2Downstream(listener: listener, info: DownstreamInfo(clientIP: "127.0.0.1", clientPort: 1), strictTransportSecurity: nil,
                                          eventLoop: self.channel.embeddedEventLoop)
        self.engine.streams = self.downstream
        self.downstream.engine = self.engine
        try self.channel.pipeline.syncOperations.addHandlers([self.engine, self.downstream])
        try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    override func tearDown() {
        _ = try? self.channel.finish(acceptAlreadyClosed: true)
    }

    /// The client's preface and a HEAD request whose 301 (no body) the engine holds: the
    /// client reads nothing.
    func headHeldWhileTheClientReadsNothing() throws {
        var bytes = ByteBuffer(string: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        HTTP2FrameWriter.settings([], into: &bytes)
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        var block = ByteBuffer()
        try encoder.encode(headers: [":method": "HEAD", ":scheme": "https", ":authority": "a.test", ":path": "/moved/a"], to: &block)
        HTTP2FrameWriter.headers(stream: 1, block: block, endStream: true, maxFrameSize: 16_384, into: &bytes)
        self.channel.isWritable = false
        try self.channel.writeInbound(bytes)
        self.channel.pipeline.fireChannelReadComplete()
        self.channel.embeddedEventLoop.run()
        XCTAssertTrue(self.engine.holdsParts(on: 1), "the 301's HEADERS wait for the client")
        XCTAssertNotNil(self.downstream.stream(1))
    }

    func resets() throws -> [UInt32] {
        var out = ByteBuffer()
        while var chunk = try self.channel.readOutbound(as: ByteBuffer.self) { out.writeBuffer(&chunk) }
        var ids: [UInt32] = []
        while let frame = try self.reader.next(from: &out) {
            if case .resetStream(let id, _) = frame { ids.append(id) }
        }
        return ids
    }

    /// A response with no body (HEAD) whose HEADERS wait in the engine while the client
    /// reads nothing counts no bytes: the stall sweep must still see it, or the stream,
    /// and with it the connection, stays open for good (nothing else times it out).
    func testAHeadHeldWhileTheClientReadsNothingIsResetBySweep() throws {
        try self.headHeldWhileTheClientReadsNothing()
        XCTAssertEqual(try self.resets(), [])
        // Three sweeps without progress, one every half idle timeout.
        self.channel.embeddedEventLoop.advanceTime(by: ProxyLimits().idleTimeout * 2)
        XCTAssertEqual(try self.resets(), [1], "the stream is reset with CANCEL")
        self.channel.embeddedEventLoop.run()
        XCTAssertNil(self.downstream.stream(1))
        XCTAssertFalse(self.engine.holdsParts(on: 1))
    }

    /// A client that never reads its socket but sends a WINDOW_UPDATE now and then makes
    /// its stream look as if it progressed: the connection is closed instead, once it has
    /// stayed unwritable with a response held for four sweeps.
    func testAClientThatReadsNothingButOpensItsWindowIsClosed() throws {
        try self.headHeldWhileTheClientReadsNothing()
        let idle = ProxyLimits().idleTimeout
        for _ in 0 ..< 10 {
            var update = ByteBuffer()
            HTTP2FrameWriter.windowUpdate(stream: 0, increment: 1, into: &update)
            try self.channel.writeInbound(update)
            self.channel.pipeline.fireChannelReadComplete()
            self.channel.embeddedEventLoop.advanceTime(by: .nanoseconds(idle.nanoseconds / 4))
            if !self.channel.isActive { break }
        }
        XCTAssertEqual(try self.resets(), [], "the stream looked alive")
        XCTAssertFalse(self.channel.isActive, "the connection is closed")
    }
}
