@testable import EdgeProxy
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import XCTest

/// The h2/h2c translator as a handler, on an embedded channel: window updates,
/// writability, GOAWAY, resets and early responses, without sockets or sleeps.
final class HTTP2UpstreamHandlerTests: XCTestCase {
    /// What reaches the HTTP/1.1 handler's place in the pipeline.
    final class Probe: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var bytes = ""
        var errors: [String] = []
        var retired: [String] = []
        var writabilityChanges = 0
        var kinds: [UpstreamError.Kind] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.bytes += String(buffer: self.unwrapInboundIn(data))
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) {
            self.errors.append("\(error)")
            if let upstream = error as? UpstreamError { self.kinds.append(upstream.kind) }
        }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let retired = event as? UpstreamRetired { self.retired.append(retired.reason) }
        }
        func channelWritabilityChanged(context: ChannelHandlerContext) { self.writabilityChanges += 1 }
    }

    var channel: EmbeddedChannel!
    var handler: HTTP2UpstreamHandler!
    var probe: Probe!

    override func setUp() {
        self.handler = HTTP2UpstreamHandler(scheme: "http", authority: "backend:80", backend: "backend:80")
        self.probe = Probe()
        self.channel = EmbeddedChannel(handlers: [self.handler, self.probe])
        // Active, as a connected upstream connection is: closing it shows.
        XCTAssertNoThrow(try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait())
    }

    override func tearDown() {
        _ = try? self.channel.finish(acceptAlreadyClosed: true)
    }

    func send(_ text: String, flush: Bool = true) {
        self.channel.write(ByteBuffer(string: text), promise: nil)
        if flush { self.channel.flush() }
    }

    func receive(_ payload: HTTP2Frame.FramePayload, stream: HTTP2StreamID = 1) throws {
        try self.channel.writeInbound(HTTP2Frame(streamID: stream, payload: payload))
    }

    func written() throws -> [HTTP2Frame] {
        var frames: [HTTP2Frame] = []
        while let frame = try self.channel.readOutbound(as: HTTP2Frame.self) { frames.append(frame) }
        return frames
    }

    func windowUpdates(_ frames: [HTTP2Frame]) -> [String] {
        frames.compactMap { frame in
            guard case .windowUpdate(let increment) = frame.payload else { return nil }
            return "\(Int(frame.streamID)):\(increment)"
        }
    }

    func data(_ count: Int, end: Bool = false) -> HTTP2Frame.FramePayload {
        .data(.init(data: .byteBuffer(ByteBuffer(repeating: 0x61, count: count)), endStream: end))
    }

    /// The window comes back as the response is passed on: the connection's and the
    /// stream's, each once half the default window was read; the connection's also for a
    /// stream whose response had already ended. Without it a response stalls at 64 KiB.
    func testTheWindowIsGivenBackAsTheResponseIsPassedOn() throws {
        self.send("GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        XCTAssertEqual(try self.written().count, 1)
        try self.receive(.headers(.init(headers: [":status": "200"])))
        try self.receive(self.data(20_000))
        XCTAssertEqual(self.windowUpdates(try self.written()), [], "below the threshold")
        try self.receive(self.data(20_000))
        XCTAssertEqual(self.windowUpdates(try self.written()), ["0:40000", "1:40000"])
        try self.receive(self.data(40_000, end: true))
        XCTAssertEqual(self.windowUpdates(try self.written()), ["0:40000"], "the ended stream needs none")
        XCTAssertTrue(self.probe.bytes.hasPrefix("HTTP/1.1 200 \r\ntransfer-encoding: chunked\r\n\r\n4e20\r\n"))
        XCTAssertTrue(self.probe.bytes.hasSuffix("\r\n0\r\n\r\n"))
        XCTAssertEqual(self.probe.retired, [])
    }

    /// Request body waiting for the upstream's window holds the proxy's reads: not
    /// writable above 64 KiB queued, writable again once the frames went out.
    func testQueuedRequestBodyTurnsWritabilityOffAndOn() throws {
        self.send("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 200000\r\n\r\n")
        self.send(String(repeating: "b", count: 50_000), flush: false)
        XCTAssertTrue(self.handler.isWritable)
        self.send(String(repeating: "b", count: 50_000), flush: false)
        XCTAssertFalse(self.handler.isWritable)
        XCTAssertEqual(self.probe.writabilityChanges, 1)
        self.channel.flush()  // the embedded channel completes the writes' promises now
        XCTAssertTrue(self.handler.isWritable)
        XCTAssertEqual(self.probe.writabilityChanges, 2)
    }

    /// GOAWAY on an idle connection retires it (the pool lets go at once) and closes it;
    /// during an exchange it retires it, so the response's end does not pool it, and the
    /// connection closes after the response.
    func testGoawayRetiresTheConnection() throws {
        try self.receive(.goAway(lastStreamID: 0, errorCode: .noError, opaqueData: nil), stream: .rootStream)
        XCTAssertEqual(self.probe.retired, ["the upstream is going away (GOAWAY)"])
        XCTAssertFalse(self.channel.isActive)

        self.setUp()
        self.send("GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        try self.receive(.headers(.init(headers: [":status": "200"])))
        try self.receive(.goAway(lastStreamID: 1, errorCode: .noError, opaqueData: nil), stream: .rootStream)
        XCTAssertEqual(self.probe.retired.count, 1)
        XCTAssertTrue(self.channel.isActive, "the response goes on")
        try self.receive(self.data(5, end: true))
        XCTAssertTrue(self.probe.bytes.hasSuffix("5\r\naaaaa\r\n0\r\n\r\n"))
        XCTAssertFalse(self.channel.isActive)
    }

    /// An early response (the request body still coming) retires the connection before
    /// the parser sees the response end: the stream stays open, and a pooled connection
    /// would carry it into the next exchange.
    func testAResponseBeforeTheRequestEndedRetiresTheConnection() throws {
        self.send("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc")
        try self.receive(.headers(.init(headers: [":status": "413"], endStream: true)))
        XCTAssertEqual(self.probe.retired, ["the request was still being sent when the response ended"])
    }

    /// A reset of the exchange's stream fails it, reported on the next turn of the loop;
    /// so does a request that cannot be sent, never from inside the proxy's write (whose
    /// retry would lose the body it writes after the head).
    func testFailuresAreReportedOnTheNextTurn() throws {
        self.send("GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        XCTAssertEqual(self.probe.errors, [], "not from inside the write")
        self.channel.embeddedEventLoop.run()
        XCTAssertEqual(self.probe.errors.count, 1)
        XCTAssertTrue(self.probe.errors[0].contains("cannot go to an HTTP/2 upstream"), "\(self.probe.errors)")
        XCTAssertFalse(self.channel.isActive)

        for (code, kind) in [(HTTP2ErrorCode.refusedStream, UpstreamError.Kind.refusedStream), (.internalError, .streamReset), (.cancel, .streamReset)] {
            self.setUp()
            self.send("GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            try self.receive(.rstStream(code))
            self.channel.embeddedEventLoop.run()
            XCTAssertEqual(self.probe.kinds, [kind], "\(code): \(self.probe.errors)")
            XCTAssertTrue(self.probe.errors.first?.contains("reset the stream") == true, "\(self.probe.errors)")
        }
    }

    /// NIO's error on a stream whose exchange is over (its END_STREAM still to come) does
    /// not fail the next exchange; on the current stream it does. A GOAWAY that leaves the
    /// current stream out refuses it: not processed, so any request may go again.
    func testStreamErrorsAndGoawayRefusalsReachTheRightExchange() throws {
        self.send("GET /a HTTP/1.1\r\nhost: a\r\n\r\n")
        try self.receive(.headers(.init(headers: [":status": "200", "content-length": "1"])))
        try self.receive(self.data(1))  // the length reached: the exchange is over
        self.send("GET /b HTTP/1.1\r\nhost: a\r\n\r\n")
        self.channel.pipeline.fireErrorCaught(NIOHTTP2Errors.streamError(streamID: 1, baseError: NIOHTTP2Errors.contentLengthViolated()))
        self.channel.embeddedEventLoop.run()
        XCTAssertEqual(self.probe.errors, [], "stream 1's error is not stream 3's")
        self.channel.pipeline.fireErrorCaught(NIOHTTP2Errors.streamError(streamID: 3, baseError: NIOHTTP2Errors.contentLengthViolated()))
        self.channel.embeddedEventLoop.run()
        XCTAssertEqual(self.probe.kinds, [.protocolError])

        self.setUp()
        self.send("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\nx")
        try self.receive(.goAway(lastStreamID: 0, errorCode: .noError, opaqueData: nil), stream: .rootStream)
        self.channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: 1, reason: .cancel))
        self.channel.embeddedEventLoop.run()
        XCTAssertEqual(self.probe.kinds, [.refusedStream], "\(self.probe.errors)")
    }

    /// One content-length goes upstream, the parser's: `5` beside `05` is one length to
    /// HTTP/1.1 and two values to NIO, which refused the HEADERS inside the proxy's write.
    func testOneContentLengthGoesUpstream() throws {
        self.send("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 05\r\n\r\nhello")
        let frames = try self.written()
        guard case .headers(let headers) = frames.first?.payload else { return XCTFail("\(frames)") }
        XCTAssertEqual(headers.headers[canonicalForm: "content-length"], ["5"])
    }
}
