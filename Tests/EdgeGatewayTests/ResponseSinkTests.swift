@testable import EdgeProxy
import EdgeTLS
import NIOCore
import NIOEmbedded
import XCTest

/// The HTTP/1.1 response sink on an embedded channel: what a client connection is sent
/// for an upstream response, without sockets.
final class ResponseSinkTests: XCTestCase {
    final class Probe: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
    }

    /// An embedded channel and the context the sink writes through.
    func channel() throws -> (EmbeddedChannel, ChannelHandlerContext) {
        let channel = EmbeddedChannel(handler: Probe())
        return (channel, try channel.pipeline.syncOperations.context(handlerType: Probe.self))
    }

    func written(_ channel: EmbeddedChannel) throws -> String {
        var out = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { out += String(buffer: buffer) }
        return out
    }

    func testAResponseWithoutALengthIsChunkedForAnHTTP11Client() throws {
        let (channel, context) = try self.channel()
        var sink = Downstream.http1(HTTP1Responses())
        var heads = ReusableBuffer(maximumKeptCapacity: 1024)
        let request = try HTTP1Parser.parseRequest(Array("GET /x HTTP/1.1\r\nhost: a\r\n\r\n".utf8))
        let response = try HTTP1Parser.parseResponse(Array("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n".utf8))
        guard case .written(let closeAfter) = sink.responseHead(response, request: request, draining: false, hsts: nil,
                                                                           heads: &heads, context: context) else {
            return XCTFail("an HTTP/1.1 head is never refused")
        }
        XCTAssertFalse(closeAfter)
        sink.responseBody(ByteBuffer(string: "hello"), context: context)
        sink.responseEnd(trailers: Array("grpc-status: 0\r\n".utf8), context: context)
        sink.flush(context: context)
        let out = try written(channel)
        XCTAssertTrue(out.hasPrefix("HTTP/1.1 200 OK\r\n"), out)
        XCTAssertTrue(out.lowercased().contains("transfer-encoding: chunked\r\n"), out)
        XCTAssertTrue(out.hasSuffix("\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n"), "the upstream's trailers go on: \(out)")
        XCTAssertFalse(sink.endRequestEarly(), "an HTTP/1.1 connection lingers instead")
        XCTAssertEqual(sink.protocolName(of: request), "HTTP/1.1")
    }

    /// An HTTP/1.0 client cannot read chunks: the body goes as it comes, and the
    /// connection closes after it.
    func testAnHTTP10ClientGetsTheBodyUntilClose() throws {
        let (channel, context) = try self.channel()
        var sink = Downstream.http1(HTTP1Responses())
        var heads = ReusableBuffer(maximumKeptCapacity: 1024)
        let request = try HTTP1Parser.parseRequest(Array("GET /x HTTP/1.0\r\n\r\n".utf8))
        let response = try HTTP1Parser.parseResponse(Array("HTTP/1.1 200 OK\r\n\r\n".utf8))
        guard case .written(let closeAfter) = sink.responseHead(response, request: request, draining: false, hsts: nil,
                                                                  heads: &heads, context: context) else {
            return XCTFail("refused")
        }
        XCTAssertTrue(closeAfter)
        sink.responseBody(ByteBuffer(string: "hello"), context: context)
        sink.responseEnd(trailers: Array("grpc-status: 0\r\n".utf8), context: context)
        XCTAssertEqual(try written(channel), "", "nothing goes out before the flush")
        sink.flush(context: context)
        let out = try written(channel)
        XCTAssertTrue(out.hasSuffix("\r\n\r\nhello"), "no trailer section without chunks: \(out)")
        XCTAssertFalse(out.lowercased().contains("chunked"), out)
        XCTAssertEqual(sink.protocolName(of: request), "HTTP/1.0")
    }

    /// A WebSocket tunnel after a chunked response on the same connection: the tunnel's
    /// bytes pass unframed.
    func testATunnelAfterAChunkedResponseIsNotChunked() throws {
        let (channel, context) = try self.channel()
        var sink = Downstream.http1(HTTP1Responses())
        var heads = ReusableBuffer(maximumKeptCapacity: 1024)
        let request = try HTTP1Parser.parseRequest(Array("GET /x HTTP/1.1\r\nhost: a\r\n\r\n".utf8))
        let chunked = try HTTP1Parser.parseResponse(Array("HTTP/1.1 200 OK\r\n\r\n".utf8))
        _ = sink.responseHead(chunked, request: request, draining: false, hsts: nil, heads: &heads, context: context)
        sink.responseEnd(trailers: [], context: context)
        sink.flush(context: context)
        _ = try written(channel)
        sink.beginTunnel()
        sink.responseBody(ByteBuffer(string: "frame"), context: context)
        sink.flush(context: context)
        XCTAssertEqual(try written(channel), "frame", "not \"5\\r\\nframe\\r\\n\"")
    }
}
