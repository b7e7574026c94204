import NIOCore
import NIOHPACK
import NIOHTTP2

/// Lets one HTTP/2 stream use the byte-level HTTP/1.1 proxy (`ProxyHandler`):
/// the stream's HEADERS and DATA frames become an HTTP/1.1 request, and the
/// proxy's response becomes HEADERS and DATA frames again, without
/// connection-specific headers (RFC 9113 §8.2.2).
///
/// It is not a handler of its own: the stream's proxy hands each frame to
/// `requestBytes(_:)` and its response to the `response...` methods, and the bridge
/// writes the frames through the stream (`port`, its place in `HTTP2Downstream`).
///
/// It works on frame payloads directly. NIO's `HTTP2FramePayloadToHTTP1ServerCodec`
/// would turn them into NIOHTTP1 parts first, which this bridge then turned into
/// bytes: a second translation, and an eighth of an HTTP/2 request's CPU.
///
/// HTTP/2 is the protocol that pays for the translation to bytes; it keeps one
/// proxy engine for both protocols, so every rule (routing, forwarding headers,
/// retries, timeouts, limits) is the same whichever protocol the client spoke.
/// The request's header block is checked here (`HTTP2RequestCheck`), not by the
/// HTTP/2 handler, whose own header validation is off: it cost a tenth of an HTTP/2
/// request, mostly re-checking response heads that the HTTP/1.1 parser had already
/// checked byte by byte. A malformed request (RFC 9113 §8.1.1) is reset with
/// PROTOCOL_ERROR and never reaches the proxy. The HTTP/2 handler still checks
/// Content-Length against the DATA frames.
package final class HTTP2StreamBridge {
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
    /// The stream, while it is open: frames are written through it.
    var port: HTTP2DownstreamStream?
    /// The write of the response's END_STREAM while the request body was still coming:
    /// an early end of the request (`resetRequest`) waits for it.
    private var responseEndWritten: EventLoopFuture<Void>?
    /// The response's last body piece so far, not yet written: if the response ends
    /// before the next flush, it carries END_STREAM (HEADERS, DATA+END_STREAM, as nginx
    /// sends a short response) instead of an empty DATA frame of its own after it.
    private var heldBody: ByteBuffer?

    /// The listener's `strict-transport-security` value, in place of an upstream's.
    private let strictTransportSecurity: String?

    package init(strictTransportSecurity: String? = nil) {
        self.strictTransportSecurity = strictTransportSecurity
    }

    func detach() {
        self.port = nil
    }

    /// The client ended the request (END_STREAM), or the stream is reset.
    var requestComplete: Bool { self.requestEnded }

    /// The HTTP/1.1 bytes a frame of the request makes for the proxy (head, body piece,
    /// the chunked body's end), in one buffer; nil when it makes none. A malformed
    /// header block resets the stream here.
    func requestBytes(_ payload: HTTP2Frame.FramePayload) -> ByteBuffer? {
        guard !self.requestEnded, let port = self.port else { return nil }
        switch payload {
        case .headers(let headers):
            if self.requestHeadSeen {
                // Trailers: they end the body, and go on with a chunked one.
                guard let trailers = Self.trailerLines(headers.headers) else {
                    self.requestEnded = true  // malformed (RFC 9113 §8.1.1): the stream is reset
                    port.write(.rstStream(.protocolError), promise: nil)
                    port.close()
                    return nil
                }
                var end: ByteBuffer?
                self.endRequest(appendingTo: &end, trailers: trailers)
                return end
            }
            self.requestHeadSeen = true
            guard let head = self.requestHead(headers, allocator: port.allocator) else {
                // Malformed (RFC 9113 §8.1.1): a stream error, nothing is forwarded.
                self.requestEnded = true
                port.write(.rstStream(.protocolError), promise: nil)
                port.close()
                return nil
            }
            if headers.endStream { self.requestEnded = true }  // no body: `requestBody` is .none
            return head
        case .data(let data):
            guard case .byteBuffer(let body) = data.data else { return nil }
            var out: ByteBuffer?
            switch self.requestBody {
            case .none:
                break  // a body on a request that declared none cannot be framed: dropped
            case .length:
                if body.readableBytes > 0 { out = body }
            case .chunked:
                if body.readableBytes > 0 {
                    var chunk = port.allocator.buffer(capacity: body.readableBytes + 21)
                    chunk.writeChunk(body)
                    out = chunk
                }
            }
            if data.endStream { self.endRequest(appendingTo: &out) }
            return out
        default:
            return nil  // RST_STREAM, WINDOW_UPDATE and the rest are the HTTP/2 handler's
        }
    }

    /// The HTTP/1.1 request head for a request HEADERS frame; nil when the header
    /// block is malformed (`HTTP2RequestCheck`).
    func requestHead(_ frame: HTTP2Frame.FramePayload.Headers, allocator: ByteBufferAllocator) -> ByteBuffer? {
        // Pseudo-header fields come first, so the request line and Host are known
        // before the rest; one after a regular field is malformed.
        var method = "", path = "", authority: String?
        var seen = HTTP2RequestCheck.Pseudo()
        var pseudoCount = 0
        for (name, value, _) in frame.headers {
            guard name.utf8.first == UInt8(ascii: ":") else { break }
            guard HTTP2RequestCheck.isPseudoValue(value) else { return nil }
            switch name {
            case ":method": guard seen.insert(.method) else { return nil }; method = value
            case ":scheme": guard seen.insert(.scheme) else { return nil }
            case ":path": guard seen.insert(.path) else { return nil }; path = value
            case ":authority": guard seen.insert(.authority) else { return nil }; authority = value
            default: return nil  // :status, :protocol (extended CONNECT is not offered), unknown
            }
            pseudoCount += 1
        }
        guard seen.isComplete(connect: method == "CONNECT") else { return nil }
        if path.isEmpty { path = "/" }  // CONNECT carries no :path
        // RFC 9113 §8.3.1: a path ("/...") or "*" for OPTIONS; an absolute URI in :path
        // would override :authority, anything else reach the upstream as a made-up path.
        guard path.utf8.first == UInt8(ascii: "/") || (path == "*" && method == "OPTIONS") else { return nil }
        var out = allocator.buffer(capacity: 512)
        // One reservation a line (HeadWriter), not a NIO write a piece.
        // method, space, path, " HTTP/1.1\r\n": one byte more than the 11 reserved before,
        // which a :path that filled the buffer exactly turned into a trap (FuzzHTTP2Bridge).
        out.writeHead(maxBytes: method.utf8.count + 1 + path.utf8.count + 11) { w in
            w.put(method)
            w.put(" ")
            w.put(path)
            w.put(" HTTP/1.1\r\n")
        }
        if let authority { out.writeField("host", authority) }
        var length: String?
        var trailersAnnounced = false
        var cookies: [String] = []
        for (name, value, _) in frame.headers.dropFirst(pseudoCount) {
            guard HTTP2RequestCheck.isFieldName(name), HTTP2RequestCheck.isFieldValue(value) else { return nil }
            switch name {
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
                return nil  // connection-specific (RFC 9113 §8.2.2)
            case "te":
                guard value == "trailers" else { return nil }
                continue  // the only TE allowed; hop-by-hop, not forwarded
            case "host":
                if authority != nil { continue }  // :authority wins (RFC 9113 §8.3.1)
            case "cookie":
                cookies.append(value)  // crumbs are joined for HTTP/1.1 (RFC 9113 §8.2.3)
                continue
            case "content-length":
                length = value  // written below, unless the body goes chunked
                continue
            case "trailer":
                trailersAnnounced = true
            default:
                break
            }
            out.writeField(name, value)
        }
        if !cookies.isEmpty { out.writeField("cookie", cookies.joined(separator: "; ")) }
        if frame.endStream {
            self.requestBody = .none
            if let length { out.writeField("content-length", length) }
        } else if let length, !trailersAnnounced {
            self.requestBody = .length
            out.writeField("content-length", length)
        } else {
            // HTTP/2 frames the body itself; the HTTP/1.1 side needs chunked framing, and
            // a body whose request announces trailers (`trailer`, as nghttp and gRPC
            // clients send) goes chunked even with a length: only a chunked body's last
            // chunk can carry them. The HTTP/2 handler still checks the length.
            self.requestBody = .chunked
            out.writeStaticString("transfer-encoding: chunked\r\n")
        }
        out.writeStaticString("\r\n")
        self.headRequest = method == "HEAD"
        return out
    }

    private func endRequest(appendingTo out: inout ByteBuffer?, trailers: [UInt8] = []) {
        guard !self.requestEnded else { return }
        self.requestEnded = true
        if self.requestBody == .chunked {
            if out == nil { out = ByteBuffer() }
            var last = TrailerSection.lastChunk(trailers)
            out!.writeBuffer(&last)
        }
    }

    /// A trailer block's fields as HTTP/1.1 field lines; nil when it is malformed: a
    /// pseudo-header, a name that is not a lower-case token, a value with CR, LF or NUL
    /// (RFC 9113 §8.1). A field that must not be a trailer is refused later, by the
    /// proxy's `TrailerSection` check, as it is for an HTTP/1.1 client.
    static func trailerLines(_ headers: HPACKHeaders) -> [UInt8]? {
        var lines: [UInt8] = []
        for (name, value, _) in headers {
            guard HTTP2RequestCheck.isFieldName(name), HTTP2RequestCheck.isFieldValue(value) else { return nil }
            lines += name.utf8
            lines += [UInt8(ascii: ":"), UInt8(ascii: " ")]
            lines += value.utf8
            lines += [0x0D, 0x0A]
        }
        return lines
    }

    /// Trailer field lines (`TrailerSection`, checked) as the fields of a HEADERS frame:
    /// names in lower case, values without the spaces around them.
    static func trailerFields(_ lines: [UInt8]) -> HPACKHeaders {
        var headers = HPACKHeaders()
        var start = 0
        while start < lines.count, let cr = lines[start...].firstIndex(of: 0x0D) {
            let line = lines[start..<cr]
            if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
                let name = String(decoding: line[..<colon].map { $0 &- 0x41 < 26 ? $0 | 0x20 : $0 }, as: UTF8.self)
                var value = line[(colon + 1)...]
                while let first = value.first, first == 0x20 || first == 0x09 { value = value.dropFirst() }
                while let last = value.last, last == 0x20 || last == 0x09 { value = value.dropLast() }
                headers.add(name: name, value: String(decoding: value, as: UTF8.self))
            }
            start = cr + 2
        }
        return headers
    }

    /// An answer of the gateway's own (an error, a redirect, a file), written by the
    /// proxy as HTTP/1.1 bytes, as HEADERS and DATA frames, and flushed; the future
    /// completes with the last frame's write.
    func writeLocalAnswer(_ bytes: ByteBuffer, context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        let promise = context.eventLoop.makePromise(of: Void.self)
        guard let port = self.port else {
            promise.fail(ChannelError.ioOnClosedChannel)
            return promise.futureResult
        }
        self.write(bytes, port: port, promise: promise)
        self.flush()
        return promise.futureResult
    }

    private func write(_ bytes: ByteBuffer, port: HTTP2DownstreamStream, promise: EventLoopPromise<Void>?) {
        var bytes = bytes
        if self.response.readableBytes == 0 {
            self.response = bytes
        } else {
            self.response.writeBuffer(&bytes)
        }
        // Each frame but the last goes without a promise: a write that returns a future
        // allocates one, three per response.
        var frame: HTTP2Frame.FramePayload?
        func emit(_ next: HTTP2Frame.FramePayload) {
            if let frame { port.write(frame, promise: nil) }
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
                        if case .data(var last)? = frame {
                            last.endStream = true  // on the last DATA frame, not an empty one after it
                            frame = .data(last)
                        } else {
                            emit(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)))
                        }
                    }
                    continue
                }
                guard self.response.readableBytes > 0, let end = HTTP1Parser.headEnd(in: self.response, from: self.scanned) else {
                    self.scanned = max(0, self.response.readableBytes - 3)
                    break
                }
                self.scanned = 0
                let head = try HTTP1Parser.parseResponse(self.response.readBytes(length: end)!)
                if head.status < 200 { continue }  // the proxy answers 100-continue through `continueRequest`
                // The proxy always frames what it writes (length or chunked), never until-close.
                let framer = head.responseFramer(toHead: self.headRequest)
                self.framer = framer
                self.responseDone = framer.isDone
                var headers = self.responseHeaders(head)
                // Said by END_STREAM: a gRPC client shows a trailers-only answer's fields
                // as trailing metadata, `content-length: 0` among them.
                if framer.isDone, !self.headRequest, head.contentLength == 0 { headers.remove(name: "content-length") }
                emit(.headers(.init(headers: headers, endStream: framer.isDone)))
            }
        } catch {
            promise?.fail(error)
            port.close()
            return
        }
        if let frame {
            port.write(frame, promise: promise)
        } else {
            promise?.succeed(())
        }
    }
}

extension HTTP2StreamBridge {
    // The proxy's response straight from the upstream's parsed head, never written as
    // HTTP/1.1 bytes to be parsed again here (as its local answers still are): the head
    // becomes one HEADERS frame, each body piece as read a DATA frame. The frames are
    // written through the stream; the proxy's flush (`flush()`) sends them.

    /// Whether a response's (or its trailers') block, as the gateway's engine encodes it
    /// (`HPACKResponseEncoder`, which counts exactly), stays within `maxHeaderBlockBytes`.
    /// The engine would send a larger one in CONTINUATION frames; the bound is what
    /// nginx's and HAProxy's buffers for a response head are (8 and 16 KB), so a client is
    /// never sent a head larger than it could have had from them.
    static func fitsResponseBlock(_ headers: HPACKHeaders) -> Bool {
        // Most heads are far below: their strings plus the most a field adds (a flag
        // byte and two lengths of up to four bytes each, below 2 MB), without a lookup.
        var bound = 1  // a first block's size update
        for (name, value, _) in headers { bound += name.utf8.count + value.utf8.count + 9 }
        if bound <= Self.maxHeaderBlockBytes { return true }
        return HPACKResponseEncoder.encodedSize(headers) + 1 <= Self.maxHeaderBlockBytes
    }

    /// Writes the response's HEADERS frame, encoded from the upstream's head; false when
    /// its block would be larger than `maxHeaderBlockBytes` (nothing is written then).
    func responseHead(_ head: HTTPHead, toHead: Bool) -> Bool {
        guard let port = self.port, !self.responseDone else { return true }
        // An empty body ends the stream with the HEADERS frame: a gRPC server's
        // trailers-only answer (its status in the head) is only one when nothing follows
        // it, not even an empty DATA frame (grpcio read that as "Stream removed").
        let empty = !toHead && head.contentLength == 0 && !head.chunked
        let noBody = empty || head.hasNoBody(toHead: toHead)
        let hsts = self.strictTransportSecurity
        // Most heads are far below the bound: encoded where they are written. A larger
        // one is encoded first, and measured.
        var large: ByteBuffer?
        if HPACKResponseEncoder.responseSizeBound(head, hsts: hsts) + 1 > Self.maxHeaderBlockBytes {
            var block = ByteBuffer()
            HPACKResponseEncoder.encodeResponse(head, hsts: hsts, withoutContentLength: empty, into: &block)
            guard block.readableBytes + 1 <= Self.maxHeaderBlockBytes else { return false }
            large = block
        }
        self.responseDone = noBody
        port.writeFields(endStream: noBody) { block in
            if let large {
                block.writeImmutableBuffer(large)
            } else {
                HPACKResponseEncoder.encodeResponse(head, hsts: hsts, withoutContentLength: empty, into: &block)  // content-length: said by END_STREAM
            }
        }
        return true
    }

    /// The most a header block may take: for requests to an HTTP/2 upstream, one HEADERS
    /// frame (NIO's handler there does not split a block into CONTINUATION frames, and the
    /// default SETTINGS_MAX_FRAME_SIZE is 16,384 bytes); for responses, the same bound.
    static let maxHeaderBlockBytes = 16_384

    /// Whether `headers` encode into one HEADERS frame by NIO's encoder (a request to an
    /// HTTP/2 upstream). HPACK's Huffman code takes at
    /// most 30 bits a byte (a `\\` takes 19, an `a` 5), so a block whose bytes times
    /// 30/8, plus a few bytes a field, stay under the frame fits without more ado (most
    /// responses); a larger one is encoded as the connection's encoder would, from an
    /// empty dynamic table, and measured. Counting raw bytes was wrong both ways: 7,000
    /// backslashes (about 7 KB) encode to 16.6 KB, 20,000 `a` to 12.5 KB.
    static func fitsOneHeadersFrame(_ headers: HPACKHeaders) -> Bool {
        var bound = 0
        for (name, value, _) in headers {
            bound += (name.utf8.count + value.utf8.count) * 30 / 8 + 12
        }
        if bound <= Self.maxHeaderBlockBytes { return true }
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        var block = ByteBuffer()
        guard (try? encoder.encode(headers: headers, to: &block)) != nil else { return false }
        return block.readableBytes <= Self.maxHeaderBlockBytes
    }

    /// A response head's HTTP/2 fields: `:status`, then the fields that are not
    /// hop-by-hop (connection-specific in HTTP/2), names in lower case.
    private func responseHeaders(_ head: HTTPHead) -> HPACKHeaders {
        var headers = HPACKHeaders()
        headers.reserveCapacity(head.fields.count + 2)
        headers.add(name: ":status", value: Self.statusString(head.status))
        let hsts = self.strictTransportSecurity
        for field in head.fields where !head.isHopByHop(field) && !(hsts != nil && field.known == .strictTransportSecurity) {
            headers.add(name: head.lowercasedName(field), value: head.string(field.value))
        }
        if let hsts { headers.add(name: "strict-transport-security", value: hsts) }
        return headers
    }

    /// A status code (the parser allows 100-999: three digits) as a small string, written
    /// digit by digit: `String(Int)` goes through the general integer formatting, which cost
    /// more than the rest of building the response's HEADERS.
    static func statusString(_ status: Int) -> String {
        guard status >= 100, status <= 999 else { return String(status) }
        return String(unsafeUninitializedCapacity: 3) { out in
            out[0] = UInt8(truncatingIfNeeded: 0x30 + status / 100)
            out[1] = UInt8(truncatingIfNeeded: 0x30 + status / 10 % 10)
            out[2] = UInt8(truncatingIfNeeded: 0x30 + status % 10)
            return 3
        }
    }

    func responseBody(_ body: ByteBuffer) {
        guard let port = self.port, !self.responseDone, body.readableBytes > 0 else { return }
        self.writeHeldBody(port: port)
        self.heldBody = body
    }

    private func writeHeldBody(port: HTTP2DownstreamStream) {
        guard let body = self.heldBody else { return }
        self.heldBody = nil
        port.write(.data(.init(data: .byteBuffer(body))), promise: nil)
    }

    /// The proxy flushes once per upstream read batch: a body piece held for
    /// END_STREAM goes out now, without it.
    func flush() {
        guard let port = self.port else { return }
        self.writeHeldBody(port: port)
        port.flush()
    }

    /// The response's end: END_STREAM on its last DATA frame, or a HEADERS frame of
    /// trailers after it.
    func responseEnd(trailers: [UInt8] = []) {
        guard let port = self.port, !self.responseDone else { return }
        self.responseDone = true
        let end: HTTP2Frame.FramePayload
        let fields = trailers.isEmpty ? nil : Self.trailerFields(trailers)
        // Trailers larger than a response head may be are dropped, as a head that large
        // is refused.
        if let fields, Self.fitsResponseBlock(fields) {
            self.writeHeldBody(port: port)
            end = .headers(.init(headers: fields, endStream: true))
        } else {
            let last = self.heldBody ?? ByteBuffer()
            self.heldBody = nil
            end = .data(.init(data: .byteBuffer(last), endStream: true))
        }
        if self.requestEnded {
            port.write(end, promise: nil)
        } else {
            // Only here a promise: a reset written before the response left the HTTP/2
            // handler's flow-control buffer would drop what is still in it.
            let written = port.eventLoop.makePromise(of: Void.self)
            port.write(end, promise: written)
            self.responseEndWritten = written.futureResult
        }
    }

    /// An informational HEADERS frame (`:status: 100`): without it a client waits for
    /// its own timeout (curl: 1 s) before sending the body.
    func continueRequest() {
        guard let port = self.port, !self.responseDone else { return }
        var headers = HPACKHeaders()
        headers.add(name: ":status", value: "100")
        port.write(.headers(.init(headers: headers)), promise: nil)
        port.flush()
    }

    /// RST_STREAM(NO_ERROR) after the complete response: the client stops sending the
    /// body and keeps the response. Closing the stream channel would reset it with
    /// CANCEL, which clients report as a failed request. The stream is done when the
    /// reset has gone out.
    func resetRequest() {
        guard let port = self.port else { return }
        self.requestEnded = true  // DATA still in flight is not forwarded
        guard let written = self.responseEndWritten else {
            port.write(.rstStream(.noError), promise: nil)
            port.flush()
            return
        }
        self.responseEndWritten = nil
        written.assumeIsolated().whenComplete { _ in
            port.write(.rstStream(.noError), promise: nil)
            port.flush()
        }
    }
}

@available(*, unavailable)
extension HTTP2StreamBridge: Sendable {}

/// The checks of RFC 9113 §8.2 and §8.3 that a request header block must pass before
/// it becomes HTTP/1.1 bytes. What they keep out is request smuggling: a CR or LF in
/// a name or value would end the field line early and add fields (or a second
/// request) of the client's choosing; a space in `:path` makes the request line
/// ambiguous; a name with a colon would be read as another field. Upper case in a
/// name is malformed in HTTP/2. Each check is one pass over the bytes, no allocation.
enum HTTP2RequestCheck {
    /// The request pseudo-header fields seen so far.
    struct Pseudo {
        enum Field: UInt8 { case method = 1, scheme = 2, path = 4, authority = 8 }
        private var bits: UInt8 = 0

        /// Records a field; false when it was already there (each may appear once).
        mutating func insert(_ field: Field) -> Bool {
            defer { self.bits |= field.rawValue }
            return self.bits & field.rawValue == 0
        }

        /// `:method`, `:scheme` and `:path`; a CONNECT request has `:method` and
        /// `:authority` only (RFC 9113 §8.3, §8.5).
        func isComplete(connect: Bool) -> Bool {
            connect ? self.bits == Field.method.rawValue | Field.authority.rawValue : self.bits & 7 == 7
        }
    }

    /// A pseudo-header value: no control character, space or DEL (it becomes part of
    /// the request line or Host), not empty.
    static func isPseudoValue(_ value: String) -> Bool {
        all(value) { $0 > 0x20 && $0 != 0x7F } && !value.isEmpty
    }

    /// A regular field name: a lower-case token (RFC 9113 §8.2.1, RFC 9110 §5.6.2).
    static func isFieldName(_ name: String) -> Bool {
        all(name) { HTTP1Parser.isToken($0) && !($0 >= 0x41 && $0 <= 0x5A) } && !name.isEmpty
    }

    /// A field value: no NUL, CR or LF (RFC 9113 §8.2.1).
    static func isFieldValue(_ value: String) -> Bool {
        all(value) { $0 != 0 && $0 != 0x0A && $0 != 0x0D }
    }

    @inline(__always)
    private static func all(_ string: String, _ allowed: (UInt8) -> Bool) -> Bool {
        if let result = string.utf8.withContiguousStorageIfAvailable({ bytes in bytes.allSatisfy(allowed) }) {
            return result
        }
        return string.utf8.allSatisfy(allowed)
    }
}
