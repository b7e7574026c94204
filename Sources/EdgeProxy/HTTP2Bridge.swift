import NIOCore
import NIOHTTP1

/// Lets one HTTP/2 stream use the byte-level HTTP/1.1 proxy (`ProxyHandler`):
/// the stream's request parts (from NIO's `HTTP2FramePayloadToHTTP1ServerCodec`)
/// become an HTTP/1.1 request, and the proxy's HTTP/1.1 response becomes
/// response parts again, without connection-specific headers (RFC 9113 §8.2.2).
///
/// HTTP/2 is the protocol that pays for this translation; it keeps one proxy
/// engine for both protocols, so every rule (routing, forwarding headers,
/// retries, timeouts, limits) is the same whichever protocol the client spoke.
public final class HTTP2StreamBridge: ChannelDuplexHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = HTTPServerResponsePart

    /// How the request body is framed for the proxy.
    private enum RequestBody { case none, length, chunked }
    private var requestBody = RequestBody.none
    private var headRequest = false
    private var response = ByteBuffer()
    private var scanned = 0
    private var framer: BodyFramer?
    private var responseDone = false

    public init() {}

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            var out = context.channel.allocator.buffer(capacity: 512)
            out.writeString("\(head.method.rawValue) \(head.uri) HTTP/1.1\r\n")
            var hasLength = false
            for (name, value) in head.headers {
                switch name.lowercased() {
                case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te":
                    continue  // connection-specific: malformed in HTTP/2 anyway
                case "content-length":
                    hasLength = true
                default:
                    break
                }
                out.writeString(name)
                out.writeStaticString(": ")
                out.writeString(value)
                out.writeStaticString("\r\n")
            }
            if hasLength {
                self.requestBody = .length
            } else if head.method.mayHaveRequestBody {
                // HTTP/2 frames the body itself; the HTTP/1.1 side needs chunked framing.
                self.requestBody = .chunked
                out.writeStaticString("transfer-encoding: chunked\r\n")
            }
            out.writeStaticString("\r\n")
            self.headRequest = head.method == .HEAD
            context.fireChannelRead(Self.wrapInboundOut(out))
        case .body(let body):
            switch self.requestBody {
            case .none:
                break  // a body on a request that declared none cannot be framed: dropped
            case .length:
                context.fireChannelRead(Self.wrapInboundOut(body))
            case .chunked:
                guard body.readableBytes > 0 else { return }
                var out = context.channel.allocator.buffer(capacity: body.readableBytes + 16)
                out.writeChunk(body)
                context.fireChannelRead(Self.wrapInboundOut(out))
            }
        case .end:
            if self.requestBody == .chunked {
                context.fireChannelRead(Self.wrapInboundOut(context.channel.allocator.buffer(staticString: "0\r\n\r\n")))
            }
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var bytes = Self.unwrapOutboundIn(data)
        if self.response.readableBytes == 0 {
            self.response = bytes
        } else {
            self.response.writeBuffer(&bytes)
        }
        var wrote: EventLoopFuture<Void>?
        do {
            while !self.responseDone {
                if var framer = self.framer {
                    let piece = try framer.next(from: &self.response)
                    self.framer = framer
                    guard let piece else { break }
                    switch piece {
                    case .data(let data):
                        wrote = context.write(Self.wrapOutboundOut(.body(.byteBuffer(data))))
                    case .end:
                        self.responseDone = true
                        wrote = context.write(Self.wrapOutboundOut(.end(nil)))
                    }
                    continue
                }
                guard self.response.readableBytes > 0, let end = HTTP1Parser.headEnd(in: self.response, from: self.scanned) else {
                    self.scanned = max(0, self.response.readableBytes - 3)
                    break
                }
                self.scanned = 0
                let head = try HTTP1Parser.parseResponse(self.response.readBytes(length: end)!)
                if head.status < 200 { continue }  // 100 Continue: HTTP/2 clients send the body anyway
                var headers = HTTPHeaders()
                for field in head.fields where !head.isHopByHop(field) {
                    headers.add(name: head.string(field.name).lowercased(), value: head.string(field.value))
                }
                let status = HTTPResponseStatus(statusCode: head.status)
                wrote = context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http2, status: status, headers: headers))))
                // The proxy always frames what it writes (length or chunked), never until-close.
                let framer = head.responseFramer(toHead: self.headRequest)
                self.framer = framer
                if framer.isDone {
                    self.responseDone = true
                    wrote = context.write(Self.wrapOutboundOut(.end(nil)))
                }
            }
        } catch {
            promise?.fail(error)
            context.close(promise: nil)
            return
        }
        if let wrote {
            wrote.cascade(to: promise)
        } else {
            promise?.succeed(())
        }
    }
}

extension HTTPMethod {
    /// Methods whose requests usually carry a body.
    var mayHaveRequestBody: Bool {
        switch self {
        case .GET, .HEAD, .DELETE, .OPTIONS, .TRACE, .CONNECT: return false
        default: return true
        }
    }
}

@available(*, unavailable)
extension HTTP2StreamBridge: Sendable {}
