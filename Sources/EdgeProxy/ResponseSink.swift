import EdgeTLS
import NIOCore

/// Where the responses of one client connection go: HTTP/1.1 bytes on the connection
/// (`HTTP1Responses`), or the frames of one HTTP/2 stream (`HTTP2StreamBridge`).
/// `ProxyHandler`'s exchange logic is the same for both; what it writes, and how a
/// response that ends before its request does is told to the client, is the sink's.
protocol ResponseSink {
    /// The request's protocol as the access log names it.
    func protocolName(of request: HTTPHead?) -> String
    /// Writes the head of the upstream's response to `request` (sent at the next flush).
    mutating func responseHead(_ response: HTTPHead, request: HTTPHead, draining: Bool, hsts: String?,
                               heads: inout ReusableBuffer, context: ChannelHandlerContext) -> ResponseHeadOutcome
    func responseBody(_ body: ByteBuffer, context: ChannelHandlerContext)
    /// The response's end; `trailers` are its trailer field lines (`TrailerSection`),
    /// passed on where the client's framing can carry them.
    func responseEnd(trailers: [UInt8], context: ChannelHandlerContext)
    func flush(context: ChannelHandlerContext)
    /// An answer of the gateway's own, as HTTP/1.1 bytes, written and flushed; the future
    /// completes when it went out.
    func writeLocalAnswer(_ bytes: ByteBuffer, context: ChannelHandlerContext) -> EventLoopFuture<Void>
    /// The response is complete and the request body is still arriving: true when the sink
    /// ended the request itself (an HTTP/2 stream is reset with NO_ERROR); false when the
    /// connection must linger, reading and dropping the body, before it closes.
    func endRequestEarly() -> Bool
}

enum ResponseHeadOutcome {
    /// Written. `closeAfter`: the response tells the client the connection closes after
    /// it. (No future of the write: the gateway's HTTP/2 engine refuses a HEADERS frame
    /// only for a stream that is gone, whose proxy hears of that anyway; NIO's handler
    /// refused fields it found invalid and left the stream open, and a promise a
    /// response, to reset the stream then, cost about 2k instructions.)
    case written(closeAfter: Bool)
    /// This downstream cannot carry the head (HTTP/2: larger than one HEADERS frame).
    case refused(UpstreamError.Kind, reason: String)
}

/// HTTP/1.1 framing, for request bodies sent upstream and response bodies sent down.
enum Chunked {
    static let crlf = ByteBuffer(staticString: "\r\n")
    static let lastChunk = ByteBuffer(staticString: "0\r\n\r\n")

    static func prefix(_ count: Int) -> ByteBuffer {
        var prefix = ByteBuffer()
        prefix.writeString(String(count, radix: 16))
        prefix.writeStaticString("\r\n")
        return prefix
    }
}

/// The responses of an HTTP/1.x connection: the head rewritten for the client
/// (`HeadRewriting.downstreamHead`), the body as it came or chunked when it has no length.
struct HTTP1Responses: ResponseSink {
    /// The response being written is chunked (it has no length and the client speaks HTTP/1.1).
    private var chunked = false

    func protocolName(of request: HTTPHead?) -> String {
        request?.minorVersion == 0 ? "HTTP/1.0" : "HTTP/1.1"
    }

    mutating func responseHead(_ response: HTTPHead, request: HTTPHead, draining: Bool, hsts: String?,
                               heads: inout ReusableBuffer, context: ChannelHandlerContext) -> ResponseHeadOutcome {
        let (head, chunked, close) = HeadRewriting.downstreamHead(for: response, request: request, closing: draining, hsts: hsts, heads: &heads)
        self.chunked = chunked
        context.write(NIOAny(head), promise: nil)
        return .written(closeAfter: close)
    }

    func responseBody(_ body: ByteBuffer, context: ChannelHandlerContext) {
        if self.chunked {
            context.write(NIOAny(Chunked.prefix(body.readableBytes)), promise: nil)
            context.write(NIOAny(body), promise: nil)
            context.write(NIOAny(Chunked.crlf), promise: nil)
        } else {
            context.write(NIOAny(body), promise: nil)
        }
    }

    func responseEnd(trailers: [UInt8], context: ChannelHandlerContext) {
        // A response with a length (or to HTTP/1.0) has no trailer section: they are dropped.
        if self.chunked { context.write(NIOAny(TrailerSection.lastChunk(trailers)), promise: nil) }
    }

    func flush(context: ChannelHandlerContext) {
        context.flush()
    }

    func writeLocalAnswer(_ bytes: ByteBuffer, context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        context.writeAndFlush(NIOAny(bytes))
    }

    func endRequestEarly() -> Bool { false }

    /// A `101` went out: from here the upstream's bytes pass as they come, unframed.
    mutating func beginTunnel() {
        self.chunked = false
    }
}

extension HTTP2StreamBridge: ResponseSink {
    // The bridge writes from the proxy's context, which it holds (`attach`).

    func protocolName(of request: HTTPHead?) -> String { "HTTP/2.0" }

    func responseHead(_ response: HTTPHead, request: HTTPHead, draining: Bool, hsts: String?,
                      heads: inout ReusableBuffer, context: ChannelHandlerContext) -> ResponseHeadOutcome {
        // The connection's GOAWAY, not the response, says it is draining. A head whose
        // block would be larger than the bound (`HTTP2StreamBridge.maxHeaderBlockBytes`):
        // this stream gets a 502, and the connection's other streams go on.
        guard self.responseHead(response, toHead: request.isHeadMethod) else {
            return .refused(.responseHeadTooLarge, reason: "response head too large for HTTP/2 (more than \(Self.maxHeaderBlockBytes) bytes of HPACK)")
        }
        return .written(closeAfter: false)
    }

    func responseBody(_ body: ByteBuffer, context: ChannelHandlerContext) {
        self.responseBody(body)
    }

    func responseEnd(trailers: [UInt8], context: ChannelHandlerContext) {
        self.responseEnd(trailers: trailers)
    }

    func flush(context: ChannelHandlerContext) {
        self.flush()  // a body piece held for END_STREAM goes too
    }

    func endRequestEarly() -> Bool {
        self.resetRequest()
        return true
    }
}

/// A client connection's sink as `ProxyHandler` stores it: one of the two, inline and
/// dispatched by a switch (an `any ResponseSink` took 40 bytes more in every handler, one
/// per connection and per HTTP/2 stream, and a witness-table call per response part).
enum Downstream: ResponseSink {
    case http1(HTTP1Responses)
    case http2(HTTP2StreamBridge)

    /// The HTTP/2 stream's bridge, which also turns the request's frames into bytes.
    var stream: HTTP2StreamBridge? {
        if case .http2(let bridge) = self { return bridge }
        return nil
    }

    func protocolName(of request: HTTPHead?) -> String {
        switch self {
        case .http1(let sink): return sink.protocolName(of: request)
        case .http2(let sink): return sink.protocolName(of: request)
        }
    }

    mutating func responseHead(_ response: HTTPHead, request: HTTPHead, draining: Bool, hsts: String?,
                               heads: inout ReusableBuffer, context: ChannelHandlerContext) -> ResponseHeadOutcome {
        switch self {
        case .http1(var sink):
            let outcome = sink.responseHead(response, request: request, draining: draining, hsts: hsts, heads: &heads, context: context)
            self = .http1(sink)
            return outcome
        case .http2(let sink):
            return sink.responseHead(response, request: request, draining: draining, hsts: hsts, heads: &heads, context: context)
        }
    }

    func responseBody(_ body: ByteBuffer, context: ChannelHandlerContext) {
        switch self {
        case .http1(let sink): sink.responseBody(body, context: context)
        case .http2(let sink): sink.responseBody(body, context: context)
        }
    }

    func responseEnd(trailers: [UInt8], context: ChannelHandlerContext) {
        switch self {
        case .http1(let sink): sink.responseEnd(trailers: trailers, context: context)
        case .http2(let sink): sink.responseEnd(trailers: trailers, context: context)
        }
    }

    func flush(context: ChannelHandlerContext) {
        switch self {
        case .http1(let sink): sink.flush(context: context)
        case .http2(let sink): sink.flush(context: context)
        }
    }

    func writeLocalAnswer(_ bytes: ByteBuffer, context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        switch self {
        case .http1(let sink): return sink.writeLocalAnswer(bytes, context: context)
        case .http2(let sink): return sink.writeLocalAnswer(bytes, context: context)
        }
    }

    /// A WebSocket tunnel begins (HTTP/1.1 only: a stream is never upgraded). Without
    /// this, a tunnel after a chunked response on the same connection had its bytes
    /// chunk-framed.
    mutating func beginTunnel() {
        if case .http1(var sink) = self {
            sink.beginTunnel()
            self = .http1(sink)
        }
    }

    func endRequestEarly() -> Bool {
        switch self {
        case .http1(let sink): return sink.endRequestEarly()
        case .http2(let sink): return sink.endRequestEarly()
        }
    }
}
