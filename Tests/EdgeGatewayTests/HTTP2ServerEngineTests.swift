@testable import EdgeProxy
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import XCTest

/// The own HTTP/2 engine on an embedded channel: a client's bytes in, what it tells the
/// streams behind it (`HTTP2ServerStreams`), and the bytes it writes, read back with the
/// frame layer.
final class HTTP2ServerEngineTests: XCTestCase {
    /// What the engine tells the streams behind it.
    final class Behind: HTTP2ServerStreams {
        var seen: [String] = []

        func streamCreated(_ id: UInt32) { self.seen.append("\(id) created") }
        func received(_ payload: HTTP2Frame.FramePayload, on id: UInt32) {
            switch payload {
            case .headers(let headers): self.seen.append("\(id) headers \(headers.headers.first(name: ":path") ?? "trailers")\(headers.endStream ? " end" : "")")
            case .data(let data): self.seen.append("\(id) data \(data.data.readableBytes)\(data.endStream ? " end" : "")")
            default: self.seen.append("\(id) other")
            }
        }
        func clientReset(_ id: UInt32) { self.seen.append("\(id) reset") }
        func streamClosed(_ id: UInt32) { self.seen.append("\(id) closed") }
        func windowOpened(on id: UInt32?) { self.seen.append("\(id ?? 0) window") }
        func pingAcknowledged(_ data: UInt64) { self.seen.append("pong \(data)") }
        func dataDone(_ bytes: Int, on id: UInt32) {}
        func dataPassEnded() {}
    }

    var channel: EmbeddedChannel!
    var behind: Behind!
    var engine: HTTP2ServerEngine!
    var refusals: [String] = []
    var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
    var client = HTTP2FrameReader(expectsClientPreface: false)
    var decoder = HPACKDecoder(allocator: ByteBufferAllocator())

    override func setUpWithError() throws {
        self.channel = EmbeddedChannel()
        self.behind = Behind()
        self.engine = HTTP2ServerEngine(maxConcurrentStreams: 2, maxHeaderListSize: 16_384, connectionWindowBoost: 0) { [unowned self] in self.refusals.append($0) }
        self.engine.streams = self.behind
        try self.channel.pipeline.syncOperations.addHandler(self.engine)
        try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    override func tearDown() {
        _ = try? self.channel.finish(acceptAlreadyClosed: true)
    }

    private func send(_ build: (inout ByteBuffer) throws -> Void) throws {
        var bytes = ByteBuffer()
        try build(&bytes)
        try self.channel.writeInbound(bytes)
        self.channel.pipeline.fireChannelReadComplete()
    }

    private func request(_ path: String, stream: UInt32, end: Bool, into bytes: inout ByteBuffer) throws {
        var block = ByteBuffer()
        try self.encoder.encode(headers: [":method": end ? "GET" : "POST", ":scheme": "https", ":authority": "a.test", ":path": path], to: &block)
        HTTP2FrameWriter.headers(stream: stream, block: block, endStream: end, maxFrameSize: 16_384, into: &bytes)
    }

    /// The frames written, one line each.
    private func written() throws -> [String] {
        var bytes = ByteBuffer()
        while var chunk = try self.channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&chunk) }
        var out: [String] = []
        while let frame = try self.client.next(from: &bytes) {
            switch frame {
            case .settings(let settings): out.append("settings \(settings.map { "\($0.identifier)=\($0.value)" }.joined(separator: ","))")
            case .settingsAck: out.append("settings-ack")
            case .headers(let id, var block, let end, _):
                out.append("\(id) headers \(try self.decoder.decodeHeaders(from: &block).first(name: ":status") ?? "trailers")\(end ? " end" : "")")
            case .data(let id, let data, let end, _): out.append("\(id) data \(data.readableBytes)\(end ? " end" : "")")
            case .resetStream(let id, let code): out.append("\(id) reset \(code)")
            case .goAway(let last, let code, _): out.append("goaway \(last) \(code)")
            case .ping(let data, let ack): out.append("ping \(data)\(ack ? " ack" : "")")
            case .windowUpdate(let id, let increment): out.append("\(id) window \(increment)")
            default: out.append("other")
            }
        }
        return out
    }

    private func respond(_ stream: Int32, _ payload: HTTP2Frame.FramePayload) -> EventLoopFuture<Void> {
        let promise = self.channel.eventLoop.makePromise(of: Void.self)
        self.engine.send(payload, on: UInt32(stream), promise: promise)
        self.channel.pipeline.flush()
        return promise.futureResult
    }

    func testARequestIsHandedOnAndItsResponseWaitsForTheClientsWindows() throws {
        XCTAssertEqual(try self.written(), ["settings 3=2,2=0,6=16384"], "the server's preface")
        try self.send {
            $0.writeBytes(http2ClientPreface)
            HTTP2FrameWriter.settings([], into: &$0)
            try self.request("/a", stream: 1, end: true, into: &$0)
            HTTP2FrameWriter.ping(42, ack: false, into: &$0)
        }
        XCTAssertEqual(self.behind.seen, ["1 created", "1 headers /a end"])
        XCTAssertEqual(try self.written(), ["settings-ack", "ping 42 ack"])

        var done = false
        _ = self.respond(1, .headers(.init(headers: [":status": "200"])))
        self.respond(1, .data(.init(data: .byteBuffer(ByteBuffer(repeating: 0x61, count: 100_000)), endStream: true))).whenComplete { _ in done = true }
        XCTAssertEqual(try self.written(), ["1 headers 200", "1 data 16384", "1 data 16384", "1 data 16384", "1 data 16383"], "65,535 bytes: the windows' worth")
        XCTAssertFalse(done, "the rest waits for the client's windows")
        XCTAssertFalse(self.behind.seen.contains("1 closed"))
        // The stream's window first, then the connection's, in two reads: the first lets
        // nothing out (the connection's window is shut), the second all of it.
        try self.send { HTTP2FrameWriter.windowUpdate(stream: 1, increment: 100_000, into: &$0) }
        XCTAssertEqual(try self.written(), [])
        try self.send { HTTP2FrameWriter.windowUpdate(stream: 0, increment: 100_000, into: &$0) }
        XCTAssertEqual(try self.written(), ["1 data 16384", "1 data 16384", "1 data 1697 end"])
        XCTAssertTrue(done)
        XCTAssertEqual(self.behind.seen.suffix(3), ["1 window", "0 window", "1 closed"], "closed both ways: the streams behind are told")
    }

    func testAResetDropsWhatWaitsAndAConnectionErrorEndsWithGoAway() throws {
        _ = try self.written()
        try self.send {
            $0.writeBytes(http2ClientPreface)
            HTTP2FrameWriter.settings([HTTP2WireSetting(identifier: HTTP2WireSetting.initialWindowSize, value: 0)], into: &$0)
            try self.request("/upload", stream: 1, end: false, into: &$0)
            try self.request("/b", stream: 3, end: true, into: &$0)
            try self.request("/c", stream: 5, end: true, into: &$0)  // over the limit of 2
        }
        XCTAssertEqual(try self.written(), ["settings-ack", "5 reset 7"], "REFUSED_STREAM")
        var failed: Error?
        self.respond(3, .data(.init(data: .byteBuffer(ByteBuffer(string: "x")), endStream: true))).whenFailure { failed = $0 }
        XCTAssertEqual(try self.written(), [], "a window of 0")
        try self.send { HTTP2FrameWriter.resetStream(stream: 3, code: .cancel, into: &$0) }
        XCTAssertNotNil(failed, "the write that waited fails")
        XCTAssertEqual(self.behind.seen.suffix(2), ["3 reset", "3 closed"])
        XCTAssertEqual(try self.written(), [])

        // An upload answered early is reset with NO_ERROR; its DATA still on the way is dropped.
        _ = self.respond(1, .headers(.init(headers: [":status": "413"], endStream: true)))
        _ = self.respond(1, .rstStream(.noError))
        XCTAssertEqual(try self.written(), ["1 headers 413 end", "1 reset 0"])
        let window = self.engine.connectionReceiveWindow
        try self.send { HTTP2FrameWriter.dataHeader(stream: 1, length: 3, endStream: false, into: &$0); $0.writeString("abc") }
        XCTAssertFalse(self.behind.seen.contains("1 data 3"))
        XCTAssertEqual(self.engine.connectionReceiveWindow, window - 3, "dropped DATA still takes the connection's window")

        // A field block that does not decode: COMPRESSION_ERROR for the whole connection.
        try self.send { HTTP2FrameWriter.headers(stream: 7, block: ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), endStream: true, maxFrameSize: 16_384, into: &$0) }
        XCTAssertEqual(try self.written(), ["goaway 3 9"], "the last stream handed on (5 was refused, 7 never decoded)")
        XCTAssertFalse(self.channel.isActive)
        XCTAssertEqual(self.refusals.count, 1)
        XCTAssertTrue(self.refusals.first?.contains("compressionError") ?? false, "\(self.refusals)")
    }

    /// The connection's receive window: enlarged in the preface, and given back at the
    /// end of a read batch once 32 KiB of it were used, DATA dropped for a stream reset
    /// included; none once no stream is left.
    func testTheConnectionsWindowIsGrantedAndToppedUp() throws {
        _ = try? self.channel.finish(acceptAlreadyClosed: true)
        self.channel = EmbeddedChannel()
        self.engine = HTTP2ServerEngine(maxConcurrentStreams: 2, maxHeaderListSize: 16_384) { _ in }
        self.engine.streams = self.behind
        try self.channel.pipeline.syncOperations.addHandler(self.engine)
        try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        XCTAssertEqual(try self.written(), ["settings 3=2,2=0,6=16384", "0 window 1048576"])
        let chunk = ByteBuffer(repeating: 0x61, count: 16_000)
        try self.send {
            $0.writeBytes(http2ClientPreface)
            HTTP2FrameWriter.settings([], into: &$0)
            try self.request("/upload", stream: 1, end: false, into: &$0)
            HTTP2FrameWriter.dataHeader(stream: 1, length: chunk.readableBytes, endStream: false, into: &$0)
            $0.writeImmutableBuffer(chunk)
        }
        XCTAssertEqual(try self.written(), ["settings-ack"], "16,000 bytes used: not worth an update yet")
        try self.send {
            HTTP2FrameWriter.dataHeader(stream: 1, length: chunk.readableBytes, endStream: false, into: &$0)
            $0.writeImmutableBuffer(chunk)
            HTTP2FrameWriter.resetStream(stream: 1, code: .cancel, into: &$0)
            try self.request("/b", stream: 3, end: false, into: &$0)
        }
        XCTAssertEqual(try self.written(), [], "32,000 bytes: still under 32 KiB")
        try self.send {
            // Dropped (stream 1 is gone), but it took window all the same.
            HTTP2FrameWriter.dataHeader(stream: 1, length: 1_000, endStream: false, into: &$0)
            $0.writeBytes([UInt8](repeating: 0x62, count: 1_000))
        }
        XCTAssertEqual(try self.written(), ["0 window 33000"])
        XCTAssertEqual(self.engine.connectionReceiveWindow, 65_535 + (1 << 20))
        // Stream 3 answered early; the rest of its body ends it, and the connection's last stream.
        _ = self.respond(3, .headers(.init(headers: [":status": "204"], endStream: true)))
        XCTAssertEqual(try self.written(), ["3 headers 204 end"])
        try self.send {
            for end in [false, false, true] {
                HTTP2FrameWriter.dataHeader(stream: 3, length: chunk.readableBytes, endStream: end, into: &$0)
                $0.writeImmutableBuffer(chunk)
            }
        }
        XCTAssertEqual(self.behind.seen.last, "3 closed")
        XCTAssertEqual(try self.written(), [], "no stream left: no update")
        try self.send { try self.request("/c", stream: 5, end: false, into: &$0) }
        XCTAssertEqual(try self.written(), ["0 window 48000"], "the next stream gets it")
    }

    /// Blocks wait in the queue encoded; the size update goes with the first one written
    /// (RFC 7541 §4.2), whichever was encoded first, and with no other.
    func testTheFirstBlockWrittenCarriesTheSizeUpdate() throws {
        _ = try self.written()
        try self.send {
            $0.writeBytes(http2ClientPreface)
            HTTP2FrameWriter.settings([], into: &$0)
            try self.request("/a", stream: 1, end: true, into: &$0)
            try self.request("/b", stream: 3, end: true, into: &$0)
        }
        _ = try self.written()
        self.channel.isWritable = false
        self.channel.pipeline.fireChannelWritabilityChanged()
        _ = self.respond(3, .headers(.init(headers: [":status": "200"], endStream: true)))
        _ = self.respond(1, .headers(.init(headers: [":status": "404"], endStream: true)))
        self.channel.isWritable = true
        self.channel.pipeline.fireChannelWritabilityChanged()
        var bytes = ByteBuffer()
        while var chunk = try self.channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&chunk) }
        var blocks: [String] = []
        while let frame = try self.client.next(from: &bytes) {
            if case .headers(let id, let block, _, _) = frame { blocks.append("\(id) \(block.readableBytesView.map { String($0, radix: 16) }.joined(separator: " "))") }
        }
        XCTAssertEqual(blocks, ["3 20 88", "1 8d"], ":status 200 (index 8) with the size update first, then 404 (index 13) without")
    }

    /// A client that reads nothing: the response waits in the engine, its stream stays
    /// open (the stream limit bounds what is held), and it goes once the client reads.
    func testResponsesWaitWhileTheClientReadsNothing() throws {
        _ = try self.written()
        try self.send {
            $0.writeBytes(http2ClientPreface)
            HTTP2FrameWriter.settings([], into: &$0)
            try self.request("/a", stream: 1, end: true, into: &$0)
        }
        XCTAssertEqual(try self.written(), ["settings-ack"])
        self.channel.isWritable = false
        self.channel.pipeline.fireChannelWritabilityChanged()
        var done = false
        _ = self.respond(1, .headers(.init(headers: [":status": "200"])))
        self.respond(1, .data(.init(data: .byteBuffer(ByteBuffer(string: "hello")), endStream: true))).whenComplete { _ in done = true }
        XCTAssertEqual(try self.written(), [], "held while the channel is not writable")
        XCTAssertFalse(done)
        XCTAssertFalse(self.behind.seen.contains("1 closed"), "the stream stays open meanwhile")
        self.channel.isWritable = true
        self.channel.pipeline.fireChannelWritabilityChanged()
        XCTAssertEqual(try self.written(), ["1 headers 200", "1 data 5 end"])
        XCTAssertTrue(done)
        XCTAssertEqual(self.behind.seen.last, "1 closed")
        var refused: Error?
        self.respond(1, .data(.init(data: .byteBuffer(ByteBuffer(string: "more")), endStream: true))).whenFailure { refused = $0 }
        XCTAssertNotNil(refused, "nothing is taken after the response's end")

        // A field block written with no promise, held meanwhile, is flushed when the client reads again.
        try self.send { try self.request("/b", stream: 3, end: true, into: &$0) }
        self.channel.isWritable = false
        self.channel.pipeline.fireChannelWritabilityChanged()
        self.channel.pipeline.write(HTTP2Frame(streamID: 3, payload: .headers(.init(headers: [":status": "204"], endStream: true))), promise: nil)
        self.channel.pipeline.flush()
        XCTAssertEqual(try self.written(), [])
        self.channel.isWritable = true
        self.channel.pipeline.fireChannelWritabilityChanged()
        XCTAssertEqual(try self.written(), ["3 headers 204 end"])
    }
}
