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

    /// A frame of the response that NIO refused (its own stream error: a content-length
    /// that does not fit) leaves the stream open in NIO: it is reset here, even though
    /// both ends were written, and forgotten. A HEADERS frame on a stream already done
    /// (trailers behind the reset) opens nothing again.
    func testAResponseFrameNIORefusedResetsItsStream() throws {
        self.receive(self.request("/moved/a", stream: 1))
        _ = try self.written()
        self.channel.pipeline.fireErrorCaught(NIOHTTP2Errors.streamError(streamID: 1, baseError: NIOHTTP2Errors.contentLengthViolated()))
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
