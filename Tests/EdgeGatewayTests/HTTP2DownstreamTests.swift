@testable import EdgeProxy
import Logging
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import XCTest

/// The frame-level HTTP/2 downstream on an embedded channel, without NIO's HTTP/2
/// handler in front: frames in as NIO hands them on, frames out as the streams write
/// them. The requests are answered by the gateway itself (a redirect, a 404), so no
/// upstream is involved.
final class HTTP2DownstreamTests: XCTestCase {
    var channel: EmbeddedChannel!
    var downstream: HTTP2Downstream!

    override func setUp() {
        self.channel = EmbeddedChannel()
        let loop = LoopContext(eventLoop: self.channel.embeddedEventLoop)
        let router = Router(routes: [.init(host: nil, pathPrefix: "/moved", action: .redirect(Redirect(status: 301)))])
        let listener = ProxyListener(name: "h2", scheme: "https", router: router, loop: loop, logger: Logger(label: "test"))
        self.downstream = HTTP2Downstream(listener: listener, info: DownstreamInfo(clientIP: "127.0.0.1", clientPort: 1), strictTransportSecurity: nil,
                                          eventLoop: self.channel.embeddedEventLoop)
        XCTAssertNoThrow(try self.channel.pipeline.syncOperations.addHandler(self.downstream))
        XCTAssertNoThrow(try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait())
        // The connection's window, enlarged first.
        let first = try? self.channel.readOutbound(as: HTTP2Frame.self)
        XCTAssertEqual(first.map { "\($0.payload)" }, "\(HTTP2Frame.FramePayload.windowUpdate(windowSizeIncrement: HTTP2Downstream.connectionWindowBoost))")
    }

    override func tearDown() {
        _ = try? self.channel.finish(acceptAlreadyClosed: true)
    }

    func request(_ path: String, stream: HTTP2StreamID, end: Bool = true, extra: HPACKHeaders = [:]) -> HTTP2Frame {
        var headers: HPACKHeaders = [":method": end ? "GET" : "POST", ":scheme": "https", ":authority": "a.test", ":path": path]
        headers.add(contentsOf: extra)
        return HTTP2Frame(streamID: stream, payload: .headers(.init(headers: headers, endStream: end)))
    }

    /// Frames in, in one read batch.
    func receive(_ frames: HTTP2Frame...) {
        for frame in frames { self.channel.pipeline.fireChannelRead(frame) }
        self.channel.pipeline.fireChannelReadComplete()
    }

    /// What was written, one line per frame: "stream kind details".
    func written() throws -> [String] {
        var out: [String] = []
        while let frame = try self.channel.readOutbound(as: HTTP2Frame.self) {
            let id = Int(frame.streamID)
            switch frame.payload {
            case .headers(let headers):
                out.append("\(id) headers \(headers.headers.first(name: ":status") ?? "trailers")\(headers.endStream ? " end" : "")")
            case .data(let data):
                out.append("\(id) data\(data.endStream ? " end" : "")")
            case .rstStream(let code):
                let names: [HTTP2ErrorCode: String] = [.noError: "noError", .protocolError: "protocolError", .cancel: "cancel"]
                out.append("\(id) reset \(names[code] ?? "\(code)")")
            case .windowUpdate(let increment):
                out.append("\(id) window \(increment)")
            case .goAway(let last, let code, _):
                out.append("\(id) goaway \(Int(last)) \(code == .noError ? "noError" : "\(code)")")
            default:
                out.append("\(id) \(frame.payload)")
            }
        }
        return out
    }

    func closed(_ id: HTTP2StreamID) {
        self.channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: id, reason: nil))
        self.channel.embeddedEventLoop.run()
    }

    /// Two streams in one read batch: each answered on its own stream, flushed once at
    /// the batch's end; a stream NIO reports closed leaves the table on the next turn.
    func testEachStreamIsAnsweredOnItsOwnStream() throws {
        self.receive(self.request("/moved/a", stream: 1), self.request("/nowhere", stream: 3))
        let frames = try self.written()
        XCTAssertEqual(frames.filter { $0.hasPrefix("1 ") }.first, "1 headers 301", "\(frames)")
        XCTAssertEqual(frames.filter { $0.hasPrefix("3 ") }.first, "3 headers 404", "\(frames)")
        XCTAssertTrue(frames.contains("1 data end") && frames.contains("3 data end"), "\(frames)")
        XCTAssertNotNil(self.downstream.stream(1))
        self.closed(1)
        XCTAssertNil(self.downstream.stream(1), "closed both ways: gone")
        XCTAssertNotNil(self.downstream.stream(3))
        self.closed(3)
        XCTAssertNil(self.downstream.stream(3))
    }

    /// The proxy closing a stream whose response and request both ended resets nothing:
    /// the response's end may still wait in NIO for the client's window, and a reset
    /// would drop it. One still open is reset with CANCEL.
    func testClosingAStreamThatEndedBothWaysResetsNothing() throws {
        self.receive(self.request("/moved/a", stream: 1))
        _ = try self.written()
        let done = try XCTUnwrap(self.downstream.stream(1))
        done.close()
        XCTAssertEqual(try self.written(), [], "no reset after both ends")
        self.receive(self.request("/moved/b", stream: 3, end: false))
        let frames = try self.written()
        XCTAssertEqual(frames.first, "3 headers 301", "\(frames)")
        // The answer came before the request body: the client is told to stop sending
        // (NO_ERROR), which keeps the answer, rather than CANCEL, which fails it.
        XCTAssertTrue(frames.contains("3 reset noError"), "\(frames)")
        self.receive(self.request("/nowhere", stream: 5, end: false))
        _ = try self.written()
        let open = try XCTUnwrap(self.downstream.stream(5))
        XCTAssertTrue(open.closed, "reset with NO_ERROR already")
    }

    /// A malformed request (an upper-case field name, RFC 9113 §8.2.1) is reset with
    /// PROTOCOL_ERROR and never reaches the proxy's routing; its stream leaves the table.
    func testAMalformedRequestIsResetAndForgotten() throws {
        self.receive(self.request("/moved/a", stream: 1, extra: ["X-Upper": "1"]))
        XCTAssertEqual(try self.written(), ["1 reset protocolError"])
        self.channel.embeddedEventLoop.run()
        XCTAssertNil(self.downstream.stream(1))
    }

    /// A stream opened while the connection is backed up starts unwritable and is told
    /// when that ends (its upstream read otherwise waited for the read timeout).
    func testAStreamOpenedWhileTheConnectionIsBackedUpIsToldWhenItClears() throws {
        self.channel.isWritable = false
        self.receive(self.request("/nowhere", stream: 1, end: false))
        let stream = try XCTUnwrap(self.downstream.stream(1))
        XCTAssertFalse(stream.reportedWritable)
        self.channel.isWritable = true
        self.channel.pipeline.fireChannelWritabilityChanged()
        XCTAssertTrue(stream.reportedWritable)
    }

    /// A stream reset here is forgotten; a HEADERS frame on it afterwards (trailers
    /// behind the reset, which the client sent before it saw it) opens nothing again.
    func testAStreamResetHereIsNotOpenedAgainByItsTrailers() throws {
        self.receive(self.request("/moved/a", stream: 1))
        _ = try self.written()
        try XCTUnwrap(self.downstream.stream(1)).reset()
        XCTAssertEqual(try self.written(), ["1 reset cancel"])
        self.channel.embeddedEventLoop.run()
        XCTAssertNil(self.downstream.stream(1))
        self.receive(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: ["x-trailer": "1"], endStream: true))))
        XCTAssertEqual(try self.written(), [])
        XCTAssertNil(self.downstream.stream(1))
    }

    /// The idle timeout counts the streams the engine created: one it closed without
    /// creating (a request it refused) does not make a connection with an open stream look
    /// idle. It waits in the loop's deadline heap, not in a timer of its own.
    func testTheIdleTimeoutCountsOnlyCreatedStreams() throws {
        let idle = ProxyLimits().idleTimeout
        self.channel.pipeline.fireUserInboundEventTriggered(NIOHTTP2StreamCreatedEvent(streamID: 1, localInitialWindowSize: 65_535, remoteInitialWindowSize: 65_535))
        self.channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: 3, reason: .protocolError))
        self.channel.embeddedEventLoop.advanceTime(by: idle + .seconds(1))
        XCTAssertEqual(try self.written(), [], "stream 1 is open: no GOAWAY")
        XCTAssertTrue(self.channel.isActive)
        self.channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: 1, reason: nil))
        self.channel.embeddedEventLoop.advanceTime(by: idle - .seconds(1))
        XCTAssertEqual(try self.written(), [], "idle for less than the timeout")
        self.channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        XCTAssertEqual(try self.written(), ["0 goaway 1 noError"])
        XCTAssertFalse(self.channel.isActive)
    }

    /// The drain: GOAWAY with the largest stream ID and a PING; at its ACK the final
    /// GOAWAY names the last stream; the connection closes when that stream is done.
    func testTheDrainAnnouncesThenNamesTheLastStreamAndClosesWhenItIsDone() throws {
        self.channel.pipeline.fireUserInboundEventTriggered(NIOHTTP2StreamCreatedEvent(streamID: 5, localInitialWindowSize: 65_535, remoteInitialWindowSize: 65_535))
        self.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        var ping: HTTP2PingData?
        var kinds: [String] = []
        while let frame = try self.channel.readOutbound(as: HTTP2Frame.self) {
            switch frame.payload {
            case .goAway(let last, .noError, _): kinds.append("goaway \(last == .maxID ? "max" : "\(last)")")
            case .ping(let data, ack: false): kinds.append("ping"); ping = data
            default: kinds.append("\(frame.payload)")
            }
        }
        XCTAssertEqual(kinds, ["goaway max", "ping"])
        self.receive(HTTP2Frame(streamID: .rootStream, payload: .ping(HTTP2PingData(withInteger: 7), ack: true)))
        XCTAssertEqual(try self.written(), [], "not the drain's PING")
        self.receive(HTTP2Frame(streamID: .rootStream, payload: .ping(try XCTUnwrap(ping), ack: true)))
        XCTAssertEqual(try self.written(), ["0 goaway 5 noError"])
        self.channel.embeddedEventLoop.run()
        XCTAssertTrue(self.channel.isActive, "stream 5 is still open")
        self.channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: 5, reason: nil))
        self.channel.embeddedEventLoop.run()
        XCTAssertFalse(self.channel.isActive)
    }

    /// A request body the gateway does not want (answered before it came): the stream
    /// is reset with NO_ERROR, and no window goes back on it however much arrives.
    func testNoWindowGoesBackOnAStreamAnsweredEarly() throws {
        self.receive(self.request("/moved/upload", stream: 1, end: false, extra: ["content-length": "70000"]))
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
        self.engine.progress = self.downstream
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
