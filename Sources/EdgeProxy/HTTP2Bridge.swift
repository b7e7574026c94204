import NIOCore
import NIOHPACK
import NIOHTTP2

/// Lets one HTTP/2 stream use the byte-level HTTP/1.1 proxy (`ProxyHandler`):
/// the stream's HEADERS and DATA frames become an HTTP/1.1 request, and the
/// proxy's HTTP/1.1 response becomes HEADERS and DATA frames again, without
/// connection-specific headers (RFC 9113 §8.2.2).
///
/// It works on frame payloads directly. NIO's `HTTP2FramePayloadToHTTP1ServerCodec`
/// would turn them into NIOHTTP1 parts first, which this bridge then turned into
/// bytes: a second translation, and an eighth of an HTTP/2 request's CPU.
///
/// HTTP/2 is the protocol that pays for the translation to bytes; it keeps one
/// proxy engine for both protocols, so every rule (routing, forwarding headers,
/// retries, timeouts, limits) is the same whichever protocol the client spoke.
/// The HTTP/2 handler has already validated the header block (pseudo-headers,
/// lowercase names, no connection-specific fields) and Content-Length against
/// the DATA frames.
public final class HTTP2StreamBridge: ChannelDuplexHandler {
    public typealias InboundIn = HTTP2Frame.FramePayload
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = HTTP2Frame.FramePayload

    /// How the request body is framed for the proxy.
    private enum RequestBody { case none, length, chunked }
    private var requestBody = RequestBody.none
    private var requestHeadSeen = false
    private var requestEnded = false
    private var headRequest = false
    private var response = ByteBuffer()
    private var scanned = 0
    private var framer: BodyFramer?
    private var responseDone = false

    public init() {}

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.requestEnded else { return }
        switch self.unwrapInboundIn(data) {
        case .headers(let headers):
            if self.requestHeadSeen {
                self.endRequest(context: context)  // trailers: not forwarded, they end the body
            } else {
                self.requestHeadSeen = true
                context.fireChannelRead(NIOAny(self.requestHead(headers, allocator: context.channel.allocator)))
                if headers.endStream { self.endRequest(context: context) }
            }
        case .data(let payload):
            guard case .byteBuffer(let body) = payload.data else { return }
            switch self.requestBody {
            case .none:
                break  // a body on a request that declared none cannot be framed: dropped
            case .length:
                if body.readableBytes > 0 { context.fireChannelRead(NIOAny(body)) }
            case .chunked:
                if body.readableBytes > 0 {
                    var out = context.channel.allocator.buffer(capacity: body.readableBytes + 16)
                    out.writeChunk(body)
                    context.fireChannelRead(NIOAny(out))
                }
            }
            if payload.endStream { self.endRequest(context: context) }
        default:
            break  // RST_STREAM, WINDOW_UPDATE and the rest are the HTTP/2 handler's
        }
    }

    /// The HTTP/1.1 request head for a request HEADERS frame.
    private func requestHead(_ frame: HTTP2Frame.FramePayload.Headers, allocator: ByteBufferAllocator) -> ByteBuffer {
        // Pseudo-header fields come first (the HTTP/2 handler refuses any after a
        // regular field), so the request line and Host are known before the rest.
        var method = "GET", path = "/", authority: String?
        for (name, value, _) in frame.headers {
            guard name.utf8.first == UInt8(ascii: ":") else { break }
            switch name {
            case ":method": method = value
            case ":path": path = value
            case ":authority": authority = value
            default: break  // :scheme; :protocol is not offered
            }
        }
        var out = allocator.buffer(capacity: 512)
        out.writeString(method)
        out.writeStaticString(" ")
        out.writeString(path)
        out.writeStaticString(" HTTP/1.1\r\n")
        if let authority {
            out.writeStaticString("host: ")
            out.writeString(authority)
            out.writeStaticString("\r\n")
        }
        var hasLength = false
        var cookies: [String] = []
        for (name, value, _) in frame.headers where name.utf8.first != UInt8(ascii: ":") {
            switch name {
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te":
                continue  // connection-specific: the HTTP/2 handler refuses them already
            case "host":
                if authority != nil { continue }  // :authority wins (RFC 9113 §8.3.1)
            case "cookie":
                cookies.append(value)  // crumbs are joined for HTTP/1.1 (RFC 9113 §8.2.3)
                continue
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
        if !cookies.isEmpty {
            out.writeStaticString("cookie: ")
            out.writeString(cookies.joined(separator: "; "))
            out.writeStaticString("\r\n")
        }
        if frame.endStream {
            self.requestBody = .none
        } else if hasLength {
            self.requestBody = .length
        } else {
            // HTTP/2 frames the body itself; the HTTP/1.1 side needs chunked framing.
            self.requestBody = .chunked
            out.writeStaticString("transfer-encoding: chunked\r\n")
        }
        out.writeStaticString("\r\n")
        self.headRequest = method == "HEAD"
        return out
    }

    private func endRequest(context: ChannelHandlerContext) {
        guard !self.requestEnded else { return }
        self.requestEnded = true
        if self.requestBody == .chunked {
            context.fireChannelRead(NIOAny(context.channel.allocator.buffer(staticString: "0\r\n\r\n")))
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var bytes = self.unwrapOutboundIn(data)
        if self.response.readableBytes == 0 {
            self.response = bytes
        } else {
            self.response.writeBuffer(&bytes)
        }
        // Each frame but the last goes without a promise: a write that returns a future
        // allocates one, three per response.
        var frame: HTTP2Frame.FramePayload?
        func emit(_ next: HTTP2Frame.FramePayload) {
            if let frame { context.write(self.wrapOutboundOut(frame), promise: nil) }
            frame = next
        }
        do {
            while !self.responseDone {
                if var framer = self.framer {
                    let piece = try framer.next(from: &self.response)
                    self.framer = framer
                    guard let piece else { break }
                    switch piece {
                    case .data(let data):
                        emit(.data(.init(data: .byteBuffer(data))))
                    case .end:
                        self.responseDone = true
                        emit(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)))
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
                var headers = HPACKHeaders()
                headers.reserveCapacity(head.fields.count + 1)
                headers.add(name: ":status", value: String(head.status))
                for field in head.fields where !head.isHopByHop(field) {
                    headers.add(name: head.string(field.name).lowercased(), value: head.string(field.value))
                }
                // The proxy always frames what it writes (length or chunked), never until-close.
                let framer = head.responseFramer(toHead: self.headRequest)
                self.framer = framer
                self.responseDone = framer.isDone
                emit(.headers(.init(headers: headers, endStream: framer.isDone)))
            }
        } catch {
            promise?.fail(error)
            context.close(promise: nil)
            return
        }
        if let frame {
            context.write(self.wrapOutboundOut(frame), promise: promise)
        } else {
            promise?.succeed(())
        }
    }
}

@available(*, unavailable)
extension HTTP2StreamBridge: Sendable {}
